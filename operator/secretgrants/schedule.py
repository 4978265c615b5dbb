"""The deadlines of live grants in one heap: what the operator's single scheduler sleeps on.

A kopf daemon per live grant cost an asyncio task and kopf's bookkeeping per grant
(518 MB at 5,000 grants, docs/performance.md). Instead the watch feeds this heap and one
task sleeps until its earliest deadline. Re-adding a key replaces its deadline; stale
heap entries are skipped when they reach the top (lazy invalidation) and dropped in a
rebuild when they outnumber the live ones. Pure: no clock, no I/O; times are plain
floats (the scheduler uses epoch seconds).
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["DeadlineHeap", "Key"]

Key = tuple[str, str]  # a grant's (namespace, name)

_COMPACT_SLACK = 64  # stale entries tolerated beyond the live count before a rebuild


class DeadlineHeap:
    """One deadline per key; the earliest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._current: dict[Key, tuple[float, int]] = {}  # key -> (deadline, entry sequence)
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, key: object) -> bool:
        return key in self._current

    def deadline(self, key: Key) -> float | None:
        entry = self._current.get(key)
        return entry[0] if entry else None

    def add(self, key: Key, at: float) -> bool:
        """Set ``key``'s deadline to ``at`` (replacing any earlier one).

        True when ``at`` is now the earliest deadline: a sleeper should wake.
        """
        earliest = self.next_due()
        seq = next(self._sequence)
        self._current[key] = (at, seq)
        heapq.heappush(self._heap, (at, seq, key))
        self._compact()
        return earliest is None or at < earliest

    def remove(self, key: Key) -> None:
        if self._current.pop(key, None) is not None:
            self._compact()

    def next_due(self) -> float | None:
        """The earliest deadline, or None when nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int | None = None) -> list[Key]:
        """Remove and return the keys due at ``now``, earliest first (at most ``limit``)."""
        due: list[Key] = []
        while limit is None or len(due) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._current[key]
            due.append(key)
        return due

    def keys(self) -> list[Key]:
        return list(self._current)

    def _is_current(self, entry: tuple[float, int, Key]) -> bool:
        current = self._current.get(entry[2])
        return current is not None and current[1] == entry[1]

    def _drop_stale(self) -> None:
        while self._heap and not self._is_current(self._heap[0]):
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._current) + _COMPACT_SLACK:
            self._heap = [(at, seq, key) for key, (at, seq) in self._current.items()]
            heapq.heapify(self._heap)
