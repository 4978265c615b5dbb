"""Audit events and fan-out, metric labels, and the logging redaction filter."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import ValidationError

from secretgrants.audit import AuditEvent, Auditor, Effect, EventType, MemorySink, resource_ref
from secretgrants.audit_sinks import StdoutSink
from secretgrants.metrics import LABELS, Metrics
from secretgrants.redaction import MASK, RedactionFilter, redact, register_secret
from secretgrants.uri import parse_secret_uri


def test_resource_ref_is_keyed_and_never_the_uri() -> None:
    uri = parse_secret_uri("vault+kv2://secret/payments/db#password")
    a = resource_ref(b"salt-a", uri)
    assert a is not None and a.startswith("hmac-sha256:") and "payments" not in a
    assert a != resource_ref(b"salt-b", uri)
    assert resource_ref(None, uri) is None  # no salt: no reference, never the URI


def test_events_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        AuditEvent.model_validate(
            {"type": "decision", "effect": "permit", "reason": "x", "uri": "vault+kv2://a/b"}
        )


class Broken:
    name = "broken"

    async def emit(self, event: AuditEvent) -> None:
        raise RuntimeError("sink down")


async def test_auditor_fans_out_and_survives_a_broken_sink() -> None:
    memory = MemorySink(size=2)
    out = io.StringIO()
    auditor = Auditor([Broken(), memory, StdoutSink(out)])
    queue = memory.listen()
    for i in range(3):
        await auditor.record(
            type=EventType.DECISION, effect=Effect.DENY, reason=f"r{i}", grant_name="g"
        )
    assert [e.reason for e in memory.events] == ["r1", "r2"]  # bounded
    assert queue.qsize() == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["reason"] for line in lines] == ["r0", "r1", "r2"]
    assert lines[0]["type"] == "decision" and "resource_ref" not in lines[0]
    assert auditor.failures["broken"] == 3


def test_metrics_use_only_whitelisted_labels() -> None:
    metrics = Metrics()
    metrics.decisions.labels("permit", "builtin").inc()
    metrics.pdp_latency.labels("builtin").observe(0.01)
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= LABELS, (family.name, sample.labels)


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_redaction_masks_values_tokens_and_exceptions() -> None:
    register_secret("hunter2-very-secret")
    flt = RedactionFilter()
    rec = record("read %s with %s", "hunter2-very-secret", "Bearer abc.def.ghi")
    flt.filter(rec)
    assert rec.getMessage() == f"read {MASK} with Bearer {MASK}"
    try:
        raise ValueError("bad value hunter2-very-secret")
    except ValueError as err:
        rec = record("failed", exc=err)
    flt.filter(rec)
    assert rec.exc_text is not None and "hunter2" not in rec.exc_text and MASK in rec.exc_text
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl"
    assert MASK in redact(f"token={jwt}") and "eyJzdWIi" not in redact(jwt)
    assert redact("vault token hvs.CAESIJ1234567890abcdefghij") == f"vault token {MASK}"
    register_secret("ab")  # too short to mask safely: ignored
    assert redact("tab") == "tab"


def test_dashboard_and_alerts_use_metrics_that_exist() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "observability"
    text = (root / "grafana-dashboard.json").read_text() + (
        root / "prometheusrule.yaml"
    ).read_text()
    used = set(re.findall(r"secretgrants_[a-z_]+", text))
    known: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        known.add(family.name)
        known.update(family.name + s for s in suffixes.get(family.type, ()))
    assert used and used <= known, used - known
