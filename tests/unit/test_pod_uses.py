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
from secretgrants.webhook import PodAdmission
from tests.unit.test_admission_reads import CountingStore, a_grant, a_pod, reservations
from tests.unit.test_lifecycle import NS, PodsStandIn, grant, observe, rfc3339, tending
from tests.unit.test_lifecycle import indexes as indexes  # a fixture
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


def rid(n: int) -> str:
    """A reservation id as the mutating webhook makes them."""
    return f"{n:016x}"


R1, R2, R3, C1, BRIEF = rid(1), rid(2), rid(3), rid(0xC1), rid(0xB1)


def expecting(*uses: tuple[str, str, str], keep_seconds: float = 120) -> SeenUses:
    seen = SeenUses(keep_seconds=keep_seconds, clock=lambda: 0.0)
    for namespace, name, rid_ in uses:
        seen.expect(namespace, name, rid_)
    return seen


def test_the_expected_ids_a_created_pod_carries_are_recorded_per_grant() -> None:
    seen = expecting((NS, "db", R1), (NS, "cache", C1), ("team-b", "db", R2), (NS, "db", R3))
    seen.record(meta("p1", f"db={R1},cache={C1}"), at=0)
    seen.record(meta("p2", f"db={R2}", namespace="team-b"), at=0)
    seen.record(meta("p3", None), at=0)  # a labelled pod that asks for nothing
    seen.record(meta("p4", "db="), at=0)  # no id: nothing to confirm
    assert seen.seen(NS, "db") == {R1} and seen.seen(NS, "cache") == {C1}
    assert seen.seen("team-b", "db") == {R2} and seen.seen(NS, "other") == set()
    assert len(seen) == 3 and seen.expected() == 4
    seen.forget(NS, "db", {R1, "unknown"})
    seen.forget(NS, "gone", {"x"})
    assert seen.seen(NS, "db") == set() and len(seen) == 2 and seen.expected() == 3


def test_ids_that_were_not_expected_or_not_as_the_webhook_writes_them_are_not_kept() -> None:
    seen = expecting((NS, "db", R1), (NS, "db", "r2"))
    seen.record(meta("p1", f"db={R2},Bad_Name={R1},db2=r1,{'x' * 300}={R1}"), at=0)
    seen.record(meta("p2", "db=r2"), at=0)  # expected, but never an id the webhook makes
    assert len(seen) == 0 and seen.seen(NS, "db") == set()
    seen.expect(NS, "db", R2)  # seen moments before it was expected (a restart): recorded
    assert seen.seen(NS, "db") == {R2}


def test_a_pod_claiming_ten_thousand_reservations_costs_no_memory() -> None:
    """The annotation a pod's author can write is ~250 KB: 10,000 ids a pod, 20 pods."""
    many = ",".join(f"g{i}={rid(i)}" for i in range(10_000))
    assert len(many) > 200_000
    seen = expecting((NS, "g1", rid(1)))
    for i in range(20):
        seen.record(meta(f"p{i}", many), at=0)
    assert len(seen) == 0 and seen.expected() == 1  # longer than the webhook writes: ignored
    tail = ",".join(f"g{i}={rid(i)}" for i in range(40))  # short enough, but 40 claims
    seen = expecting(*((NS, f"g{i}", rid(i)) for i in range(40)))
    seen.record(meta("p", tail), at=0)
    assert len(seen) == 16  # at most as many grants as a pod may request


