"""The Kafka audit sink: audit events on a topic, without ever holding up a grant.

``emit`` only puts the event on a bounded in-memory queue and returns; one
background task takes events off it in batches and sends them with the
producer (``acks=all``, idempotent), retrying a failed batch with backoff
until it is acknowledged. So grant handling never waits for Kafka, and nothing
is dropped while the broker is reachable: only when the queue is full (the
broker is down or slower than the operator for long) is a new event dropped,
counted in ``secretgrants_audit_events_dropped_total{sink="kafka"}`` and
logged in one line that names the event, never a value. Delivery is at least
once: a batch retried after a lost acknowledgement may arrive twice, and
consumers deduplicate by ``event_id``. ``stop`` flushes what is queued, within
a deadline.

Messages are ``AuditEvent.to_json()``, keyed by ``<grant namespace>/<grant name>``
so that the events of one grant stay in order on one partition.

The producer speaks PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; its TLS context
is built when the factory is made, so an unreadable CA or key fails the
operator's start rather than every send. A rejected login is one more failed
send: retried with backoff, logged by exception type, never with the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import SecretStr

from secretgrants.audit import AuditEvent
from secretgrants.metrics import Metrics
from secretgrants.tasks import cancel_and_wait

__all__ = [
    "KafkaSink",
    "Producer",
    "QuietRepeats",
    "aiokafka_producer",
    "event_key",
    "security_kwargs",
]

log = logging.getLogger("secretgrants.audit.kafka")

SINK: Final = "kafka"
MAX_BATCH: Final = 500
DROP_LOG_INTERVAL_SECONDS: Final = 10.0
# aiokafka logs each reconnect attempt (several a second while a broker is away).
_AIOKAFKA_LOGGERS: Final = ("aiokafka", "aiokafka.producer.sender", "aiokafka.conn")
QUIET_REPEAT_SECONDS: Final = 30.0


class QuietRepeats(logging.Filter):
    """Lets one record of each message template through per interval."""

    def __init__(self, interval: float = QUIET_REPEAT_SECONDS) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, float("-inf")) < self.interval:
            return False
        self._last[key] = now
        return True


def quiet_aiokafka() -> None:
    for name in _AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietRepeats) for f in logger.filters):
            logger.addFilter(QuietRepeats())


class Producer(Protocol):
    """What the sink needs of a Kafka producer (aiokafka's ``AIOKafkaProducer`` has it)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...


ProducerFactory = Callable[[], Producer]


_TLS_PROTOCOLS: Final = frozenset({"SSL", "SASL_SSL"})
_SASL_PROTOCOLS: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def security_kwargs(
    security_protocol: str = "PLAINTEXT",
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: SecretStr | None = None,
) -> dict[str, Any]:
    """aiokafka's security arguments: the TLS context (made here) and the SASL login.

    The combinations are the settings' to check; this only refuses what aiokafka
    could not use (a SASL protocol without a mechanism and a login).
    """
    kwargs: dict[str, Any] = {"security_protocol": security_protocol}
    if security_protocol in _TLS_PROTOCOLS:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        kwargs["ssl_context"] = context
    if security_protocol in _SASL_PROTOCOLS:
        if not (sasl_mechanism and sasl_username and sasl_password):
            raise ValueError(f"{security_protocol} needs a SASL mechanism, username and password")
        kwargs |= {
            "sasl_mechanism": sasl_mechanism,
            "sasl_plain_username": sasl_username,
            "sasl_plain_password": sasl_password.get_secret_value(),
        }
    return kwargs


def aiokafka_producer(
    bootstrap: str,
    *,
    request_timeout_ms: int = 10_000,
    security_protocol: str = "PLAINTEXT",
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password: SecretStr | None = None,
) -> ProducerFactory:
    """A factory of aiokafka producers for ``bootstrap`` (comma-separated host:port).

    The TLS context is made now (a bad CA, certificate or key raises here, at start).
    """
    security = security_kwargs(
        security_protocol,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        sasl_mechanism=sasl_mechanism,
        sasl_username=sasl_username,
        sasl_password=sasl_password,
    )

    def make() -> Producer:
        from aiokafka import AIOKafkaProducer

        producer: Producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="secretgrants-audit",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=200,
            **security,
        )
        return producer

    return make


def event_key(event: AuditEvent) -> bytes | None:
    if event.grant_namespace and event.grant_name:
        return f"{event.grant_namespace}/{event.grant_name}".encode()
    return None


