"""Uses confirmed by the pod watch (secretgrants.pod_uses), without a cluster.

What goes in: pod metadata as the watch delivers it, a scripted pod source in place of
the Kubernetes client (lists, watch events, failures), and grants held by the in-memory
stand-in of test_lifecycle. What is asserted: which reservation ids are recorded and
for how long, that settling confirms from the record without listing pods, lists once
before it gives a use back, and lists every time while the watch is not in sync; and
that the watch resumes, lists again after 410 Gone, backs off after errors and stops.
The real apiserver's watch is in tests/e2e/test_pod_admission.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from secretgrants.kube import KubeAPIError, WatchEvent
from secretgrants.metrics import Metrics
from secretgrants.pod_uses import SELECTOR, PodWatch, SeenUses, settle_uses
from tests.unit.test_lifecycle import NS, PodsStandIn, grant, rfc3339
from tests.unit.test_lifecycle import memo as memo  # the fixture

RESERVATIONS = "secretgrants.io/reservations"


def meta(name: str, reservations: str | None, namespace: str = NS, rv: str = "1") -> dict[str, Any]:
    annotations = {"team": "a"} if reservations is None else {RESERVATIONS: reservations}
    return {
        "name": name,
        "namespace": namespace,
        "resourceVersion": rv,
        "labels": {"secretgrants.io/inject": "true"},
        "annotations": annotations,
    }


def test_the_ids_a_created_pod_carries_are_recorded_per_grant() -> None:
    seen = SeenUses(keep_seconds=120)
    seen.record(meta("p1", "db=r1,cache=c1"), at=0)
    seen.record(meta("p2", "db=r2", namespace="team-b"), at=0)
    seen.record(meta("p3", None), at=0)  # a labelled pod that asks for nothing
    seen.record(meta("p4", "db="), at=0)  # no id: nothing to confirm
    assert seen.seen(NS, "db") == {"r1"} and seen.seen(NS, "cache") == {"c1"}
    assert seen.seen("team-b", "db") == {"r2"} and seen.seen(NS, "other") == set()
    assert len(seen) == 3
    seen.forget(NS, "db", {"r1", "unknown"})
    seen.forget(NS, "gone", {"x"})
    assert seen.seen(NS, "db") == set() and len(seen) == 2


def test_ids_are_forgotten_some_time_after_they_were_first_seen() -> None:
    seen = SeenUses(keep_seconds=100)
    seen.record(meta("p1", "db=r1"), at=0)
    seen.record(meta("p2", "db=r2"), at=60)
    seen.record(meta("p1", "db=r1"), at=90)  # a later event of the same pod: first seen stays
    seen.record(meta("p3", "db=r3"), at=120)  # prunes: a quarter of keep_seconds since the last
    assert seen.seen(NS, "db") == {"r2", "r3"}
    seen.prune(at=200)
    assert seen.seen(NS, "db") == {"r3"}
    seen.prune(at=220)
    assert len(seen) == 0


def reserved(memo: kopf.Memo, *ids_and_ages: tuple[str, float]) -> dict[str, Any]:
    """Grant ``db`` with these reservations, each made this many seconds ago."""
    obj = grant(expires_in=600)
    at = dt.datetime.now(dt.UTC)
    obj["status"]["reservations"] = [
        {"id": rid, "reservedAt": rfc3339(at - dt.timedelta(seconds=age))}
        for rid, age in ids_and_ages
    ]
    obj["status"] |= {"usesConsumed": len(ids_and_ages), "usesRemaining": 3 - len(ids_and_ages)}
    memo.kube.grants[(NS, "db")] = obj
    return obj


class CountingPods(PodsStandIn):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def list_pod_annotations(
        self, namespace: str, selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.lists += 1
        return await super().list_pod_annotations(namespace, selector)


@pytest.fixture
def watched(memo: kopf.Memo) -> SeenUses:
    memo.kube = CountingPods()
    memo.config = type("Cfg", (), {"reservation_window_seconds": 30})()
    memo.seen_uses = SeenUses(keep_seconds=120)
    memo.seen_uses.synced = True
    return memo.seen_uses  # type: ignore[no-any-return]


async def test_a_use_seen_by_the_watch_is_confirmed_without_listing_pods(
    memo: kopf.Memo,
    watched: SeenUses,
) -> None:
    reserved(memo, ("r1", 1), ("r2", 1))
    watched.record(meta("p1", "db=r1"), at=0)
    await settle_uses(memo, NS, "db")
    (write,) = memo.kube.writes
    assert [r["id"] for r in write[2]["reservations"]] == ["r2"]  # r2: not seen yet, kept
    assert write[2]["usesConsumed"] == 2 and memo.kube.lists == 0
    assert watched.seen(NS, "db") == set()  # settled: forgotten
    await settle_uses(memo, NS, "db")  # nothing new: no write, no list
    assert len(memo.kube.writes) == 1 and memo.kube.lists == 0


async def test_a_pod_gone_before_any_look_keeps_its_use(
    memo: kopf.Memo,
    watched: SeenUses,
) -> None:
    """The gap this module closes: the pod was created and deleted again before anyone
    listed pods; the watch saw it, so its use is confirmed, not given back."""
    reserved(memo, ("brief", 60))  # past the window, and no pod carries it now
    watched.record(meta("brief-pod", "db=brief"), at=0)
    await settle_uses(memo, NS, "db")
    (write,) = memo.kube.writes
    assert write[2]["reservations"] == [] and write[2]["usesConsumed"] == 1
    assert [e.type.value for e in memo.audit_memory.events] == []


async def test_pods_are_listed_once_before_a_use_is_given_back(
    memo: kopf.Memo,
    watched: SeenUses,
) -> None:
    """Past the window and never seen by the watch: a last look at every pod of the
    namespace (the watch may have missed it, or the label was taken off first)."""
    reserved(memo, ("listed", 60), ("lost", 60), ("young", 1))
    unlabelled = {"labels": {}, "annotations": {RESERVATIONS: "db=listed"}}
    memo.kube.pods = [{"metadata": {"name": "p", **unlabelled}}]
    await settle_uses(memo, NS, "db")
    assert memo.kube.lists == 1
    (write,) = memo.kube.writes
    assert [r["id"] for r in write[2]["reservations"]] == ["young"]
    assert (write[2]["usesConsumed"], write[2]["usesRemaining"]) == (2, 1)  # "lost" given back
    (event,) = memo.audit_memory.events
    assert event.type.value == "use_released" and event.reason == "NoPodCreated"


async def test_pods_are_listed_every_time_while_the_watch_is_not_in_sync(
    memo: kopf.Memo,
    watched: SeenUses,
) -> None:
    watched.synced = False
    reserved(memo, ("r1", 1))
    await settle_uses(memo, NS, "db")
    assert memo.kube.lists == 1 and memo.kube.writes == []
    memo.kube.pods = [{"metadata": {"name": "p", "annotations": {RESERVATIONS: "db=r1"}}}]
    await settle_uses(memo, NS, "db")
    assert memo.kube.lists == 2
    (write,) = memo.kube.writes
    assert write[2]["reservations"] == [] and write[2]["usesConsumed"] == 1


Session = list[WatchEvent | Exception] | Exception


class ScriptedPods:
    """A pod source whose lists and watch requests play a script, then wait forever."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]], sessions: list[Session]):
        self.lists = lists
        self.sessions = sessions
        self.listed = 0
        self.watched_from: list[str] = []
        self.idle = asyncio.Event()  # set once the script is played out

    async def list_pod_metadata(
        self, namespace: str | None, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        assert (namespace, label_selector) == (NS, SELECTOR)
        self.listed += 1
        return self.lists.pop(0)

    @contextlib.asynccontextmanager
    async def watch_pod_metadata(
        self,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        self.watched_from.append(resource_version)
        session = self.sessions.pop(0) if self.sessions else None
        if isinstance(session, Exception):
            raise session
        yield self._play(session)

    async def _play(
        self, session: list[WatchEvent | Exception] | None
    ) -> AsyncIterator[WatchEvent]:
        if session is None:  # played out: a watch that stays open with nothing to say
            self.idle.set()
            await asyncio.Event().wait()
        for item in session or []:
            if isinstance(item, Exception):
                raise item
            yield item


def gone() -> KubeAPIError:
    return KubeAPIError(410, "Expired", "too old resource version", method="WATCH", path="/")


async def test_the_watch_lists_then_resumes_relists_after_gone_and_backs_off() -> None:
    seen = SeenUses(keep_seconds=120)
    source = ScriptedPods(
        lists=[([meta("old", "db=r0", rv="5")], "10"), ([], "40")],
        sessions=[
            [("ADDED", meta("a", "db=r1", rv="11")), ("BOOKMARK", {"resourceVersion": "15"})],
            [("DELETED", meta("b", "db=r2", rv="20")), gone()],
            KubeAPIError(500, "InternalError", method="WATCH", path="/"),
            [("MODIFIED", meta("c", "db=r3", rv="41"))],
        ],
    )
    metrics = Metrics()
    watch = PodWatch(source, seen, namespace=NS, metrics=metrics, backoff_seconds=0.01)
    assert not seen.synced
    watch.start()
    async with asyncio.timeout(5):
        await source.idle.wait()
    # listed at 10; resumed from the bookmark; Gone: listed again (40); an error: resumed
    assert source.watched_from == ["10", "15", "40", "40", "41"]
    assert source.listed == 2
    assert seen.seen(NS, "db") == {"r0", "r1", "r2", "r3"}
    assert seen.synced
    restarts = metrics.pod_watch_restarts
    assert restarts.labels("Gone")._value.get() == 1
    assert restarts.labels("Error")._value.get() == 1
    await watch.stop()
    assert not seen.synced


async def test_a_failing_watch_is_not_in_sync_until_it_is_back() -> None:
    seen = SeenUses(keep_seconds=120)
    forbidden = KubeAPIError(403, "Forbidden", method="WATCH", path="/")
    source = ScriptedPods(lists=[([], "1")], sessions=[forbidden, forbidden])
    watch = PodWatch(source, seen, namespace=NS, backoff_seconds=0.2)
    watch.start()
    async with asyncio.timeout(5):
        while not source.watched_from:
            await asyncio.sleep(0)
    assert not seen.synced and source.watched_from == ["1"]  # waiting out the backoff
    async with asyncio.timeout(5):
        await source.idle.wait()
    assert seen.synced and source.watched_from == ["1", "1", "1"]
    await watch.stop()
    await watch.stop()  # twice: nothing left to stop
