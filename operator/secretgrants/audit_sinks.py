"""Audit sinks at the edge: JSON lines on stdout, and Kubernetes Events on the grant."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO, Final, Protocol

from secretgrants.api.common import API_VERSION
from secretgrants.audit import AuditEvent, Effect
from secretgrants.metrics import Metrics

__all__ = ["EventPoster", "KubeEventSink", "StdoutSink"]

log = logging.getLogger("secretgrants.audit")


class StdoutSink:
    """One JSON object per line, for the cluster's log pipeline."""

    name = "stdout"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    async def emit(self, event: AuditEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()


class EventPoster(Protocol):
    async def post_event(
        self, involved: dict[str, str], *, type_: str, reason: str, message: str
    ) -> None: ...


class KubeEventSink:
    """A short Event on the grant: what happened and why, in words, never a path or value.

    Posted through the operator's own client in the background (at most
    ``MAX_IN_FLIGHT`` at once; past that an Event is dropped and counted), so it never
    blocks grant handling and works from any task: kopf handlers, pod admission, the
    scheduler and the Secrets API alike (``kopf.event`` works only inside kopf handlers).
    """

    name = "kubernetes-events"
    MAX_IN_FLIGHT: Final = 100

    def __init__(self, poster: EventPoster, metrics: Metrics | None = None) -> None:
        self.poster = poster
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    async def emit(self, event: AuditEvent) -> None:
        if not (event.grant_name and event.grant_namespace):
            return
        if len(self._tasks) >= self.MAX_IN_FLIGHT:
            self._count_dropped()
            return
        involved = {
            "apiVersion": API_VERSION,
            "kind": "SecretGrantRequest",
            "name": event.grant_name,
            "namespace": event.grant_namespace,
        }
        if event.grant_uid:
            involved["uid"] = event.grant_uid
        words = event.type.value.replace("_", " ")
        who = f" for pod {event.pod}" if event.pod else ""
        message = f"{words}{who}: {event.effect.value} ({event.reason})"
        task = asyncio.create_task(
            self._post(
                involved,
                "Normal" if event.effect is Effect.PERMIT else "Warning",
                _camel(event.type.value),
                message[:256],
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, involved: dict[str, str], type_: str, reason: str, message: str) -> None:
        try:
            await self.poster.post_event(involved, type_=type_, reason=reason, message=message)
        except Exception as err:  # an Event is best effort; the other sinks keep the record
            self._count_dropped()
            log.warning("could not post an Event on %s: %s", involved["name"], type(err).__name__)

    def _count_dropped(self) -> None:
        self.dropped += 1
        if self.metrics is not None:  # secretgrants_audit_events_dropped_total{sink=...}
            self.metrics.audit_dropped.labels(self.name).inc()

    async def flush(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))
