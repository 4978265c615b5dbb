"""Rollout restarts after a renewal delivered a new value, rate-limited per workload.

The restart is what ``kubectl rollout restart`` does: a new pod-template
annotation, so the workload's controller replaces its pods, which mount the
rotated value (and are admitted, and counted, like any other pod).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from secretgrants.api.common import GROUP

__all__ = ["ANNOTATION_RESTARTED_AT", "RestartLimiter", "restart_patch"]

ANNOTATION_RESTARTED_AT = f"{GROUP}/restartedAt"


def restart_patch(at: dt.datetime) -> dict[str, Any]:
    stamp = at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return {"spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: stamp}}}}}


@dataclass
class RestartLimiter:
    """At most one restart per workload per ``min_interval`` seconds (in this process)."""

    min_interval: float
    clock: Any = time.monotonic
    _last: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def allow(self, namespace: str, kind: str, name: str) -> bool:
        key = (namespace, kind, name)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval:
            return False
        self._last[key] = now
        return True
