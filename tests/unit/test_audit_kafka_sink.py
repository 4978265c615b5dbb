"""The Kafka audit sink's buffer, retries, drops and flush, with an in-memory producer.

What goes in: ``KafkaSink`` with a fake of its ``Producer`` seam (a broker that
acknowledges, refuses, or hangs on command). What is asserted: ``emit`` never
waits; nothing is dropped while the broker answers; a full buffer drops new
events and counts them in the metric with one log line; failed sends are
retried in order; ``stop`` flushes. The real broker is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from secretgrants.audit import AuditEvent, Effect, EventType
from secretgrants.audit_kafka import KafkaSink, Producer, QuietRepeats, event_key
from secretgrants.metrics import Metrics
from secretgrants.settings import Settings

TOPIC = "audit-test"


class BrokerDown(Exception):
    pass


class FakeBroker:
    """Producers that deliver to ``log``; ``up`` cleared makes sends hang, ``refuse`` makes them fail."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes | None, bytes | None]] = []
        self.up = asyncio.Event()
        self.up.set()
        self.refuse = 0  # the next N sends fail
        self.refuse_start = 0  # the next N starts fail
        self.made = 0
        self.stopped = 0

    def factory(self) -> Producer:
        self.made += 1
        return FakeProducer(self)


class FakeProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        if self.broker.refuse_start:
            self.broker.refuse_start -= 1
            raise BrokerDown("no route")
        await self.broker.up.wait()

    async def stop(self) -> None:
        self.broker.stopped += 1

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[object]:
        await self.broker.up.wait()
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.broker.refuse:
            self.broker.refuse -= 1
            fut.set_exception(BrokerDown("not acknowledged"))
        else:
            self.broker.log.append((topic, key, value))
            fut.set_result(len(self.broker.log))
        return fut


def event(i: int, *, ns: str | None = "team-a", name: str | None = "db") -> AuditEvent:
    return AuditEvent(
        type=EventType.DECISION,
        effect=Effect.PERMIT,
        reason=f"r{i}",
        grant_namespace=ns,
        grant_name=name,
        resource_ref="hmac-sha256:" + "ab" * 32,
    )


def reasons(broker: FakeBroker) -> list[str]:
    return [json.loads(value or b"{}")["reason"] for _, _, value in broker.log]


def dropped_metric(metrics: Metrics) -> float:
    text = generate_latest(metrics.registry).decode()
    for line in text.splitlines():
        if line.startswith('secretgrants_audit_events_dropped_total{sink="kafka"}'):
            return float(line.split()[-1])
    return 0.0


