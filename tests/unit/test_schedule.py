"""The one scheduler of live grants: the deadline heap, the deadline of a grant, the loop.

The heap and ``grants.next_deadline`` are pure; the loop runs on a real event loop
with a fake ``tend`` and short deadlines (a test waits on a condition, never a long
sleep).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from secretgrants.grants import next_deadline, renewal_due
from secretgrants.schedule import DeadlineHeap, Key
from secretgrants.scheduler import Scheduler

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def k(name: str) -> Key:
    return ("ns", name)


# --- the heap ----------------------------------------------------------------------


def test_pops_due_keys_earliest_first_and_leaves_the_rest() -> None:
    heap = DeadlineHeap()
    for name, at in (("c", 30.0), ("a", 10.0), ("b", 20.0), ("d", 40.0)):
        heap.add(k(name), at)
    assert heap.next_due() == 10.0
    assert heap.pop_due(25.0) == [k("a"), k("b")]
    assert len(heap) == 2 and k("a") not in heap and k("c") in heap
    assert heap.next_due() == 30.0
    assert heap.pop_due(29.9) == []


def test_re_adding_a_key_replaces_its_deadline_later_or_earlier() -> None:
    heap = DeadlineHeap()
    heap.add(k("a"), 10.0)
    heap.add(k("b"), 20.0)
    assert heap.add(k("a"), 30.0) is False  # later: b is now first
    assert heap.next_due() == 20.0 and heap.deadline(k("a")) == 30.0
    assert heap.pop_due(25.0) == [k("b")]  # the stale 10.0 entry of a is skipped
    assert heap.add(k("a"), 5.0) is True  # earlier than anything: wake the sleeper
    assert heap.pop_due(100.0) == [k("a")]
    assert len(heap) == 0 and heap.next_due() is None


def test_removed_keys_are_skipped() -> None:
    heap = DeadlineHeap()
    heap.add(k("a"), 1.0)
    heap.add(k("b"), 2.0)
    heap.remove(k("a"))
    heap.remove(k("never-added"))
    assert heap.next_due() == 2.0
    assert heap.pop_due(10.0) == [k("b")]


def test_pop_due_honours_a_limit() -> None:
    heap = DeadlineHeap()
    for i in range(5):
        heap.add(k(f"g{i}"), float(i))
    assert heap.pop_due(10.0, limit=2) == [k("g0"), k("g1")]
    assert heap.pop_due(10.0, limit=0) == []
    assert heap.pop_due(10.0) == [k("g2"), k("g3"), k("g4")]


def test_many_keys_many_replacements_order_and_bounded_memory() -> None:
    rng = random.Random(6)
    heap = DeadlineHeap()
    expected: dict[Key, float] = {}
    for _ in range(50_000):
        key = k(f"g{rng.randrange(5_000)}")
        if rng.random() < 0.1:
            heap.remove(key)
            expected.pop(key, None)
        else:
            at = rng.uniform(0, 1_000)
            heap.add(key, at)
            expected[key] = at
    assert len(heap) == len(expected)
    assert len(heap._heap) <= 2 * len(expected) + 64  # stale entries are compacted away
    popped = heap.pop_due(500.0)
    assert popped == sorted(
        (key for key, at in expected.items() if at <= 500.0), key=lambda key: expected[key]
    )
    assert len(heap) == sum(1 for at in expected.values() if at > 500.0)


# --- when a grant is next due ------------------------------------------------------


def status(phase: str = "Granted", expires: dt.datetime | None = AT) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase}
    if expires is not None:
        st["expiresAt"] = expires.isoformat().replace("+00:00", "Z")
    return st


RENEW = {"renewal": {"enabled": True, "beforeExpirySeconds": 60}}


def test_deadline_is_the_expiry_without_renewal() -> None:
    now = AT - dt.timedelta(hours=1)
    assert next_deadline({}, status(), now=now) == AT
    assert next_deadline({"renewal": {"enabled": False}}, status(), now=now) == AT
    assert not renewal_due({}, status(), now=AT)


def test_deadline_is_before_expiry_with_renewal_until_renewal_gave_up() -> None:
    now = AT - dt.timedelta(hours=1)
    st = status()
    assert next_deadline(RENEW, st, now=now) == AT - dt.timedelta(seconds=60)
    assert next_deadline({"renewal": {"enabled": True}}, st, now=now) == AT - dt.timedelta(
        seconds=30
    )  # the default beforeExpirySeconds
    assert not renewal_due(RENEW, st, now=AT - dt.timedelta(seconds=61))
    assert renewal_due(RENEW, st, now=AT - dt.timedelta(seconds=60))
    gave_up = st["expiresAt"]
    assert not renewal_due(RENEW, st, now=AT - dt.timedelta(seconds=10), given_up_for=gave_up)
    assert next_deadline(RENEW, st, now=now, given_up_for=gave_up) == AT
    # a renewal refused for an older expiresAt does not hold back this one
    assert next_deadline(RENEW, st, now=now, given_up_for="2020-01-01T00:00:00Z") < AT


def test_an_exhausted_grant_with_renewal_is_due_now() -> None:
    now = AT - dt.timedelta(hours=1)
    assert next_deadline(RENEW, status("Exhausted"), now=now) == now
    assert renewal_due(RENEW, status("Exhausted"), now=now)
    assert next_deadline({}, status("Exhausted"), now=now) == AT  # no renewal: expiry only


@pytest.mark.parametrize("phase", ["Pending", "Denied", "Expired", "Revoked", "Rejected", None])
def test_a_grant_that_is_not_live_has_no_deadline(phase: str | None) -> None:
    st = status()
    st["phase"] = phase
    assert next_deadline(RENEW, st, now=AT) is None


def test_a_live_grant_without_expiry_has_no_deadline() -> None:
    assert next_deadline(RENEW, status(expires=None), now=AT) is None


# --- the loop ----------------------------------------------------------------------


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class FakeTend:
    """Records calls; answers a next deadline per key from ``plan`` (default: forget)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[Key] = []
        self.plan: dict[Key, list[float | Exception | None]] = {}
        self.delay = delay
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, key: Key) -> float | None:
        self.calls.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        answers = self.plan.get(key) or [None]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_due_grants_are_tended_in_deadline_order_and_rescheduled_from_the_result() -> None:
    tend = FakeTend()
    scheduler = Scheduler(tend, concurrency=1)
    now = time.time()
    tend.plan[k("a")] = [now + 0.05, None]  # tended twice, then forgotten
    scheduler.schedule(k("b"), now + 0.02)
    scheduler.schedule(k("a"), now - 1)  # overdue (e.g. the operator was down): at once
    scheduler.start()
    try:
        await until(lambda: len(tend.calls) == 3)
        assert tend.calls == [k("a"), k("b"), k("a")]
        await until(lambda: len(scheduler) == 0)
    finally:
        await scheduler.stop()


