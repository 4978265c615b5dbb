"""Recently read grants, for pod admission: most pods need no API read at all.

A Deployment's pods ask for the same grant again and again, and the mutating and
validating webhooks each need it for every pod. ``GrantReads`` keeps the grants
admission read or wrote for at most ``max_age`` seconds, and forgets one as soon as
the operator's watch shows it changed (``changed``). Only admissions trust it:

* a refusal is never made on a kept copy (the caller reads afresh first);
* a counted use is a compare-and-swap at the kept copy's resourceVersion, so a
  stale copy costs a retry, never a wrong count;
* what remains is an admission on a copy at most ``max_age`` old that the watch has
  not yet shown to be outdated. Every change that takes a value away (expiry,
  revocation, deletion, a refused spec change) also empties the delivery Secret,
  which the pod mounts as ``optional``: such a pod starts with nothing.

``max_age`` bounds the copy's age when no watch feeds it (a standby replica under
kopf's peering does not watch). Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["GrantReads"]

Key = tuple[str, str]


class GrantReads:
    """At most ``size`` grants, each kept at most ``max_age`` seconds (0 keeps none)."""

    def __init__(
        self,
        *,
        max_age: float,
        size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.size = size
        self._clock = clock
        self._kept: OrderedDict[Key, tuple[float, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        entry = self._kept.get(key)
        if entry is None:
            return None
        if self._clock() - entry[0] > self.max_age:
            del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return entry[1]

    def put(self, namespace: str, name: str, grant: dict[str, Any] | None) -> None:
        """Keep what the API just returned (None, a missing grant, is not kept)."""
        key = (namespace, name)
        if grant is None or self.max_age <= 0:
            self._kept.pop(key, None)
            return
        self._kept[key] = (self._clock(), grant)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def forget(self, namespace: str, name: str) -> None:
        self._kept.pop((namespace, name), None)

    def changed(self, namespace: str, name: str, resource_version: str | None) -> None:
        """A watch event: forget the kept copy unless it is this very version."""
        entry = self._kept.get((namespace, name))
        if entry is None:
            return
        kept_version = (entry[1].get("metadata") or {}).get("resourceVersion")
        if resource_version is None or kept_version != resource_version:
            del self._kept[(namespace, name)]
