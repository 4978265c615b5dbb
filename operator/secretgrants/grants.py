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
from secretgrants.api.grant import Binding, DeliveryMode, SecretGrantRequestSpec
from secretgrants.errors import SecretGrantsError, UnsupportedOperation
from secretgrants.policy.model import (
    AccessRequest,
    Decision,
    Enforcement,
    RequestContext,
    Resource,
    Subject,
)
from secretgrants.reasons import ConditionType, Phase, Purpose, Reason
from secretgrants.tenancy import Tenant, TenantSource, guard, resolve_tenant
from secretgrants.uri import SecretURI, parse_secret_uri

__all__ = [
    "LIVE_PHASES",
    "VOLUME_PURPOSES",
    "GuardOutcome",
    "Target",
    "check_request",
    "check_target",
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


# A grant whose delivery Secret holds data: Granted, or Exhausted (pods keep the value).
LIVE_PHASES = frozenset({Phase.GRANTED.value, Phase.EXHAUSTED.value})


@dataclass(frozen=True)
class Target:
    """What the tenant guard looks at in a spec (kept per live grant for the guard sweep)."""

    secret_uri: str
    purpose: Purpose
    version: int | None
    mode: DeliveryMode

    @classmethod
    def of(cls, spec: SecretGrantRequestSpec) -> Target:
        return cls(spec.secret_uri, spec.purpose, spec.version, spec.delivery.mode)


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
    return check_target(Target.of(spec), namespace, namespace_labels, tenants, fallback)


def check_target(
    target: Target,
    namespace: str,
    namespace_labels: Mapping[str, str],
    tenants: Iterable[TenantSource],
    fallback: Tenant | None,
) -> GuardOutcome:
    """``check_request`` on the few fields the guard reads (raises the same errors)."""
    uri = parse_secret_uri(target.secret_uri)
    uri.check_purpose(target.purpose)
    if target.version is not None and uri.engine != "kv2":
        raise UnsupportedOperation(f"provider {uri.scheme!r} has no versions to pin")
    if target.mode is DeliveryMode.VOLUME and target.purpose not in VOLUME_PURPOSES:
        raise UnsupportedOperation(
            f"purpose {target.purpose.value!r} cannot be carried out by Volume delivery "
            "(it delivers values to pods: use purpose 'read')"
        )
    if target.mode is DeliveryMode.API and target.purpose is not Purpose.READ:
        raise UnsupportedOperation(
            f"purpose {target.purpose.value!r} through the Secrets API is not served by this "
            "version of the operator; Api delivery carries out 'read'"
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


# --- decisions -------------------------------------------------------------------


def decided_status(
    decision: Decision,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    tenant: str,
    resource_ref: str | None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status patch for a deny (by the PDP, or fail-closed when it could not be asked)."""
    at = at or now()
    reason = decision.condition_reason
    conditions = set_condition(
        parse_conditions(status),
        ConditionType.AUTHORIZED,
        ConditionStatus.FALSE,
        reason,
        decision.message,
        generation,
        at,
    )
    conditions = set_condition(
        conditions,
        ConditionType.READY,
        ConditionStatus.FALSE,
        reason,
        decision.message,
        generation,
        at,
    )
    patch: dict[str, Any] = {
        "phase": Phase.DENIED.value,
        "observedGeneration": generation,
        "tenant": tenant,
        "decision": _decision(decision),
        "obligations": None,
        "grantedAt": None,
        "expiresAt": None,
        "usesConsumed": None,
        "usesRemaining": None,
        "conditions": [c.to_kube() for c in conditions],
    }
    if resource_ref:
        patch["resourceRef"] = resource_ref
    return patch


def granted_status(
    enforcement: Enforcement,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    tenant: str,
    resource_ref: str | None,
    service_account: str,
    service_account_uid: str,
    secret_name: str | None,
    keys: list[str],
    version: int | None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status patch for a permitted, delivered grant."""
    at = at or now()
    decision = enforcement.decision
    expires = (
        at + dt.timedelta(seconds=enforcement.ttl_seconds) if enforcement.ttl_seconds else None
    )
    conditions = set_condition(
        parse_conditions(status),
        ConditionType.AUTHORIZED,
        ConditionStatus.TRUE,
        Reason.GRANTED,
        decision.message,
        generation,
        at,
    )
    conditions = set_condition(
        conditions,
        ConditionType.DELIVERED,
        ConditionStatus.TRUE,
        Reason.GRANTED,
        f"delivered {len(keys)} key(s) in Secret {secret_name}",
        generation,
        at,
    )
    conditions = set_condition(
        conditions,
        ConditionType.READY,
        ConditionStatus.TRUE,
        Reason.GRANTED,
        "granted" + (f" until {_rfc3339(expires)}" if expires else ""),
        generation,
        at,
    )
    extra = {k: str(v) for k, v in decision.obligations.extra.items()} or None
    patch: dict[str, Any] = {
        "phase": Phase.GRANTED.value,
        "observedGeneration": generation,
        "tenant": tenant,
        "decision": _decision(decision),
        "obligations": {
            "ttlSeconds": enforcement.ttl_seconds,
            "maxUses": enforcement.max_uses,
            "extra": extra,
        },
        "grantedAt": _rfc3339(at),
        "expiresAt": _rfc3339(expires) if expires else None,
        "usesConsumed": 0,
        "usesRemaining": enforcement.max_uses,
        "reservations": [],
        "binding": Binding.model_validate(
            {"service_account_name": service_account, "service_account_uid": service_account_uid}
        ).to_kube(),
        "delivery": {
            "mode": (DeliveryMode.VOLUME if secret_name else DeliveryMode.API).value,
            "secretName": secret_name,
            "keys": sorted(keys),
            "version": version,
        },
        "conditions": [c.to_kube() for c in conditions],
    }
    if resource_ref:
        patch["resourceRef"] = resource_ref
    return patch


def _ended_status(
    phase: Phase,
    reason: Reason,
    message: str,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    at: dt.datetime | None,
) -> dict[str, Any]:
    at = at or now()
    conditions = set_condition(
        parse_conditions(status),
        ConditionType.READY,
        ConditionStatus.FALSE,
        reason,
        message,
        generation,
        at,
    )
    conditions = set_condition(
        conditions,
        ConditionType.DELIVERED,
        ConditionStatus.FALSE,
        reason,
        "the delivery Secret holds no data",
        generation,
        at,
    )
    patch: dict[str, Any] = {"phase": phase.value, "conditions": [c.to_kube() for c in conditions]}
    if (status or {}).get("reservations"):
        patch["reservations"] = []
    if (status or {}).get("usesRemaining") is not None:
        patch["usesRemaining"] = 0
    return patch


def expired_status(
    *, generation: int | None, status: Mapping[str, Any] | None, at: dt.datetime | None = None
) -> dict[str, Any]:
    """The grant's TTL ran out (its Secret was blanked first)."""
    return _ended_status(
        Phase.EXPIRED,
        Reason.EXPIRED,
        "the grant's TTL ran out; its delivery Secret was emptied",
        generation=generation,
        status=status,
        at=at,
    )


def revoked_status(
    message: str,
    *,
    generation: int | None,
    status: Mapping[str, Any] | None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The grant was revoked (its ServiceAccount went away or changed; its Secret was blanked)."""
    return _ended_status(
        Phase.REVOKED, Reason.REVOKED, message, generation=generation, status=status, at=at
    )


_SETTLED = frozenset({Phase.GRANTED, Phase.REJECTED, Phase.EXPIRED, Phase.EXHAUSTED, Phase.REVOKED})


def settled(status: Mapping[str, Any] | None, generation: int | None) -> bool:
    """True when this generation was decided for good (a restart must not redo it).

    Pending grants and fail-closed denies (PDPUnavailable) are not settled:
    they are retried.
    """
    status = status or {}
    if status.get("observedGeneration") != generation:
        return False
    phase = status.get("phase")
    if phase in _SETTLED:
        return True
    if phase == Phase.DENIED:
        ready = next((c for c in parse_conditions(status) if c.type == ConditionType.READY), None)
        return ready is not None and ready.reason != Reason.PDP_UNAVAILABLE
    return False


def expires_at(status: Mapping[str, Any] | None) -> dt.datetime | None:
    raw = (status or {}).get("expiresAt")
    if not raw:
        return None
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def renewal_due(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    *,
    now: dt.datetime,
    given_up_for: str | None = None,
) -> bool:
    """True when a live grant should ask the PDP again now: renewal is on, and either
    its expiry is within ``beforeExpirySeconds`` or its uses ran out. ``given_up_for`` is
    the ``expiresAt`` for which a renewal was already refused (not asked again)."""
    renew_at = _renew_at(spec, status, now=now)
    if renew_at is None or given_up_for == status.get("expiresAt"):
        return False
    return renew_at <= now


def next_deadline(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    *,
    now: dt.datetime,
    given_up_for: str | None = None,
) -> dt.datetime | None:
    """When a grant next needs the operator: the earlier of its renewal and its expiry.

    None for a grant that is not live or has no expiry. The tenant guard and the
    binding are re-checked by the scheduler's periodic sweep, not per grant.
    """
    if status.get("phase") not in LIVE_PHASES:
        return None
    at = expires_at(status)
    if at is None:
        return None
    renew_at = _renew_at(spec, status, now=now)
    if renew_at is not None and given_up_for != status.get("expiresAt"):
        return min(at, renew_at)
    return at


def _renew_at(
    spec: Mapping[str, Any], status: Mapping[str, Any], *, now: dt.datetime
) -> dt.datetime | None:
    """When renewal is due (an exhausted grant: now), or None without renewal or expiry."""
    renewal = spec.get("renewal") or {}
    at = expires_at(status)
    if not renewal.get("enabled") or at is None:
        return None
    if status.get("phase") == Phase.EXHAUSTED.value:
        return now
    return at - dt.timedelta(seconds=int(renewal.get("beforeExpirySeconds", 30)))


def access_request(
    outcome: GuardOutcome,
    spec: SecretGrantRequestSpec,
    *,
    namespace: str,
    service_account_uid: str,
    owner: str | None = None,
    created_by: str | None = None,
    created_at: dt.datetime | None = None,
    correlation_id: str | None = None,
    traceparent: str | None = None,
) -> AccessRequest:
    """The question for the PDP. It holds names and attributes, never a value.

    ``traceparent`` (the current span's) also fills the context's trace and span ids.
    """
    return AccessRequest(
        subject=Subject(
            namespace=namespace,
            service_account=spec.service_account_name,
            uid=service_account_uid,
            tenant=outcome.tenant.tenant_id,
        ),
        resource=Resource.from_uri(
            outcome.uri,
            version=spec.version,
            owner=owner,
            created_by=created_by,
            created_at=created_at,
        ),
        purpose=spec.purpose,
        context=RequestContext(
            justification=spec.justification,
            requested_ttl_seconds=spec.ttl_seconds,
            requested_max_uses=spec.max_uses,
            correlation_id=correlation_id,
            traceparent=traceparent,
        ),
    )


def _decision(decision: Decision) -> dict[str, Any]:
    return {
        "id": decision.decision_id,
        "effect": decision.effect.value,
        "reason": decision.message[:1024],
        "pdp": decision.pdp_kind,
        "decidedAt": _rfc3339(decision.decided_at),
    }


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