async def test_an_earlier_deadline_wakes_the_sleeping_loop() -> None:
    tend = FakeTend()
    scheduler = Scheduler(tend)
    scheduler.schedule(k("late"), time.time() + 3600)
    scheduler.start()
    try:
        await asyncio.sleep(0.02)  # the loop sleeps towards the hour
        scheduler.schedule(k("soon"), time.time() + 0.01)
        await until(lambda: tend.calls == [k("soon")], timeout=2)
        assert scheduler.deadline(k("late")) is not None
    finally:
        await scheduler.stop()


async def test_replaced_and_forgotten_deadlines_do_not_fire() -> None:
    tend = FakeTend()
    scheduler = Scheduler(tend)
    now = time.time()
    scheduler.schedule(k("moved"), now + 0.02)
    scheduler.schedule(k("moved"), now + 3600)
    scheduler.schedule(k("gone"), now + 0.02)
    scheduler.forget(k("gone"))
    scheduler.schedule(k("marker"), now + 0.05)
    scheduler.start()
    try:
        await until(lambda: k("marker") in tend.calls)
        assert tend.calls == [k("marker")]
    finally:
        await scheduler.stop()


async def test_concurrency_is_bounded_and_every_due_grant_is_tended() -> None:
    tend = FakeTend(delay=0.01)
    scheduler = Scheduler(tend, concurrency=4)
    now = time.time()
    for i in range(50):
        scheduler.schedule(k(f"g{i}"), now - 1)
    scheduler.start()
    try:
        await until(lambda: len(tend.calls) == 50)
        assert sorted(tend.calls) == sorted(k(f"g{i}") for i in range(50))
        assert tend.most_at_once == 4
    finally:
        await scheduler.stop()


