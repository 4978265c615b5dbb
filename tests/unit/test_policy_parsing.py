"""Tests of reading PDP answers (AuthZEN and OPA), batch bodies and the fail-closed base."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from secretgrants.errors import PDPUnavailable
from secretgrants.policy import (
    AuthZENClient,
    FailClosedPDP,
    OPAClient,
    PolicyDecisionPoint,
    unavailable,
)
from secretgrants.policy.authzen import batch_body, decision_from_authzen, well_known_urls
from secretgrants.policy.model import (
    AccessRequest,
    Decision,
    Effect,
    Obligations,
    RequestContext,
    Resource,
    Subject,
)
from secretgrants.policy.opa import decision_from_opa, normalise_path
from secretgrants.reasons import Purpose


def make_request() -> AccessRequest:
    return AccessRequest(
        subject=Subject(namespace="payments", service_account="payments-api", tenant="acme"),
        resource=Resource.from_uri("vault://secret/payments/db#password"),
        purpose=Purpose.READ,
        context=RequestContext(
            correlation_id="corr-1", time=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        ),
    )


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------ AuthZEN answers


def test_authzen_permit_with_obligations() -> None:
    d = decision_from_authzen(
        {
            "decision": True,
            "context": {"id": "abc", "reason": "ok", "ttl_seconds": 60, "max_uses": 3},
        }
    )
    assert d.effect is Effect.PERMIT
    assert (d.decision_id, d.reason, d.pdp_kind) == ("abc", "ok", "authzen")
    assert d.obligations == Obligations(ttl_seconds=60, max_uses=3)
    assert not d.retryable


def test_authzen_deny_without_context() -> None:
    d = decision_from_authzen({"decision": False})
    assert d.effect is Effect.DENY
    assert d.reason == "denied by the PDP"
    assert is_uuid(d.decision_id)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"decision_id": "d-1", "id": "other"}, "d-1"),
        ({"id": 42}, "42"),
        ({"id": ""}, None),
        ({"id": True}, None),
        ({"id": {"x": 1}}, None),
        ({}, None),
    ],
)
def test_authzen_decision_id(context: dict[str, Any], expected: str | None) -> None:
    d = decision_from_authzen({"decision": True, "context": context})
    if expected is None:
        assert is_uuid(d.decision_id)
    else:
        assert d.decision_id == expected


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        ({"reason": "plain"}, "plain"),
        ({"reason_admin": {"de": "nein", "en": "policy C076E82F"}}, "policy C076E82F"),
        ({"reason_admin": {"de": "nein"}}, "nein"),
        ({"reason_user": "ask your admin"}, "ask your admin"),
        ({"reason": "", "reason_admin": "admin"}, "admin"),
    ],
)
def test_authzen_reason(context: dict[str, Any], reason: str) -> None:
    assert decision_from_authzen({"decision": False, "context": context}).reason == reason


def test_authzen_obligations_flat_nested_and_extra() -> None:
    d = decision_from_authzen(
        {
            "decision": True,
            "context": {
                "id": "x",
                "reason_admin": {"en": "r"},
                "ttl_seconds": 30,
                "obligations": {"max_uses": 1, "watermark": True},
                "notify": "sec",
            },
        }
    )
    assert d.obligations == Obligations(
        ttl_seconds=30, max_uses=1, extra={"watermark": True, "notify": "sec"}
    )


def test_authzen_unreadable_obligation_denies() -> None:
    d = decision_from_authzen({"decision": True, "context": {"ttl_seconds": "forever"}})
    assert d.effect is Effect.DENY
    assert d.reason == "UnknownObligation"
    assert "ttl_seconds" in (d.detail or "")
    # on a deny, a bad obligation does not matter
    d = decision_from_authzen({"decision": False, "context": {"ttl_seconds": -1}})
    assert d.effect is Effect.DENY and d.reason == "denied by the PDP"


@pytest.mark.parametrize(
    "answer",
    [
        [],
        "yes",
        {},
        {"decision": "true"},
        {"decision": 1},
        {"decision": None},
        {"decision": True, "context": []},
    ],
)
def test_authzen_malformed_answers_raise_pdp_unavailable(answer: object) -> None:
    with pytest.raises(PDPUnavailable):
        decision_from_authzen(answer)


def test_batch_body_hoists_shared_members() -> None:
    a = make_request().to_authzen()
    b = make_request().to_authzen()
    b["action"] = {"name": "read_metadata"}
    b["resource"] = {**b["resource"], "id": "vault+kv2://secret/payments/other"}
    body = batch_body([a, b])
    assert body["subject"] == a["subject"]
    assert body["context"] == a["context"]
    assert "action" not in body and "resource" not in body
    assert body["evaluations"] == [
        {"action": a["action"], "resource": a["resource"]},
        {"action": b["action"], "resource": b["resource"]},
    ]
    assert body["options"] == {"evaluations_semantic": "execute_all"}
    # a single item hoists everything
    assert batch_body([a])["evaluations"] == [{}]


def test_well_known_urls() -> None:
    assert well_known_urls("https://pdp.example") == [
        "https://pdp.example/.well-known/authzen-configuration"
    ]
    assert well_known_urls("https://pdp.example/tenant1/") == [
        "https://pdp.example/.well-known/authzen-configuration/tenant1",
        "https://pdp.example/tenant1/.well-known/authzen-configuration",
    ]


def test_authzen_client_configuration() -> None:
    with pytest.raises(ValueError, match="base URL"):
        AuthZENClient()
    client = AuthZENClient("http://pdp:8181/access/v1/evaluation")
    assert client.base_url == "http://pdp:8181"
    assert isinstance(client, PolicyDecisionPoint)


# ------------------------------------------------------------ OPA answers


def test_opa_permit() -> None:
    d = decision_from_opa(
        {
            "decision_id": "opa-1",
            "result": {
                "allow": True,
                "obligations": {"ttl_seconds": 60, "max_uses": 2, "x": 1},
                "reason": "permitted by rule 'r'",
            },
        }
    )
    assert (d.effect, d.decision_id, d.reason, d.pdp_kind) == (
        Effect.PERMIT,
        "opa-1",
        "permitted by rule 'r'",
        "opa",
    )
    assert d.obligations == Obligations(ttl_seconds=60, max_uses=2, extra={"x": 1})


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"result": {}},
        {"result": {"decision": {}}},
        {"result": {"other": 1}},
    ],
)
def test_opa_undefined_is_a_deny(payload: dict[str, Any]) -> None:
    d = decision_from_opa(payload)
    assert d.effect is Effect.DENY
    assert d.reason.startswith("policy decision undefined")
    assert not d.retryable
    assert is_uuid(d.decision_id)


def test_opa_package_result_and_boolean_result() -> None:
    d = decision_from_opa({"result": {"rules": [], "decision": {"allow": True, "reason": "p"}}})
    assert d.effect is Effect.PERMIT and d.reason == "p"
    assert decision_from_opa({"result": True}).effect is Effect.PERMIT
    assert decision_from_opa({"result": False}).effect is Effect.DENY


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"result": "yes"},
        {"result": {"allow": "true"}},
        {"result": {"allow": True, "obligations": [1]}},
    ],
)
def test_opa_malformed_raises(payload: object) -> None:
    with pytest.raises(PDPUnavailable):
        decision_from_opa(payload)


def test_opa_unreadable_obligation_denies() -> None:
    d = decision_from_opa({"result": {"allow": True, "obligations": {"max_uses": 0}}})
    assert d.effect is Effect.DENY and d.reason == "UnknownObligation"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("secretgrants/authz", "secretgrants/authz"),
        ("/secretgrants/authz/decision/", "secretgrants/authz/decision"),
        ("secretgrants.authz.decision", "secretgrants/authz/decision"),
    ],
)
def test_opa_path(path: str, normal: str) -> None:
    assert normalise_path(path) == normal
    assert OPAClient("http://opa:8181/", path=path).endpoint == f"http://opa:8181/v1/data/{normal}"


@pytest.mark.parametrize("path", ["", "/", "a/../b", "a b", "a//b", "1abc"])
def test_opa_bad_path(path: str) -> None:
    with pytest.raises(ValueError, match="OPA decision path"):
        normalise_path(path)


# ------------------------------------------------------------ fail closed


class Broken(FailClosedPDP):
    kind = "broken"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def _evaluate(self, request: AccessRequest) -> Decision:
        raise self.exc


@pytest.mark.parametrize("exc", [PDPUnavailable("down"), RuntimeError("bug"), KeyError("x")])
async def test_fail_closed_never_raises(exc: Exception) -> None:
    pdp = Broken(exc)
    d = await pdp.evaluate(make_request())
    assert d.effect is Effect.DENY
    assert d.reason == "PDPUnavailable"
    assert d.retryable
    assert d.pdp_kind == "broken"
    many = await pdp.evaluate_many([make_request(), make_request()])
    assert [m.reason for m in many] == ["PDPUnavailable"] * 2
    assert len({m.decision_id for m in many}) == 2
    assert await pdp.evaluate_many([]) == []


class BrokenBatch(Broken):
    async def _evaluate_many(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        raise self.exc


async def test_fail_closed_batch() -> None:
    many = await BrokenBatch(RuntimeError("bug")).evaluate_many([make_request()] * 3)
    assert all(d.reason == "PDPUnavailable" and d.retryable for d in many)


def test_unavailable_helper() -> None:
    d = unavailable("opa", "timed out", "id-1")
    assert (d.decision_id, d.effect, d.reason, d.retryable, d.detail) == (
        "id-1",
        Effect.DENY,
        "PDPUnavailable",
        True,
        "timed out",
    )
