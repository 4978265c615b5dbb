"""Policy decisions: the operator (the PEP) asks a PDP whether a grant may be made.

One interface, :class:`PolicyDecisionPoint`, three PDPs:

* ``builtin``: ordered YAML rules evaluated in process (:class:`BuiltinPDP`),
  also servable as an AuthZEN endpoint (:class:`AuthZENServer`, :func:`serve`);
* ``authzen``: any AuthZEN 1.0 PDP over HTTP (:class:`AuthZENClient`);
* ``opa``: Open Policy Agent's data API (:class:`OPAClient`).

Every PDP fails closed: an unreachable or confused PDP yields a retryable deny
with reason ``PDPUnavailable``, never an exception. :func:`apply_obligations`
turns a decision into the limits the operator enforces.
"""

from __future__ import annotations

import logging

from secretgrants.policy._http import HTTPOptions
from secretgrants.policy.authzen import AuthZENClient
from secretgrants.policy.base import FailClosedPDP, PolicyDecisionPoint, unavailable
from secretgrants.policy.builtin import BuiltinPDP, BuiltinPolicy, PolicyFileError
from secretgrants.policy.coalesce import CoalescingPDP
from secretgrants.policy.model import (
    KNOWN_OBLIGATIONS,
    AccessRequest,
    Decision,
    Effect,
    Enforcement,
    Obligations,
    RequestContext,
    Resource,
    Subject,
    apply_obligations,
)
from secretgrants.policy.opa import OPAClient
from secretgrants.policy.server import AuthZENServer, serve
from secretgrants.settings import PDPKind, Settings

__all__ = [
    "KNOWN_OBLIGATIONS",
    "AccessRequest",
    "AuthZENClient",
    "AuthZENServer",
    "BuiltinPDP",
    "BuiltinPolicy",
    "CoalescingPDP",
    "Decision",
    "Effect",
    "Enforcement",
    "FailClosedPDP",
    "HTTPOptions",
    "OPAClient",
    "Obligations",
    "PDPConfigError",
    "PolicyDecisionPoint",
    "PolicyFileError",
    "RequestContext",
    "Resource",
    "Subject",
    "apply_obligations",
    "build_pdp",
    "serve",
    "unavailable",
]

log = logging.getLogger("secretgrants.policy")


class PDPConfigError(ValueError):
    """The settings do not describe a usable PDP (e.g. ``authzen`` without a URL)."""


def build_pdp(settings: Settings, *, http: HTTPOptions | None = None) -> PolicyDecisionPoint:
    """The PDP the settings name (``SECRETGRANTS_PDP``: builtin, authzen or opa).

    ``builtin`` reads ``SECRETGRANTS_POLICY_FILE`` (a bad file raises
    :class:`PolicyFileError`); without one, every request is denied ("no rule
    matched"), which is logged as a warning. ``authzen`` and ``opa`` need
    ``SECRETGRANTS_PDP_URL``; ``opa`` asks at ``SECRETGRANTS_OPA_PATH``.
    ``SECRETGRANTS_PDP_TIMEOUT`` is the HTTP timeout unless ``http`` is given.
    """
    options = http or HTTPOptions(timeout=settings.pdp_timeout_seconds)
    kind = settings.pdp_kind
    if kind is PDPKind.BUILTIN:
        if settings.policy_file is None:
            log.warning("no SECRETGRANTS_POLICY_FILE: the built-in PDP denies every request")
            return BuiltinPDP(BuiltinPolicy())
        return BuiltinPDP.from_file(settings.policy_file)
    if not settings.pdp_url:
        raise PDPConfigError(f"SECRETGRANTS_PDP={kind.value} needs SECRETGRANTS_PDP_URL")
    if kind is PDPKind.AUTHZEN:
        client = AuthZENClient(settings.pdp_url, http=options)
        if settings.pdp_max_batch <= 1:
            return client
        return CoalescingPDP(client, max_batch=settings.pdp_max_batch)
    if kind is PDPKind.OPA:
        try:
            return OPAClient(settings.pdp_url, path=settings.opa_decision_path, http=options)
        except ValueError as exc:
            raise PDPConfigError(str(exc)) from None
    raise PDPConfigError(f"unknown PDP kind {kind!r}")  # pragma: no cover
