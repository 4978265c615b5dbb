"""``secretgrants explain`` rendering (secretgrants.explain)."""

from __future__ import annotations

import datetime as dt

from secretgrants.explain import explain

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_pending_grant_without_status() -> None:
    text = explain({"metadata": {"name": "db", "namespace": "ns"}, "spec": {}}, NOW)
    assert "ns/db: Pending (not handled yet)" in text


def test_denied_grant_shows_decision_and_next_step() -> None:
    grant = {
        "metadata": {"name": "db", "namespace": "ns", "generation": 2},
        "spec": {"serviceAccountName": "app"},
        "status": {
            "phase": "Denied",
            "observedGeneration": 1,
            "decision": {"effect": "deny", "pdp": "opa", "reason": "no rule", "id": "d1"},
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Denied", "message": "no rule"}
            ],
        },
    }
    text = explain(grant, NOW)
    assert "decision:   deny by opa (no rule), id d1" in text
    assert "not handled the latest spec" in text
    assert "next:       the policy said no" in text


def test_expiry_is_relative() -> None:
    grant = {
        "metadata": {"name": "db", "namespace": "ns"},
        "status": {"phase": "Granted", "expiresAt": "2026-11-22T12:01:00Z", "usesConsumed": 1},
    }
    text = explain(grant, NOW)
    assert "(in 60s)" in text and "1 consumed, unlimited left" in text


def test_granted_grant_without_a_guard_condition_passed_the_guard() -> None:
    # A Granted status records the tenant but no TenantGuardPassed condition.
    grant = {
        "metadata": {"name": "db", "namespace": "ns"},
        "status": {"phase": "Granted", "tenant": "acme", "conditions": []},
    }
    assert "tenant:     acme (guard passed)" in explain(grant, NOW)
    failed = {
        "metadata": {"name": "db", "namespace": "ns"},
        "status": {
            "phase": "Rejected",
            "conditions": [{"type": "TenantGuardPassed", "status": "False"}],
        },
    }
    assert "tenant:     - (guard failed)" in explain(failed, NOW)
