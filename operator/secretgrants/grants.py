"""The PEP's decisions about one grant, as pure functions of what was read.

Handlers read the grant, its namespace and the tenants, call these, and write
the status patch they return. Nothing here does I/O, so every branch is unit
tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from secretgrants.api.common import Condition, ConditionStatus, now, set_condition
from secretgrants.api.grant import DeliveryMode, SecretGrantRequestSpec
from secretgrants.errors import SecretGrantsError, UnsupportedOperation
from secretgrants.reasons import ConditionType, Phase, Purpose, Reason
from secretgrants.tenancy import Tenant, TenantSource, guard, resolve_tenant
from secretgrants.uri import SecretURI, parse_secret_uri

__all__ = [
    "VOLUME_PURPOSES",
    "GuardOutcome",
    "check_request",
    "failure_status",
    "guard_passed_status",
    "parse_conditions",
]

# What each delivery mode can carry out. Volume delivery hands a value to a
# pod: only "read" makes sense there; the management purposes need the API.
VOLUME_PURPOSES = frozenset({Purpose.READ})

# Phase a failure leaves the grant in, by reason.
_FAILURE_PHASE: Mapping[Reason, Phase] = {
    Reason.INVALID_SECRET_URI: Phase.REJECTED,
    Reason.MOUNT_NOT_ALLOWED: Phase.REJECTED,
    Reason.TENANT_NOT_FOUND: Phase.REJECTED,
    Reason.TENANT_CONFLICT: Phase.REJECTED,
    Reason.UNSUPPORTED_OPERATION: Phase.REJECTED,
    Reason.DENIED: Phase.DENIED,
    Reason.PDP_UNAVAILABLE: Phase.DENIED,
    Reason.UNKNOWN_OBLIGATION: Phase.DENIED,
    Reason.SERVICE_ACCOUNT_NOT_FOUND: Phase.PENDING,
}


@dataclass(frozen=True)
class GuardOutcome:
    """A request that passed the tenant guard: its parsed URI and its tenant."""

    uri: SecretURI
    tenant: Tenant


def check_request(
    spec: SecretGrantRequestSpec,
    namespace: str,
    namespace_labels: Mapping[str, str],
    tenants: Iterable[TenantSource],
    fallback: Tenant | None,
) -> GuardOutcome:
    """Everything that must hold before a PDP or provider is asked.

    Raises InvalidSecretURI, UnsupportedOperation, TenantNotFound,
    TenantConflict or MountNotAllowed (all with a reason and a message).
    """
    uri = parse_secret_uri(spec.secret_uri)
    uri.check_purpose(spec.purpose)
    if spec.version is not None and uri.engine != "kv2":
        raise UnsupportedOperation(f"provider {uri.scheme!r} has no versions to pin")
    if spec.delivery.mode is DeliveryMode.VOLUME and spec.purpose not in VOLUME_PURPOSES:
        raise UnsupportedOperation(
            f"purpose {spec.purpose.value!r} cannot be carried out by Volume delivery "
            "(it delivers values to pods: use purpose 'read')"
        )
    if spec.delivery.mode is DeliveryMode.API:
        raise UnsupportedOperation(
            "delivery mode 'Api' is not served by this version of the operator yet; use 'Volume'"
        )
    tenant = resolve_tenant(namespace, namespace_labels, tenants, fallback)
    guard(uri, tenant)
    return GuardOutcome(uri=uri, tenant=tenant)


def parse_conditions(status: Mapping[str, Any] | None) -> list[Condition]:
    raw = (status or {}).get("conditions") or []
    return [Condition.model_validate(c) for c in raw]


def failure_status(
    error: SecretGrantsError,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    tenant: str | None = None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status patch for a grant stopped by ``error``: phase, Ready=False with the reason."""
    at = at or now()
    phase = _FAILURE_PHASE.get(error.reason, Phase.ERROR)
    conditions = parse_conditions(status)
    conditions = set_condition(
        conditions,
        ConditionType.READY,
        ConditionStatus.FALSE,
        error.reason,
        error.message,
        generation,
        at,
    )
    if error.reason in {
        Reason.MOUNT_NOT_ALLOWED,
        Reason.TENANT_NOT_FOUND,
        Reason.TENANT_CONFLICT,
    }:
        conditions = set_condition(
            conditions,
            ConditionType.GUARDED,
            ConditionStatus.FALSE,
            error.reason,
            error.message,
            generation,
            at,
        )
    patch: dict[str, Any] = {
        "phase": phase.value,
        "observedGeneration": generation,
        "conditions": [c.to_kube() for c in conditions],
    }
    if tenant is not None:
        patch["tenant"] = tenant
    return patch


def guard_passed_status(
    outcome: GuardOutcome,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    reason: Reason = Reason.PENDING,
    message: str = "the tenant guard passed; waiting for a decision",
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status patch for a grant past the guard and waiting for what comes next."""
    at = at or now()
    conditions = parse_conditions(status)
    conditions = set_condition(
        conditions,
        ConditionType.GUARDED,
        ConditionStatus.TRUE,
        Reason.GUARD_PASSED,
        f"mount {outcome.uri.mount_ref!r} is allowed for tenant {outcome.tenant.tenant_id!r}",
        generation,
        at,
    )
    conditions = set_condition(
        conditions, ConditionType.READY, ConditionStatus.FALSE, reason, message, generation, at
    )
    return {
        "phase": Phase.PENDING.value,
        "observedGeneration": generation,
        "tenant": outcome.tenant.tenant_id,
        "conditions": [c.to_kube() for c in conditions],
    }