def test_expectations_are_capped_and_past_the_cap_settling_lists_pods(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = expecting(*((NS, "db", rid(i)) for i in range(3)))
    seen.max_expected = 3
    seen.synced = True
    assert seen.synced
    seen.expect(NS, "db", rid(3))
    seen.expect(NS, "db", rid(4))
    assert seen.expected() == 3 and not seen.synced
    assert [r.message for r in caplog.records].count(
        "more than 3 reserved uses are pending: uses are confirmed by listing pods until fewer are"
    ) == 1
    seen.forget(NS, "db", {rid(0)})
    assert seen.synced  # the watch was watching all along: in sync again


def test_expected_ids_stay_while_their_reservation_is_pending() -> None:
    clock = [0.0]
    seen = SeenUses(keep_seconds=100, clock=lambda: clock[0])
    seen.expect(NS, "db", R1)
    seen.record(meta("p1", f"db={R1}"), at=0)
    seen.prune(at=10_000)
    assert seen.seen(NS, "db") == {R1}  # not dropped: the grant still holds it pending
    clock[0] = 500.0
    seen.observe(NS, "db", [R1, R2])  # the grant's status: both pending
    seen.observe(NS, "db", [R2])  # R1 settled since (confirmed or given back)
    assert seen.seen(NS, "db") == set() and seen.expected() == 1
    seen.observe(NS, "db", [])  # R2 expected moments ago: this event may predate it
    assert seen.expected() == 1
    clock[0] = 700.0
    seen.observe(NS, "db", [])
    assert seen.expected() == 0
    seen.expect(NS, "db", R3)
    seen.gone(NS, "db")
    assert seen.expected() == 0


def test_ids_seen_before_they_are_expected_are_forgotten_after_a_while() -> None:
    seen = SeenUses(keep_seconds=100, max_early=2)
    seen.record(meta("p1", f"db={R1}"), at=0)
    seen.record(meta("p2", f"db={R2},db2={R3}"), at=60)  # the buffer holds two
    seen.record(meta("p3", f"db={R3}"), at=120)  # prunes: R1 forgotten
    for rid_ in (R1, R2, R3):
        seen.expect(NS, "db", rid_)
    assert seen.seen(NS, "db") == {R2}


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
    if memo.get("seen_uses") is not None:  # as the operator observes the grant
        memo.seen_uses.observe(NS, "db", [rid_ for rid_, _ in ids_and_ages])
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
    reserved(memo, (R1, 1), (R2, 1))
    watched.record(meta("p1", f"db={R1}"), at=0)
    await settle_uses(memo, NS, "db")
    (write,) = memo.kube.writes
    assert [r["id"] for r in write[2]["reservations"]] == [R2]  # R2: not seen yet, kept
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
    reserved(memo, (BRIEF, 60))  # past the window, and no pod carries it now
    watched.record(meta("brief-pod", f"db={BRIEF}"), at=0)
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
    reserved(memo, (R1, 1))
    await settle_uses(memo, NS, "db")
    assert memo.kube.lists == 1 and memo.kube.writes == []
    memo.kube.pods = [{"metadata": {"name": "p", "annotations": {RESERVATIONS: f"db={R1}"}}}]
    await settle_uses(memo, NS, "db")
    assert memo.kube.lists == 2
    (write,) = memo.kube.writes
    assert write[2]["reservations"] == [] and write[2]["usesConsumed"] == 1


async def test_while_the_watch_is_out_of_sync_uses_are_confirmed_but_not_given_back(
    memo: kopf.Memo,
    watched: SeenUses,
) -> None:
    """The watch backs off (up to 60 s, longer than the window): a pod force-deleted
    meanwhile is carried by no pod a list finds, but the resumed watch replays it."""
    watched.synced = False
    reserved(memo, (BRIEF, 60), (R1, 60))  # past the window
    memo.kube.pods = [{"metadata": {"name": "p", "annotations": {RESERVATIONS: f"db={R1}"}}}]
    await settle_uses(memo, NS, "db")
    (write,) = memo.kube.writes
    assert [r["id"] for r in write[2]["reservations"]] == [BRIEF]  # held, not given back
    assert write[2]["usesConsumed"] == 2 and not memo.audit_memory.events
    memo.kube.grants[(NS, "db")]["status"] = write[2]
    memo.kube.pods = []
    watched.synced = True  # the watch resumed, and replays the pod's DELETED event
    watched.record(meta("brief-pod", f"db={BRIEF}"))
    await settle_uses(memo, NS, "db")
    assert memo.kube.writes[-1][2]["reservations"] == []
    assert memo.kube.writes[-1][2]["usesConsumed"] == 2 and not memo.audit_memory.events


async def test_a_watch_out_of_sync_for_long_gives_uses_back_as_before(
    memo: kopf.Memo, watched: SeenUses, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of sync since before the use was reserved (the clock starts there)."""
    clock = [0.0]
    memo.seen_uses = SeenUses(keep_seconds=120, clock=lambda: clock[0])
    reserved(memo, (BRIEF, 400))
    clock[0] = 299.0  # out of sync since it was made: just under 10 windows
    await settle_uses(memo, NS, "db")
    assert memo.kube.writes == []
    clock[0] = 300.0
    await settle_uses(memo, NS, "db")
    (write,) = memo.kube.writes
    assert write[2]["reservations"] == [] and write[2]["usesConsumed"] == 0
    (event,) = memo.audit_memory.events
    assert event.reason == "NoPodCreated"
    assert "the pod watch has been out of sync for 300 s: 1 use(s) of" in caplog.text


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
    r0 = rid(0)
    seen = SeenUses(keep_seconds=120)
    for rid_ in (r0, R1, R2, R3):
        seen.expect(NS, "db", rid_)
    source = ScriptedPods(
        lists=[([meta("old", f"db={r0}", rv="5")], "10"), ([], "40")],
        sessions=[
            [("ADDED", meta("a", f"db={R1}", rv="11")), ("BOOKMARK", {"resourceVersion": "15"})],
            [("DELETED", meta("b", f"db={R2}", rv="20")), gone()],
            KubeAPIError(500, "InternalError", method="WATCH", path="/"),
            [("MODIFIED", meta("c", f"db={R3}", rv="41"))],
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
    assert seen.seen(NS, "db") == {r0, R1, R2, R3}
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


async def test_the_mutating_webhook_expects_each_use_it_reserves() -> None:
    """Reserved before the pod exists, so the watch's event of the pod finds it expected."""
    seen = SeenUses(keep_seconds=120)
    store = CountingStore(a_grant(usesRemaining=3), a_grant("api"))  # api: no use limit
    adm = PodAdmission(store, audience=None, expectations=seen)
    patch = await adm.mutate(a_pod("db,api"), NS, dry_run=False)
    assert seen.expected() == 1  # nothing is reserved for api
    pod = {**meta("p", reservations(patch)), "namespace": NS}
    seen.record(pod)
    (reserved_id,) = seen.seen(NS, "db")
    assert store.grants["db"]["status"]["reservations"][0]["id"] == reserved_id
    assert seen.seen(NS, "api") == set()


def test_the_operator_expects_the_pending_uses_of_the_grants_it_observes(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    """After a restart the webhook's expectations are gone: the grants' statuses, as the
    operator's watch of them delivers them, say which ids are pending."""
    memo.seen_uses = seen = SeenUses(keep_seconds=0)
    t = tending(memo, indexes)
    obj = grant(expires_in=600)
    obj["status"]["reservations"] = [{"id": R1, "reservedAt": rfc3339(dt.datetime.now(dt.UTC))}]
    observe(t, obj)
    seen.record(meta("p", f"db={R1},db2={R2}"))
    assert seen.seen(NS, "db") == {R1} and seen.expected() == 1
    obj["status"]["reservations"] = []  # settled
    observe(t, obj)
    assert seen.expected() == 0 and len(seen) == 0
    obj["status"]["reservations"] = [{"id": R2, "reservedAt": rfc3339(dt.datetime.now(dt.UTC))}]
    observe(t, obj)
    observe(t, obj, "DELETED")
    assert seen.expected() == 0
