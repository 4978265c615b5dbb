"""The Kafka audit sink against a real Kafka broker (KRaft, from hack/tools.sh).

What goes in: an operator watching this test's namespace with the audit sinks
``stdout,kafka``, a topic of its own, the built-in PDP and the real Vault; grants
driven to Granted and to Denied. What is asserted: every field of the events
read back from the topic (and that they are the very events of the stdout sink),
the message keys, that neither the secret value nor the URI, path or key name is
in any message; and that a stopped broker holds up no grant, while the events it
could not hold are counted and logged and the ones it held arrive when it is back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from secretgrants.audit import resource_ref
from secretgrants.devenv import KafkaServer
from secretgrants.uri import parse_secret_uri
from tests.conftest import SECRET_VALUE, TEST_SALT, Cluster, OperatorProcess
from tests.e2e.kube import apply, condition, eventually, get, grant

URI = "vault+kv2://secret/e2e/db#password"
Message = dict[str, Any]  # {"key": str | None, "raw": str, "event": dict}


def kafka_env(bootstrap: str, topic: str, **more: str) -> dict[str, str]:
    return {
        "SECRETGRANTS_AUDIT_SINKS": "stdout,kafka",
        "SECRETGRANTS_KAFKA_BOOTSTRAP": bootstrap,
        "SECRETGRANTS_KAFKA_TOPIC": topic,
        **more,
    }


def read_topic(
    bootstrap: str, topic: str, done: Callable[[list[Message]], bool], timeout: float = 30.0
) -> list[Message]:
    """Every message of ``topic`` from the start, read until ``done`` holds (or the deadline)."""

    async def consume() -> list[Message]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        try:
            while not done(messages) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        raw = record.value.decode()
                        messages.append(
                            {
                                "key": record.key.decode() if record.key else None,
                                "raw": raw,
                                "event": json.loads(raw),
                            }
                        )
        finally:
            await consumer.stop()
        return messages

    return asyncio.run(consume())


def events_of(messages: list[Message], grant_name: str) -> dict[str, Message]:
    return {m["event"]["type"]: m for m in messages if m["event"].get("grant_name") == grant_name}


def wait_phase(cluster: Cluster, name: str, ns: str, phase: str, timeout: float = 30) -> Any:
    def check() -> Any:
        obj = get(cluster, "sgr", name, ns)
        assert (obj.get("status") or {}).get("phase") == phase, obj.get("status")
        return obj

    return eventually(check, timeout=timeout)


def dropped(op: OperatorProcess) -> float:
    for line in op.metrics().splitlines():
        if line.startswith('secretgrants_audit_events_dropped_total{sink="kafka"}'):
            return float(line.split()[-1])
    return 0.0


def test_every_event_field_reaches_the_topic_and_no_secret_does(
    cluster: Cluster,
    ready_namespace: str,
    kafka: KafkaServer,
    start_operator_for: Callable[..., OperatorProcess],
) -> None:
    ns = ready_namespace
    topic = f"sg-audit-{uuid.uuid4().hex[:8]}"
    started = dt.datetime.now(dt.UTC)
    op = start_operator_for(**kafka_env(kafka.bootstrap, topic))
    cluster.kubectl("create", "serviceaccount", "intruder", "-n", ns)
    apply(cluster, grant("db", ns, URI, justification="e2e"))
    apply(cluster, grant("nope", ns, URI, sa="intruder"))
    granted = wait_phase(cluster, "db", ns, "Granted")
    denied = wait_phase(cluster, "nope", ns, "Denied")

    def complete(messages: list[Message]) -> bool:
        return {"decision", "delivery_written"} <= set(events_of(messages, "db")) and (
            "decision" in events_of(messages, "nope")
        )

    messages = read_topic(kafka.bootstrap, topic, complete)
    finished = dt.datetime.now(dt.UTC)
    assert complete(messages), [m["event"] for m in messages]

    st = granted["status"]
    expected_ref = resource_ref(TEST_SALT.encode(), parse_secret_uri(URI))
    assert expected_ref and re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", expected_ref)
    db = events_of(messages, "db")
    decision = db["decision"]["event"]
    assert db["decision"]["key"] == f"{ns}/db"
    assert decision["type"] == "decision" and decision["effect"] == "permit"
    assert decision["reason"] == "Permitted" and decision["pdp"] == "builtin"
    assert decision["subject"] == f"system:serviceaccount:{ns}:app"
    assert decision["tenant"] == "e2e" and decision["purpose"] == "read"
    assert decision["resource_ref"] == expected_ref == st["resourceRef"]
    assert decision["decision_id"] == st["decision"]["id"]
    # one correlation id per reconciliation pass: the decision and the delivery it led to
    assert re.fullmatch(r"[0-9a-f-]{36}", decision["correlation_id"])
    assert decision["grant_namespace"] == ns and decision["grant_name"] == "db"
    assert decision["grant_uid"] == granted["metadata"]["uid"]
    delivery = db["delivery_written"]["event"]
    assert db["delivery_written"]["key"] == f"{ns}/db"
    assert delivery["effect"] == "permit" and delivery["reason"] == "Delivered"
    assert delivery["decision_id"] == st["decision"]["id"]
    assert delivery["resource_ref"] == expected_ref and delivery["subject"] == decision["subject"]
    assert delivery["correlation_id"] == decision["correlation_id"]

    deny = events_of(messages, "nope")["decision"]["event"]
    ready = condition(denied, "Ready")
    assert ready is not None
    assert deny["effect"] == "deny" and deny["reason"] == ready["reason"] == "Denied"
    assert deny["subject"] == f"system:serviceaccount:{ns}:intruder"
    assert deny["tenant"] == "e2e" and deny["purpose"] == "read" and deny["pdp"] == "builtin"
    assert deny["resource_ref"] == expected_ref
    assert deny["decision_id"] == denied["status"]["decision"]["id"]
    assert deny["correlation_id"] and deny["correlation_id"] != decision["correlation_id"]
    assert deny["grant_namespace"] == ns and deny["grant_uid"] == denied["metadata"]["uid"]

    for m in messages:
        when = dt.datetime.fromisoformat(m["event"]["time"])
        assert when.tzinfo is not None and started <= when <= finished, m["event"]["time"]
        uuid.UUID(m["event"]["event_id"])
    # the topic carries exactly the events the stdout sink printed (same ids, same fields)
    stdout = {e["event_id"]: e for e in op.audit_events() if e.get("grant_name") in {"db", "nope"}}
    on_topic = {m["event"]["event_id"]: m["event"] for m in messages}
    assert on_topic == stdout and len(messages) == len(stdout) == 3
    # no value, URI, path or key name in any message
    for m in messages:
        for needle in (SECRET_VALUE, URI, "secret/e2e", "e2e/db", "password", "vault+kv2"):
            assert needle not in m["raw"], needle
    assert dropped(op) == 0


def test_a_stopped_broker_holds_up_no_grant_and_drops_are_counted(
    cluster: Cluster,
    ready_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    ns = ready_namespace
    topic = f"sg-audit-{uuid.uuid4().hex[:8]}"
    broker = KafkaServer(tmp_path / "kafka").start()  # its own broker: this test stops it
    try:
        op = start_operator_for(**kafka_env(broker.bootstrap, topic, SECRETGRANTS_KAFKA_BUFFER="2"))
        apply(cluster, grant("before", ns, URI))
        wait_phase(cluster, "before", ns, "Granted")
        seen = read_topic(
            broker.bootstrap, topic, lambda ms: "delivery_written" in events_of(ms, "before")
        )
        assert "delivery_written" in events_of(seen, "before")  # the sink is connected

        broker.stop()
        names = [f"while-down-{i}" for i in range(4)]
        created = time.monotonic()
        for name in names:
            apply(cluster, grant(name, ns, URI))
        for name in names:
            wait_phase(cluster, name, ns, "Granted", timeout=30)
        assert time.monotonic() - created < 30  # grant handling did not wait for Kafka

        # 8 events (a decision and a delivery per grant) for a buffer of 2: some dropped
        eventually(lambda: _assert_positive(dropped(op)), timeout=10)
        lines = [line for line in op.log().splitlines() if "audit sink kafka dropped" in line]
        assert lines and "buffer full" in lines[0]
        assert SECRET_VALUE not in op.log() and "e2e/db" not in "\n".join(lines)

        # the broker comes back: what the sink held arrives, and every event the operator
        # printed is on the topic or counted as dropped
        broker.start()
        down = {e["event_id"] for e in op.audit_events() if e.get("grant_name") in set(names)}
        assert len(down) == 2 * len(names)

        def accounted(ms: list[Message]) -> bool:
            missing = {e["event_id"] for e in op.audit_events()} - {
                m["event"]["event_id"] for m in ms
            }
            return len(missing) == dropped(op)

        messages = read_topic(broker.bootstrap, topic, accounted, timeout=60)
        assert accounted(messages), (len(messages), dropped(op))
        arrived = down & {m["event"]["event_id"] for m in messages}
        assert 0 < len(arrived) < len(down)  # some were held through the outage, some dropped
    finally:
        broker.stop()


def _assert_positive(value: float) -> None:
    assert value > 0, value
