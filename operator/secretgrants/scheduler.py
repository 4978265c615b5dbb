"""One task that wakes live grants when they are due, in place of a kopf daemon per grant.

The watch tells the scheduler when each grant is next due (``schedule``); the task
sleeps until the earliest deadline, or until a new earlier one arrives, then hands due
grants to ``tend`` with bounded concurrency. ``tend`` does the work (it reads the grant
fresh) and returns the grant's next deadline, or None to forget it. A failed ``tend``
is tried again after ``retry_seconds``. A periodic ``sweep`` names grants that need a
look now (the tenant guard and binding re-check of all live grants, in memory).

Every dependency is a parameter, so the loop is tested with fakes and a fast clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from secretgrants.schedule import DeadlineHeap, Key

__all__ = ["Scheduler"]

log = logging.getLogger("secretgrants.scheduler")

Tend = Callable[[Key], Awaitable[float | None]]
Sweep = Callable[[], Iterable[Key]]

MAX_SLEEP_SECONDS = 60.0  # look at the wall clock at least this often (it may jump)


class Scheduler:
    """Deadlines in, ``tend`` calls out; at most ``concurrency`` grants at a time."""

    def __init__(
        self,
        tend: Tend,
        *,
        sweep: Sweep | None = None,
        sweep_interval: float = 30.0,
        concurrency: int = 16,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tend = tend
        self._sweep = sweep
        self._sweep_interval = sweep_interval
        self._concurrency = concurrency
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._heap = DeadlineHeap()
        self._wake = asyncio.Event()
        self._in_flight: set[Key] = set()
        self._pending: dict[Key, float] = {}  # scheduled while in flight: looked at after
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._next_sweep = clock() + sweep_interval

    def __len__(self) -> int:
        return len(self._heap)

    def deadline(self, key: Key) -> float | None:
        return self._heap.deadline(key)

    @property
    def busy(self) -> int:
        return len(self._in_flight)

    def schedule(self, key: Key, at: float) -> None:
        """Tend ``key`` at ``at`` (epoch seconds; the past means at once)."""
        if key in self._in_flight:  # its tend decides again when it finishes
            self._pending[key] = min(at, self._pending.get(key, at))
            return
        if self._heap.add(key, at):
            self._wake.set()

    def forget(self, key: Key) -> None:
        self._heap.remove(key)
        self._pending.pop(key, None)

    def start(self) -> None:
        self._main = asyncio.create_task(self.run(), name="secretgrants-scheduler")

    async def stop(self) -> None:
        """Cancel the loop and the grants being tended (each action is safe to re-run)."""
        tasks = [*self._tasks, *([self._main] if self._main else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            if self._sweep is not None and now >= self._next_sweep:
                self._next_sweep = now + self._sweep_interval
                try:
                    due = list(self._sweep())
                except Exception:  # the loop must outlive a bad sweep: expiry depends on it
                    log.exception("the sweep of live grants failed; trying at the next one")
                    due = []
                for key in due:
                    self.schedule(key, now)
            free = self._concurrency - len(self._in_flight)
            for key in self._heap.pop_due(now, limit=free) if free > 0 else []:
                self._in_flight.add(key)
                task = asyncio.create_task(self._tend_one(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(self._in_flight) >= self._concurrency:
                await self._wake.wait()  # full: only a finished grant frees a slot
                continue
            wake_at = [at for at in (self._heap.next_due(), self._sweep_at()) if at is not None]
            timeout = MAX_SLEEP_SECONDS
            if wake_at:
                timeout = min(timeout, max(0.0, min(wake_at) - self._clock()))
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes as
            # the wait ends (a grant finished), and this loop then never stopped (seen: a
            # shutdown hung in stop()). asyncio.timeout hands the cancellation on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _sweep_at(self) -> float | None:
        return self._next_sweep if self._sweep is not None else None

    async def _tend_one(self, key: Key) -> None:
        try:
            at = await self._tend(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "tending grant %s/%s failed; trying again in %.0f s", *key, self._retry_seconds
            )
            at = self._clock() + self._retry_seconds
        finally:
            self._in_flight.discard(key)
        pending = self._pending.pop(key, None)
        if pending is not None:
            at = pending if at is None else min(at, pending)
        if at is None:
            self._heap.remove(key)
        else:
            self._heap.add(key, at)
        self._wake.set()
