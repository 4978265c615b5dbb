"""Non-leaky audit: one event model for every decision and action, fanned out to sinks.

``resource_ref = HMAC-SHA256(tenant_salt, canonical_uri)``: the same secret
gives the same reference within a tenant, so forensics can correlate uses,
but the reference reveals neither the path nor the key. Without a salt there
is no reference at all; it never falls back to the plain URI. An event
carries no URI, path, key name or value: only the reference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from secretgrants import tracing
from secretgrants.uri import SecretURI

__all__ = [
    "AuditEvent",
    "AuditSink",
    "Auditor",
    "Effect",
    "EventType",
    "MemorySink",
    "audit_fields",
    "correlated",
    "correlated_handler",
    "current_correlation_id",
    "resource_ref",
    "subject",
]

log = logging.getLogger("secretgrants.audit")


def resource_ref(salt: bytes | None, uri: SecretURI) -> str | None:
    if not salt:
        return None
    digest = hmac.new(salt, uri.format().encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest}"


class EventType(StrEnum):
    DECISION = "decision"
    DELIVERY_WRITTEN = "delivery_written"
    DELIVERY_FAILED = "delivery_failed"
    POD_ADMITTED = "pod_admitted"
    POD_DENIED = "pod_denied"
    USE_RESERVED = "use_reserved"
    USE_RELEASED = "use_released"
    EXPIRED = "expired"
    RENEWED = "renewed"
    REVOKED = "revoked"
    GUARD_REJECTED = "guard_rejected"
    PROVIDER_ERROR = "provider_error"
    GRANT_READ = "grant_read"  # a Secrets API read of an Api grant, permitted or refused
    SECRET_MANAGED = "secret_managed"  # noqa: S105 - a Secrets API management call carried out
    API_REFUSED = "api_refused"  # refused before any decision (auth, DPoP, scope, replay)


class Effect(StrEnum):
    PERMIT = "permit"
    DENY = "deny"
    ERROR = "error"


class AuditEvent(BaseModel):
    """One audit record. Fields name people, grants and decisions; never secrets or paths."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    type: EventType
    effect: Effect
    reason: str = Field(max_length=128)
    message: str | None = Field(default=None, max_length=512)
    subject: str | None = None  # system:serviceaccount:<ns>:<name>
    tenant: str | None = None
    purpose: str | None = None
    resource_ref: str | None = None
    decision_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    grant_namespace: str | None = None
    grant_name: str | None = None
    grant_uid: str | None = None
    pod: str | None = None
    pdp: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


_CORRELATION: ContextVar[str | None] = ContextVar("secretgrants_correlation_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@contextlib.contextmanager
def correlated(given: str | None = None) -> Iterator[str]:
    """One unit of work (a reconciliation pass, an admission, an API request).

    Every audit event recorded inside carries the id, and the PDP gets it as
    ``X-Request-ID``. A caller-supplied id is kept only if it is short and plain;
    otherwise a new one is made. The previous id is restored on exit, so ids never
    leak from one handler into the next one that kopf runs in the same task.
    """
    cid = given if given and _SAFE_ID.match(given) else str(uuid.uuid4())
    token = _CORRELATION.set(cid)
    try:
        yield cid
    finally:
        _CORRELATION.reset(token)


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def correlated_handler(fn: _F) -> _F:
    """A kopf handler whose every call is one unit of work (see ``correlated``)."""

    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        with correlated():
            return await fn(*args, **kwargs)

    return cast(_F, handler)


def current_correlation_id() -> str | None:
    return _CORRELATION.get()


class AuditSink(Protocol):
    """Where events go. ``emit`` must not block for long and must not raise for a bad sink."""

    name: str

    async def emit(self, event: AuditEvent) -> None: ...


class MemorySink:
    """The last N events (the dev diagnostics' ``/audit``), and a feed for ``/events``."""

    name = "memory"

    def __init__(self, size: int = 1000) -> None:
        self.events: collections.deque[AuditEvent] = collections.deque(maxlen=size)
        self._listeners: set[asyncio.Queue[AuditEvent]] = set()

    async def emit(self, event: AuditEvent) -> None:
        self.events.append(event)
        for queue in list(self._listeners):
            if queue.full():
                continue  # a slow reader misses events rather than slowing the operator
            queue.put_nowait(event)

    def listen(self, size: int = 100) -> asyncio.Queue[AuditEvent]:
        queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=size)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[AuditEvent]) -> None:
        self._listeners.discard(queue)


class Auditor:
    """Fans events out to every sink; a failing sink is logged and counted, never raised."""

    def __init__(self, sinks: Iterable[AuditSink] = ()) -> None:
        self.sinks = list(sinks)
        self.failures: collections.Counter[str] = collections.Counter()

    async def emit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            try:
                await sink.emit(event)
            except Exception as err:  # an audit sink must never break grant handling
                self.failures[sink.name] += 1
                log.warning("audit sink %s failed: %s", sink.name, type(err).__name__)

    async def record(self, **fields: object) -> AuditEvent:
        """Validate and emit one event; it carries the current span's ids and the current
        correlation id (see ``correlated``) unless given."""
        if fields.get("correlation_id") is None:
            fields["correlation_id"] = current_correlation_id()
        if fields.get("trace_id") is None and fields.get("span_id") is None:
            fields["trace_id"], fields["span_id"] = tracing.current_ids()
        event = AuditEvent.model_validate(fields)
        await self.emit(event)
        return event


def subject(namespace: str, service_account: object) -> str | None:
    if not service_account:
        return None
    return f"system:serviceaccount:{namespace}:{service_account}"


def audit_fields(
    namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The audit fields of a grant from its status and spec (never its URI)."""
    spec = spec or {}
    binding = status.get("binding") or {}
    return {
        "grant_namespace": namespace,
        "grant_name": name,
        "subject": subject(
            namespace, binding.get("serviceAccountName") or spec.get("serviceAccountName")
        ),
        "tenant": status.get("tenant"),
        "purpose": spec.get("purpose", "read"),
        "resource_ref": status.get("resourceRef"),
        "decision_id": (status.get("decision") or {}).get("id"),
    }
