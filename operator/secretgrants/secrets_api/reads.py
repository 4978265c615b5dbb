"""Sender-bound reads of grants with ``delivery.mode: Api``.

After authentication, the PEP checks, in order: the grant (Api delivery,
Granted, unexpired), the binding (same ServiceAccount name and UID), the
sender (DPoP key and client certificate, once bound: :mod:`.binding`),
replay (a token's ``jti`` without DPoP, the proof's ``jti`` with it, each
usable once per grant: :mod:`.replay`), and uses (counted with a
compare-and-swap on the status). Only then is the provider read; when that
read fails, the use is given back (one more compare-and-swap), so a failed
read spends none and a client may retry it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from secretgrants import tracing
from secretgrants.admission import AdmissionDenied
from secretgrants.api.common import now
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.delivery import select_keys
from secretgrants.dpop import DPoPProof
from secretgrants.errors import SecretGrantsError
from secretgrants.metrics import Metrics
from secretgrants.redaction import register_secret
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.binding import Sender, check_sender
from secretgrants.secrets_api.problems import Problem, from_error
from secretgrants.secrets_api.replay import (
    ReplayCache,
    issued_at,
    owner_of,
    proof_until,
    replayed,
    token_jti,
    token_until,
)
from secretgrants.uri import parse_secret_uri
from secretgrants.uses import consume, give_back

__all__ = ["MAX_CAS_ATTEMPTS", "GrantReader", "GrantStore"]

MAX_CAS_ATTEMPTS: Final = 30

log = logging.getLogger("secretgrants")


class GrantStore(Protocol):
    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None: ...


def _parse_expiry(raw: object) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def check_grant(
    spec: SecretGrantRequestSpec,
    status: Mapping[str, Any],
    name: str,
    caller: Caller,
    namespace: str,
    generation: object = None,
) -> None:
    """Refuse a grant that is not an Api grant, not Granted, or bound to another account.

    The status must be the decision on this very spec (``observedGeneration`` equal to
    ``generation``): the values are read from the spec's ``secretUri``, and a spec
    changed since the decision (another URI, another key) was permitted by no one yet.
    """
    if spec.delivery.mode.value != "Api":
        raise Problem(400, "NotAnApiGrant", f"SecretGrantRequest {name!r} delivers by Volume")
    if status.get("observedGeneration") != generation:
        raise Problem(
            409,
            "GrantChanging",
            f"SecretGrantRequest {name!r} changed since its last decision and is being "
            "decided again; retry shortly",
        )
    phase = status.get("phase")
    expires = _parse_expiry(status.get("expiresAt"))
    if phase == "Expired" or (expires is not None and expires <= now()):
        raise Problem(403, "GrantExpired", f"SecretGrantRequest {name!r} has expired")
    if phase == "Exhausted":
        raise Problem(403, "UsesExhausted", f"SecretGrantRequest {name!r} has no uses left")
    if phase != "Granted":
        raise Problem(403, "GrantNotGranted", f"SecretGrantRequest {name!r} is {phase}")
    binding = status.get("binding") or {}
    if (
        caller.namespace != namespace
        or binding.get("serviceAccountName") != caller.service_account
        or binding.get("serviceAccountUID") != caller.uid
    ):
        raise Problem(
            403,
            "ServiceAccountMismatch",
            f"SecretGrantRequest {name!r} is bound to another ServiceAccount",
        )


def audit_fields(grant: Mapping[str, Any]) -> dict[str, Any]:
    """What an audit record of a read names of the grant (never its URI or values)."""
    status = grant.get("status") or {}
    return {
        "grant_uid": (grant.get("metadata") or {}).get("uid"),
        "tenant": status.get("tenant"),
        "resource_ref": status.get("resourceRef"),
        "decision_id": (status.get("decision") or {}).get("id"),
    }


def _replay_until(status: Mapping[str, Any], caller: Caller, proof: DPoPProof | None) -> float:
    """How long a read's identifier is remembered: while it could be presented again.

    A proof's ``jti`` past the proof's window; a token's ``jti`` until the token's own
    expiry (plus leeway), and at least as long as the grant lives: a grant renewed
    before the token expires must not take the token back.
    """
    current = time.time()
    if proof is not None:
        return proof_until(proof)
    expires = _parse_expiry(status.get("expiresAt"))
    grant_until = expires.timestamp() if expires else current
    return max(grant_until, token_until(caller, current))


class GrantReader:
    """Reads one grant for one authenticated caller, or raises a :class:`Problem`."""

    def __init__(
        self,
        store: GrantStore,
        providers: Any,
        metrics: Metrics,
        replays: ReplayCache | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.metrics = metrics
        self.replays = replays if replays is not None else ReplayCache()

    async def read(
        self,
        caller: Caller,
        namespace: str,
        name: str,
        *,
        proof: DPoPProof | None,
        certificate: str | None,
        audit: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The grant's values; ``audit`` (when given) gets what the audit record says of
        the grant (uid, tenant, resourceRef, decision id) as soon as it is read, so that
        a refusal is recorded with them too."""
        for _attempt in range(MAX_CAS_ATTEMPTS):
            grant = await self.store.read_grant(namespace, name)
            if grant is None:
                raise Problem(404, "GrantNotFound", f"SecretGrantRequest {name!r} does not exist")
            status = grant.get("status") or {}
            if audit is not None:
                audit.update(audit_fields(grant))
            spec = SecretGrantRequestSpec.model_validate(grant.get("spec") or {})
            generation = (grant.get("metadata") or {}).get("generation")
            check_grant(spec, status, name, caller, namespace, generation)
            sender = Sender(jkt=proof.jkt if proof else None, x5t_s256=certificate)
            new = check_sender(status.get("binding") or {}, sender)
            replay_key = self._replay_key(caller, namespace, name, proof)
            until = _replay_until(status, caller, proof)
            if not self.replays.first_use(
                replay_key, until, owner=owner_of(caller), issued_at=issued_at(caller, proof)
            ):
                raise replayed()
            try:
                updated = consume(
                    status,
                    generation=generation,
                    jkt=new.jkt,
                    x5t_s256=new.x5t_s256,
                )
            except AdmissionDenied as denied:
                raise Problem(403, denied.reason, denied.message) from None
            written = await self.store.replace_grant_status(namespace, {**grant, "status": updated})
            if written is not None:
                break
            self.replays.forget(replay_key)  # the use was not counted: let it retry
            await asyncio.sleep(0.005)
        else:
            raise Problem(409, "Conflict", "too many concurrent reads of this grant; retry")
        try:
            values, version = await self._values(spec)
        except Problem:
            await self._give_back(namespace, name)  # nothing was read: the use is not spent
            raise
        self.metrics.uses.inc()
        return {
            "data": values,
            "version": version,
            "expiresAt": status.get("expiresAt"),
            "usesRemaining": updated.get("usesRemaining"),
        }

    async def _give_back(self, namespace: str, name: str) -> None:
        """Return the use a failed read counted (compare-and-swap; best effort, then logged)."""
        for _attempt in range(MAX_CAS_ATTEMPTS):
            grant = await self.store.read_grant(namespace, name)
            if grant is None:
                return
            status = grant.get("status") or {}
            generation = (grant.get("metadata") or {}).get("generation")
            returned = give_back(status, generation=generation)
            if await self.store.replace_grant_status(namespace, {**grant, "status": returned}):
                return
            await asyncio.sleep(0.005)
        log.warning("could not give back the use of a failed read of %s/%s", namespace, name)

    @staticmethod
    def _replay_key(caller: Caller, namespace: str, name: str, proof: DPoPProof | None) -> str:
        if proof is not None:
            return f"{namespace}/{name}/dpop/{proof.jti}"
        jti = token_jti(caller)
        if jti is None:
            raise Problem(
                401, "TokenWithoutJTI", "without DPoP, each read needs a fresh token with a jti"
            )
        return f"{namespace}/{name}/token/{jti}"

    async def _values(self, spec: SecretGrantRequestSpec) -> tuple[dict[str, str], int | None]:
        uri = parse_secret_uri(spec.secret_uri)
        try:
            provider = self.providers.provider_for(uri)
            with tracing.span(tracing.SPAN_PROVIDER, provider=uri.scheme, operation="read"):
                data = await provider.read(uri.without_fragment(), spec.version)
            values = select_keys(data.data, spec, uri.fragment)
        except SecretGrantsError as err:
            self.metrics.errors.labels(err.reason.value).inc()
            raise from_error(err) from None
        for value in values.values():
            register_secret(value)
        return values, data.version
