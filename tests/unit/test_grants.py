"""The grant state machine's pure functions (secretgrants.grants).

Every status patch must survive the API's schema: each is validated against
the status model, so a misspelt field (which the apiserver would prune or
reject) fails here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from secretgrants.api.grant import SecretGrantRequestSpec, SecretGrantRequestStatus
from secretgrants.errors import (
    InvalidSecretURI,
    MountNotAllowed,
    ProviderUnavailable,
    TenantNotFound,
    UnsupportedOperation,
)
from secretgrants.grants import (
    access_request,
    check_request,
    decided_status,
    expired_status,
    expires_at,
    failure_status,
    granted_status,
    guard_passed_status,
    revoked_status,
    settled,
)
from secretgrants.policy import Decision, Effect, apply_obligations
from secretgrants.policy.model import Obligations
from secretgrants.tenancy import TenantSource, env_tenant

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
TENANTS = [
    TenantSource.from_object(
        "payments",
        {"tenantId": "payments", "namespaces": ["pay"], "allowedMounts": ["vault+kv2://secret"]},
    )
]


def spec(**fields: Any) -> SecretGrantRequestSpec:
    base = {"secretUri": "vault+kv2://secret/payments/db#password", "serviceAccountName": "app"}
    return SecretGrantRequestSpec.model_validate({**base, **fields})


def round_trips(patch: dict[str, Any]) -> None:
    """Every field the patch sets is a status field (by its wire name) and keeps its value."""
    dumped = SecretGrantRequestStatus.model_validate(patch).to_kube()
    for key, value in patch.items():
        if value not in (None, []):
            assert key in dumped, f"status has no field {key!r}"
            if isinstance(value, dict):
                assert set(value) - {k for k, v in value.items() if v is None} <= set(
                    dumped[key]
                ), key


def permit(**obligations: Any) -> Decision:
    return Decision(
        decision_id="d-1",
        effect=Effect.PERMIT,
        reason="permitted by rule 'r'",
        pdp_kind="builtin",
        obligations=Obligations(**obligations),
    )


def test_check_request_passes_an_allowed_mount() -> None:
    outcome = check_request(spec(), "pay", {}, TENANTS, None)
    assert outcome.tenant.tenant_id == "payments"
    assert outcome.uri.mount == "secret"


@pytest.mark.parametrize(
    ("fields", "namespace", "error"),
    [
        ({"secretUri": "vault+kv2://finance/ledger#k"}, "pay", MountNotAllowed),
        ({}, "elsewhere", TenantNotFound),
        ({"secretUri": "nope://x/y"}, "pay", InvalidSecretURI),
        ({"purpose": "write"}, "pay", UnsupportedOperation),
        ({"delivery": {"mode": "Api"}, "purpose": "write"}, "pay", UnsupportedOperation),
    ],
)
def test_check_request_refuses(fields: dict[str, Any], namespace: str, error: type) -> None:
    with pytest.raises(error):
        check_request(spec(**fields), namespace, {}, TENANTS, None)


def test_version_pins_need_kv2() -> None:
    fallback = env_tenant("dev", ["yaml://dev"])
    with pytest.raises(UnsupportedOperation, match="no versions"):
        check_request(spec(secretUri="yaml://dev/app#token", version=2), "any", {}, [], fallback)


def test_failure_status_sets_phase_and_reason() -> None:
    patch = failure_status(
        MountNotAllowed("mount 'finance' is not allowed"), generation=3, status={}, at=AT
    )
    assert patch["phase"] == "Rejected" and patch["observedGeneration"] == 3
    reasons = {c["type"]: c["reason"] for c in patch["conditions"]}
    assert reasons == {"Ready": "MountNotAllowed", "TenantGuardPassed": "MountNotAllowed"}
    round_trips(patch)
    retry = failure_status(ProviderUnavailable("vault is sealed"), generation=3, status={}, at=AT)
    assert retry["phase"] == "Error"


def test_pending_then_granted_then_expired() -> None:
    outcome = check_request(spec(), "pay", {}, TENANTS, None)
    pending = guard_passed_status(outcome, generation=1, status={}, at=AT)
    assert pending["phase"] == "Pending"
    round_trips(pending)
    assert not settled(pending, 1)

    enforcement = apply_obligations(3600, 10, permit(ttl_seconds=120, max_uses=5))
    granted = granted_status(
        enforcement,
        generation=1,
        status=pending,
        tenant="payments",
        resource_ref="hmac-sha256:00",
        service_account="app",
        service_account_uid="uid-1",
        secret_name="sg-db-1",
        keys=["password"],
        version=4,
        at=AT,
    )
    round_trips(granted)
    assert granted["phase"] == "Granted"
    assert granted["obligations"]["ttlSeconds"] == 120 and granted["usesRemaining"] == 5
    assert expires_at(granted) == AT + dt.timedelta(seconds=120)
    assert granted["binding"] == {"serviceAccountName": "app", "serviceAccountUID": "uid-1"}
    assert settled(granted, 1) and not settled(granted, 2)  # a spec change re-decides

    expired = expired_status(generation=1, status=granted, at=AT)
    round_trips(expired)
    assert expired["phase"] == "Expired" and expired["usesRemaining"] == 0
    ready = next(c for c in expired["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Expired" and ready["status"] == "False"


def test_revoked_status() -> None:
    patch = revoked_status("ServiceAccount 'app' was deleted", generation=1, status={}, at=AT)
    round_trips(patch)
    assert patch["phase"] == "Revoked"
    assert {c["type"]: c["reason"] for c in patch["conditions"]}["Ready"] == "Revoked"


def test_deny_and_fail_closed_deny() -> None:
    deny = Decision(
        decision_id="d", effect=Effect.DENY, reason="no rule matched", pdp_kind="builtin"
    )
    patch = decided_status(
        deny, generation=1, status={}, tenant="payments", resource_ref=None, at=AT
    )
    round_trips(patch)
    assert patch["phase"] == "Denied" and settled(patch, 1)
    down = Decision(
        decision_id="d2",
        effect=Effect.DENY,
        reason="PDPUnavailable",
        pdp_kind="authzen",
        retryable=True,
    )
    closed = decided_status(
        down, generation=1, status={}, tenant="payments", resource_ref=None, at=AT
    )
    assert closed["phase"] == "Denied" and not settled(closed, 1)  # retried with backoff


def test_access_request_carries_subject_resource_and_context() -> None:
    outcome = check_request(spec(justification="start-up"), "pay", {}, TENANTS, None)
    request = access_request(
        outcome,
        spec(justification="start-up"),
        namespace="pay",
        service_account_uid="uid-1",
        owner="team-a",
    )
    assert request.subject.authzen_id == "system:serviceaccount:pay:app"
    assert request.subject.uid == "uid-1" and request.subject.tenant == "payments"
    assert request.purpose.value == "read"
    assert (request.resource.mount, request.resource.path) == ("secret", "payments/db")
    assert request.resource.fragment == "password"