async def test_a_failed_tend_is_tried_again() -> None:
    tend = FakeTend()
    tend.plan[k("a")] = [RuntimeError("apiserver away"), None]
    scheduler = Scheduler(tend, retry_seconds=0.02)
    scheduler.schedule(k("a"), time.time())
    scheduler.start()
    try:
        await until(lambda: len(tend.calls) == 2)
        await until(lambda: len(scheduler) == 0)
    finally:
        await scheduler.stop()


async def test_scheduled_while_being_tended_is_looked_at_again_after() -> None:
    tend = FakeTend(delay=0.05)
    scheduler = Scheduler(tend)
    scheduler.schedule(k("a"), time.time())
    scheduler.start()
    try:
        await until(lambda: scheduler.busy == 1)
        scheduler.schedule(k("a"), time.time())  # a watch event during the action
        await asyncio.sleep(0.01)
        assert tend.running == 1  # never two actions on one grant at once
        await until(lambda: len(tend.calls) == 2)
        assert tend.most_at_once == 1
    finally:
        await scheduler.stop()


async def test_the_sweep_runs_periodically_and_its_keys_are_tended_at_once() -> None:
    tend = FakeTend()
    sweeps: list[float] = []

    def sweep() -> list[Key]:
        sweeps.append(time.time())
        return [k("guard-failed")] if len(sweeps) == 2 else []

    scheduler = Scheduler(tend, sweep=sweep, sweep_interval=0.03)
    scheduler.schedule(k("other"), time.time() + 3600)
    scheduler.start()
    try:
        await until(lambda: tend.calls == [k("guard-failed")], timeout=2)
        await until(lambda: len(sweeps) >= 3, timeout=2)
    finally:
        await scheduler.stop()


async def test_a_failing_sweep_does_not_stop_expiry() -> None:
    tend = FakeTend()
    sweeps: list[int] = []

    def sweep() -> list[Key]:
        sweeps.append(1)
        if len(sweeps) == 1:
            raise RuntimeError("an index changed under the sweep")
        return []

    scheduler = Scheduler(tend, sweep=sweep, sweep_interval=0.02)
    scheduler.start()
    try:
        await until(lambda: len(sweeps) >= 2, timeout=2)  # the loop survived the first
        scheduler.schedule(k("expires"), time.time())
        await until(lambda: tend.calls == [k("expires")], timeout=2)
    finally:
        await scheduler.stop()


async def test_stop_cancels_the_loop_and_actions_in_flight() -> None:
    tend = FakeTend(delay=3600)
    scheduler = Scheduler(tend)
    scheduler.schedule(k("a"), time.time())
    scheduler.start()
    await until(lambda: tend.running == 1)
    await asyncio.wait_for(scheduler.stop(), timeout=2)
    assert tend.running == 0


async def test_stop_ends_the_loop_even_when_a_wake_up_comes_with_it() -> None:
    """A stop in the same turn as a wake-up (a grant finished, a new deadline) ends the
    loop: asyncio.wait_for on Python 3.11 swallowed that cancellation, and stop() waited
    forever (seen once in a unit run)."""
    scheduler = Scheduler(FakeTend())
    scheduler.schedule(k("late"), time.time() + 3600)
    scheduler.start()
    await asyncio.sleep(0.02)  # the loop waits towards the hour
    scheduler.schedule(k("now"), time.time())  # wakes the loop ...
    async with asyncio.timeout(2):
        await scheduler.stop()  # ... in the same turn as the cancellation
