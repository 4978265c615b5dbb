"""Tests of secretgrants.policy.model: access requests, the AuthZEN body, obligations."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from secretgrants.policy.model import (
    KNOWN_OBLIGATIONS,
    AccessRequest,
    Decision,
    Effect,
    Obligations,
    RequestContext,
    Resource,
    Subject,
    apply_obligations,
    parse_obligations,
    rfc3339,
)
from secretgrants.reasons import Purpose, Reason

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def make_request(**context: Any) -> AccessRequest:
    return AccessRequest(
        subject=Subject(
            namespace="payments", service_account="payments-api", uid="uid-1", tenant="acme"
        ),
        resource=Resource.from_uri(
            "vault://secret/payments/db#password",
            version=3,
            owner="team-payments",
            created_by="alice",
            created_at=T0,
        ),
        purpose=Purpose.READ,
        context=RequestContext(
            justification="nightly settlement",
            requested_ttl_seconds=600,
            requested_max_uses=5,
            correlation_id="corr-1",
            traceparent=TRACEPARENT,
            time=T0,
            **context,
        ),
    )


def decision(effect: Effect = Effect.PERMIT, **obligations: Any) -> Decision:
    extra = {k: v for k, v in obligations.items() if k not in KNOWN_OBLIGATIONS}
    return Decision(
        decision_id="d-1",
        effect=effect,
        reason="permitted by rule 'x'",
        pdp_kind="builtin",
        obligations=Obligations(
            ttl_seconds=obligations.get("ttl_seconds"),
            max_uses=obligations.get("max_uses"),
            extra=extra,
        ),
    )


# ------------------------------------------------------------ AuthZEN body


def test_authzen_body_shape() -> None:
    body = make_request().to_authzen()
    assert body == {
        "subject": {
            "type": "kubernetes_service_account",
            "id": "system:serviceaccount:payments:payments-api",
            "properties": {"namespace": "payments", "uid": "uid-1", "tenant": "acme"},
        },
        "resource": {
            "type": "secret",
            "id": "vault+kv2://secret/payments/db#password",
            "properties": {
                "provider": "vault",
                "engine": "kv2",
                "mount": "secret",
                "path": "payments/db",
                "fragment": "password",
                "version": 3,
                "owner": "team-payments",
                "created_by": "alice",
                "created_at": "2026-01-02T03:04:05Z",
            },
        },
        "action": {"name": "read"},
        "context": {
            "tenant": "acme",
            "justification": "nightly settlement",
            "requested_ttl_seconds": 600,
            "requested_max_uses": 5,
            "correlation_id": "corr-1",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "traceparent": TRACEPARENT,
            "time": "2026-01-02T03:04:05Z",
        },
    }
    json.dumps(body)  # plain JSON, nothing left to encode


def test_body_keys_are_exactly_the_expected_ones_and_there_is_no_value_field() -> None:
    """There is no member in which a secret value could travel to the PDP."""
    body = make_request().to_authzen()
    assert set(body) == {"subject", "resource", "action", "context"}
    assert set(body["subject"]) == {"type", "id", "properties"}
    assert set(body["resource"]) == {"type", "id", "properties"}
    assert set(body["action"]) == {"name"}
    assert set(body["resource"]["properties"]) == {
        "provider",
        "engine",
        "mount",
        "path",
        "fragment",
        "version",
        "owner",
        "created_by",
        "created_at",
    }
    # The models themselves have no field for a value, and refuse one.
    fields = set(AccessRequest.model_fields)
    for model in (Subject, Resource, RequestContext):
        fields |= set(model.model_fields)
    assert not fields & {"value", "data", "secret", "secret_value", "content", "payload"}
    with pytest.raises(ValidationError):
        RequestContext(value="hunter2")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Resource.model_validate({**Resource.from_uri("vault://secret/a").model_dump(), "data": {}})
    with pytest.raises(ValidationError):
        AccessRequest.model_validate({**make_request().model_dump(), "secret": "hunter2"})


def test_body_with_optional_members_unset() -> None:
    request = AccessRequest(
        subject=Subject(namespace="ns", service_account="sa"),
        resource=Resource.from_uri("yaml://dev/app"),
        purpose=Purpose.READ_METADATA,
    )
    body = request.to_authzen()
    assert body["subject"]["properties"] == {"namespace": "ns", "uid": None, "tenant": None}
    assert body["resource"]["properties"]["engine"] is None
    assert body["resource"]["properties"]["fragment"] is None
    assert body["context"]["traceparent"] is None
    assert body["context"]["time"].endswith("Z")


def test_round_trip_through_authzen() -> None:
    request = make_request()
    assert AccessRequest.from_authzen(request.to_authzen()) == request


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("subject"), "subject must be a JSON object"),
        (lambda b: b["subject"].update(type="user"), "subject.type"),
        (lambda b: b["subject"].update(id="alice"), "subject.id"),
        (lambda b: b["subject"].update(id="system:serviceaccount:x"), "subject.id"),
        (lambda b: b["subject"]["properties"].update(namespace="other"), "contradicts"),
        (lambda b: b["resource"].update(type="file"), "resource.type"),
        (lambda b: b["resource"].update(id="vault://secret/../x"), "resource.id"),
        (lambda b: b["resource"]["properties"].update(mount="other"), "contradicts"),
        (lambda b: b["action"].update(name="steal"), "action.name"),
        (lambda b: b["context"].update(requested_ttl_seconds=0), "requested_ttl_seconds"),
        (lambda b: b["context"].update(tenant="globex"), "contradicts"),
    ],
)
def test_from_authzen_refuses_bad_requests(mutate: Any, message: str) -> None:
    body = make_request().to_authzen()
    mutate(body)
    with pytest.raises(ValueError, match=message):
        AccessRequest.from_authzen(body)


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("a:b", "sa"), ("ns", "sa:x"), ("NS", "sa"), ("", "sa"), ("ns", "-sa"), ("ns", "a" * 254)],
)
def test_subject_names_are_kubernetes_names(namespace: str, name: str) -> None:
    with pytest.raises(ValidationError):
        Subject(namespace=namespace, service_account=name)


def test_fragment_only_for_read_and_write() -> None:
    with pytest.raises(ValidationError, match="fragment"):
        AccessRequest(
            subject=Subject(namespace="ns", service_account="sa"),
            resource=Resource.from_uri("vault://secret/a#key"),
            purpose=Purpose.DELETE,
        )


def test_resource_parts_are_checked_as_one_uri() -> None:
    with pytest.raises(ValidationError, match="dot segment"):
        Resource(provider="vault", engine="kv2", mount="secret", path="a/../b")
    assert Resource.from_uri("VAULT://secret/a").id == "vault+kv2://secret/a"


def test_trace_context() -> None:
    ctx = RequestContext(traceparent=TRACEPARENT)
    assert (ctx.trace_id, ctx.span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    with pytest.raises(ValidationError, match="traceparent"):
        RequestContext(traceparent="not-a-traceparent")
    with pytest.raises(ValidationError):
        RequestContext(correlation_id="has space")
    with pytest.raises(ValidationError):
        RequestContext(correlation_id="new\nline")


def test_rfc3339() -> None:
    assert rfc3339(T0) == "2026-01-02T03:04:05Z"
    assert rfc3339(T0.astimezone(dt.timezone(dt.timedelta(hours=2)))) == "2026-01-02T03:04:05Z"
    assert rfc3339(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"


# ------------------------------------------------------------ decisions


def test_decision_condition_reason_and_message() -> None:
    assert decision().condition_reason is Reason.GRANTED
    assert decision(Effect.DENY).condition_reason is Reason.DENIED
    unavailable = Decision(
        decision_id="d",
        effect=Effect.DENY,
        reason=Reason.PDP_UNAVAILABLE.value,
        pdp_kind="authzen",
        retryable=True,
        detail="timed out",
    )
    assert unavailable.condition_reason is Reason.PDP_UNAVAILABLE
    assert unavailable.message == "PDPUnavailable: timed out"
    assert decision().message == "permitted by rule 'x'"


def test_parse_obligations() -> None:
    obligations, problems = parse_obligations({"ttl_seconds": 60, "max_uses": 2.0, "audit": "x"})
    assert obligations == Obligations(ttl_seconds=60, max_uses=2, extra={"audit": "x"})
    assert problems == []
    for bad in (0, -1, "60", True, 1.5, [1]):
        _, problems = parse_obligations({"ttl_seconds": bad})
        assert problems == ["obligation 'ttl_seconds' must be a positive integer"], bad
    obligations, problems = parse_obligations({"ttl_seconds": None})
    assert obligations == Obligations() and problems == []


# ------------------------------------------------------------ obligations


@pytest.mark.parametrize(
    ("requested", "obliged", "effective"),
    [
        ((600, 5), (300, 10), (300, 5)),
        ((60, 10), (300, 2), (60, 2)),
        ((None, None), (300, 2), (300, 2)),
        ((600, 5), (None, None), (600, 5)),
        ((None, None), (None, None), (None, None)),
        ((300, 1), (300, 1), (300, 1)),
    ],
)
def test_min_rule(
    requested: tuple[int | None, int | None],
    obliged: tuple[int | None, int | None],
    effective: tuple[int | None, int | None],
) -> None:
    d = decision(ttl_seconds=obliged[0], max_uses=obliged[1])
    result = apply_obligations(requested[0], requested[1], d)
    assert result.permitted
    assert result.decision == d
    assert (result.ttl_seconds, result.max_uses) == effective


@given(
    requested_ttl=st.none() | st.integers(1, 10**9),
    requested_uses=st.none() | st.integers(1, 10**9),
    obliged_ttl=st.none() | st.integers(1, 10**9),
    obliged_uses=st.none() | st.integers(1, 10**9),
)
def test_obligations_never_raise_a_request(
    requested_ttl: int | None,
    requested_uses: int | None,
    obliged_ttl: int | None,
    obliged_uses: int | None,
) -> None:
    result = apply_obligations(
        requested_ttl, requested_uses, decision(ttl_seconds=obliged_ttl, max_uses=obliged_uses)
    )
    for got, asked, obliged in (
        (result.ttl_seconds, requested_ttl, obliged_ttl),
        (result.max_uses, requested_uses, obliged_uses),
    ):
        if asked is not None:
            assert got is not None and got <= asked
        if obliged is not None:
            assert got is not None and got <= obliged
        if asked is None and obliged is None:
            assert got is None


def test_unknown_obligation_turns_a_permit_into_a_deny() -> None:
    d = decision(ttl_seconds=60, notify="security@acme.example")
    result = apply_obligations(600, None, d)
    assert not result.permitted
    assert result.decision.effect is Effect.DENY
    assert result.decision.reason == "UnknownObligation"
    assert result.decision.condition_reason is Reason.UNKNOWN_OBLIGATION
    assert not result.decision.retryable
    assert "notify" in (result.decision.detail or "")
    assert result.decision.decision_id == "d-1"  # the PDP's decision, overruled, keeps its id
    assert result.decision.obligations.extra == {"notify": "security@acme.example"}  # shown
    assert (result.ttl_seconds, result.max_uses) == (None, None)


def test_known_obligations_are_configurable() -> None:
    d = decision(ttl_seconds=60, notify="x")
    assert apply_obligations(None, None, d, known={"ttl_seconds", "notify"}).permitted
    # A PEP that does not enforce max_uses refuses a permit that requires it.
    limited = apply_obligations(None, None, decision(max_uses=1), known={"ttl_seconds"})
    assert limited.decision.reason == "UnknownObligation"


def test_deny_is_returned_unchanged() -> None:
    d = decision(Effect.DENY, weird="x")
    result = apply_obligations(60, 1, d)
    assert result.decision is d
    assert (result.ttl_seconds, result.max_uses) == (None, None)


@pytest.mark.parametrize("bad", [0, -5, True])
def test_requested_values_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        apply_obligations(bad, None, decision())
