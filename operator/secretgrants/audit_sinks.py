"""Audit sinks at the edge: JSON lines on stdout, and Kubernetes Events on the grant."""

from __future__ import annotations

import sys
from typing import IO, Any, cast

import kopf

from secretgrants.api.common import API_VERSION
from secretgrants.audit import AuditEvent, Effect

__all__ = ["KubeEventSink", "StdoutSink"]


class StdoutSink:
    """One JSON object per line, for the cluster's log pipeline."""

    name = "stdout"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    async def emit(self, event: AuditEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()


class KubeEventSink:
    """A short Event on the grant: what happened and why, in words, never a path or value.

    kopf posts Events from a queue in the background, so this never blocks.
    """

    name = "kubernetes-events"

    async def emit(self, event: AuditEvent) -> None:
        if not (event.grant_name and event.grant_namespace):
            return
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "SecretGrantRequest",
            "metadata": {
                "name": event.grant_name,
                "namespace": event.grant_namespace,
                "uid": event.grant_uid or "",
            },
        }
        words = event.type.value.replace("_", " ")
        who = f" for pod {event.pod}" if event.pod else ""
        message = f"{words}{who}: {event.effect.value} ({event.reason})"
        kind = "Normal" if event.effect is Effect.PERMIT else "Warning"
        kopf.event(
            kopf.Body(cast(Any, body)),
            type=kind,
            reason=_camel(event.type.value),
            message=message[:256],
        )


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))