class KafkaSink:
    """An ``AuditSink`` whose ``emit`` never waits on the network."""

    name = SINK

    def __init__(
        self,
        producer_factory: ProducerFactory,
        topic: str,
        *,
        buffer_size: int = 10_000,
        metrics: Metrics | None = None,
        send_timeout: float = 15.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.topic = topic
        self.buffer_size = buffer_size
        self.metrics = metrics
        self.sent = 0
        self.dropped = 0
        self._factory = producer_factory
        self._send_timeout = send_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=buffer_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._producer: Producer | None = None
        self._inflight: list[AuditEvent] = []
        self._closed = False
        self._unreported_drops = 0
        self._last_drop_log = float("-inf")

    # --- the grant-handling side: never blocks ---

    async def emit(self, event: AuditEvent) -> None:
        if self._closed:
            self._drop(event, "sink stopped")
            return
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            loop.call_soon_threadsafe(self._enqueue, event)  # asyncio.Queue is not thread-safe
        else:
            self._enqueue(event)

    def _enqueue(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(event, "buffer full")

    def _count_dropped(self, count: int) -> None:
        self.dropped += count
        if self.metrics is not None:
            self.metrics.audit_dropped.labels(sink=SINK).inc(count)

    def _drop(self, event: AuditEvent, why: str) -> None:
        self._count_dropped(1)
        self._unreported_drops += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_SECONDS:
            # One line per interval, naming the event (ids only) and the count since the last.
            log.warning(
                "audit sink kafka dropped %d event(s) (%s, buffer %d); last: %s %s grant=%s/%s",
                self._unreported_drops,
                why,
                self.buffer_size,
                event.type.value,
                event.event_id,
                event.grant_namespace or "-",
                event.grant_name or "-",
            )
            self._unreported_drops = 0
            self._last_drop_log = now

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # --- the background side ---

    async def start(self) -> None:
        """Start the sender on the running loop. Connecting happens there, with retries."""
        if self._task is not None:
            return
        quiet_aiokafka()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="secretgrants-audit-kafka")

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued (within ``timeout``), then close the producer.

        Events still unsent at the deadline are counted and logged as dropped.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()
            await cancel_and_wait(task)
        await self._close_producer()
        unsent, self._inflight = list(self._inflight), []
        while not self._queue.empty():
            unsent.append(self._queue.get_nowait())
            self._queue.task_done()
        if unsent:
            self._count_dropped(len(unsent))
        if unsent or self._unreported_drops:
            log.warning(
                "audit sink kafka dropped %d event(s) unsent at shutdown (broker unreachable), "
                "%d dropped since the last report, %d in all",
                len(unsent),
                self._unreported_drops,
                self.dropped,
            )
            self._unreported_drops = 0

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._deliver(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _deliver(self, batch: Sequence[AuditEvent]) -> None:
        """Send ``batch`` until every event is acknowledged; the broker being away only delays it."""
        pending = list(batch)
        delay = self._backoff_initial
        while pending:
            self._inflight = pending
            try:
                async with asyncio.timeout(self._send_timeout):  # not wait_for: on 3.11 it
                    pending = await self._send(pending)  # lost a cancellation as a send ended
            except Exception as err:  # connection, timeout, broker errors: retry them all
                log.warning(
                    "audit sink kafka: sending %d event(s) failed (%s); retrying in %.1fs",
                    len(pending),
                    type(err).__name__,
                    delay,
                )
            self._inflight = pending
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    async def _send(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """Send ``events``; return those not acknowledged (to retry)."""
        producer = await self._started_producer()
        futures: list[Awaitable[Any]] = []
        for event in events:
            futures.append(
                await producer.send(
                    self.topic, value=event.to_json().encode(), key=event_key(event)
                )
            )
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [e for e, r in zip(events, results, strict=True) if isinstance(r, BaseException)]
        self.sent += len(events) - len(failed)
        if failed:
            first = next(r for r in results if isinstance(r, BaseException))
            log.warning(
                "audit sink kafka: %d of %d event(s) not acknowledged (%s)",
                len(failed),
                len(events),
                type(first).__name__,
            )
        return failed

    async def _started_producer(self) -> Producer:
        if self._producer is None:
            producer = self._factory()
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
            log.info("audit sink kafka connected (topic %s)", self.topic)
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10.0)