async def eventually(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def fast_sink(broker: FakeBroker, **kw: object) -> KafkaSink:
    return KafkaSink(
        broker.factory,
        TOPIC,
        send_timeout=kw.pop("send_timeout", 2.0),  # type: ignore[arg-type]
        backoff_initial=0.01,
        backoff_max=0.05,
        **kw,  # type: ignore[arg-type]
    )


async def test_messages_are_the_event_json_keyed_by_grant() -> None:
    broker = FakeBroker()
    sink = fast_sink(broker)
    await sink.start()
    await sink.emit(event(1))
    await sink.emit(event(2, ns=None, name=None))
    await sink.stop()
    assert [(t, k) for t, k, _ in broker.log] == [(TOPIC, b"team-a/db"), (TOPIC, None)]
    assert (
        event_key(event(0, ns="n", name="g")) == b"n/g" and event_key(event(0, name=None)) is None
    )
    first = json.loads(broker.log[0][2] or b"")
    assert first["reason"] == "r1" and first["resource_ref"].startswith("hmac-sha256:")
    assert AuditEvent.model_validate(first).grant_name == "db"
    assert sink.sent == 2 and sink.dropped == 0 and broker.stopped == 1


async def test_nothing_is_dropped_while_the_broker_answers() -> None:
    broker = FakeBroker()
    metrics = Metrics()
    sink = fast_sink(broker, buffer_size=5, metrics=metrics)
    await sink.start()
    for i in range(1000):  # 200 times the buffer, at the pace of a handler that yields
        await sink.emit(event(i))
        await asyncio.sleep(0)
    await sink.stop()
    assert reasons(broker) == [f"r{i}" for i in range(1000)]
    assert sink.dropped == 0 and dropped_metric(metrics) == 0


async def test_emit_never_waits_and_a_full_buffer_drops_counts_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FakeBroker()
    broker.up.clear()  # the broker hangs: no send completes
    metrics = Metrics()
    sink = fast_sink(broker, buffer_size=3, metrics=metrics, send_timeout=30.0)
    await sink.start()
    await asyncio.sleep(0.05)  # the sender waits on the empty queue
    caplog.set_level(logging.WARNING, logger="secretgrants.audit.kafka")
    started = time.monotonic()
    for i in range(20):
        await asyncio.wait_for(sink.emit(event(i)), timeout=0.1)
    assert time.monotonic() - started < 0.5  # no emit waited on the broker
    await asyncio.sleep(0.05)
    # one batch is in flight (taken off the queue), 3 wait in the buffer, the rest are dropped
    assert sink.queued == 3
    assert sink.dropped == 20 - 3 - 1 and dropped_metric(metrics) == sink.dropped
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per interval, not one per event
    assert "buffer full" in lines[0] and "team-a/db" in lines[0] and "decision" in lines[0]
    assert "hmac-sha256" not in lines[0]
    # the broker comes back: what was held is delivered, in order
    broker.up.set()
    await eventually(lambda: len(broker.log) == 4)
    assert reasons(broker) == ["r0", "r1", "r2", "r3"]
    await sink.stop()
    assert sink.dropped == 16


async def test_failed_sends_are_retried_until_acknowledged() -> None:
    broker = FakeBroker()
    broker.refuse_start = 2  # the first two connections fail
    broker.refuse = 3  # then three sends are not acknowledged
    sink = fast_sink(broker, buffer_size=100)
    await sink.start()
    for i in range(10):
        await sink.emit(event(i))
    await eventually(lambda: len(broker.log) >= 10)
    await sink.stop()
    assert sink.dropped == 0 and broker.made == 3  # a failed start makes a new producer
    # the three refused events are sent again after the acknowledged ones, in their order
    assert reasons(broker) == [f"r{i}" for i in (3, 4, 5, 6, 7, 8, 9, 0, 1, 2)]


async def test_stop_flushes_what_is_queued() -> None:
    broker = FakeBroker()
    sink = fast_sink(broker, buffer_size=1000)
    for i in range(300):  # queued before the sender even starts
        await sink.emit(event(i))
    await sink.start()
    await sink.stop(timeout=5.0)
    assert len(broker.log) == 300 and sink.dropped == 0


async def test_stop_with_the_broker_away_counts_what_is_lost_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FakeBroker()
    broker.up.clear()
    metrics = Metrics()
    sink = fast_sink(broker, buffer_size=10, metrics=metrics, send_timeout=30.0)
    await sink.start()
    for i in range(5):
        await sink.emit(event(i))
    caplog.set_level(logging.WARNING, logger="secretgrants.audit.kafka")
    started = time.monotonic()
    await sink.stop(timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert sink.dropped == 5 and dropped_metric(metrics) == 5
    assert any("unsent at shutdown" in r.getMessage() for r in caplog.records)
    await sink.emit(event(99))  # after stop: dropped, not queued forever
    assert sink.dropped == 6 and sink.queued == 0


def test_settings_need_brokers_for_the_kafka_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETGRANTS_AUDIT_SINKS", "stdout,kafka")
    with pytest.raises(ValidationError, match="SECRETGRANTS_KAFKA_BOOTSTRAP"):
        Settings()
    monkeypatch.setenv("SECRETGRANTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    cfg = Settings()
    assert cfg.audit_sinks == ["stdout", "kafka"]
    assert cfg.kafka_topic == "secretgrants.audit" and cfg.kafka_buffer_size == 10000
    monkeypatch.setenv("SECRETGRANTS_KAFKA_TOPIC", "bad topic/../x")
    with pytest.raises(ValidationError):
        Settings()


def test_buffer_must_hold_something() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        KafkaSink(FakeBroker().factory, TOPIC, buffer_size=0)


def test_repeated_client_log_lines_are_quietened() -> None:
    quiet = QuietRepeats(interval=60.0)

    def record(msg: str, arg: object) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, (arg,), None)

    passed = [quiet.filter(record("Unable connect to node with id %s", n)) for n in range(50)]
    assert passed == [True] + [False] * 49  # a reconnect loop logs once per interval
    assert quiet.filter(record("Unable to update metadata from %s", 1))  # another message passes


async def test_events_from_another_thread_reach_the_sinks_loop() -> None:
    broker = FakeBroker()
    sink = fast_sink(broker)
    await sink.start()
    await asyncio.to_thread(asyncio.run, sink.emit(event(7)))  # a loop in another thread
    await eventually(lambda: len(broker.log) == 1)
    await sink.stop()
    assert reasons(broker) == ["r7"] and sink.dropped == 0
