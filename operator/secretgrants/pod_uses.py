"""Counted uses confirmed by watching pods: a pod that existed, even for a moment, keeps its use.

The mutating webhook reserves a use in the grant's status and writes the reservation id
in the pod's ``secretgrants.io/reservations`` annotation (``admission``); settling
(``uses.settle``) confirms a reservation a created pod carries and gives back one that
no pod carried within the window (a later admission step refused the pod). Looking for
pods only when settling (a list every 2 s) missed a pod deleted in between, and gave
its use back. So one watch of the pods with the inject label (the mutating webhook's
objectSelector; the validating webhook requires it on a pod with reservations) records
the reservation ids the operator expects that it sees on a created pod
(:class:`SeenUses`, in memory: only ids the webhook reserved or a grant's status holds
pending, so what a pod's author writes costs no memory), and settling confirms from
that record, with no API list per look. Before a use is given back, the namespace's
pods (all of them: a label can be taken off) are still listed once, for what the watch
missed (pods created and gone while it relisted after a 410 Gone). While the watch is
not in sync, settling lists every time, and gives nothing back (the resumed watch
replays what it missed) for up to ``HOLD_WINDOWS`` windows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import kopf

from secretgrants.admission import LABEL_INJECT, reservation_ids, reservations_claimed
from secretgrants.api.common import now
from secretgrants.audit import Effect, EventType, audit_fields
from secretgrants.kube import KubeAPIError, WatchEvent
from secretgrants.metrics import Metrics
from secretgrants.tasks import cancel_and_wait
from secretgrants.uses import settle, unclaimed

__all__ = ["KEEP_WINDOWS", "SELECTOR", "PodWatch", "SeenUses", "settle_uses"]

log = logging.getLogger("secretgrants.pod_uses")

SELECTOR: Final = f"{LABEL_INJECT}=true"  # the pods the mutating webhook sees
KEEP_WINDOWS: Final = 4  # an id seen before it is expected is kept this many windows
MAX_EXPECTED: Final = 100_000  # pending reservations expected at once (~20 MB at most)
MAX_EARLY: Final = 10_000  # ids seen on pods before they are expected, kept a while
WATCH_SECONDS: Final = 300  # the apiserver ends each watch request after this long
BACKOFF_SECONDS: Final = 1.0  # after a failed list or watch: 1, 2, 4 .. s
MAX_BACKOFF_SECONDS: Final = 60.0
HOLD_WINDOWS: Final = 10  # while the watch is out of sync, give-backs wait up to this long
SETTLE_ATTEMPTS: Final = 5  # compare-and-swap attempts of one settling

Key = tuple[str, str]  # a grant: (namespace, name)


class SeenUses:
    """The reservation ids the operator expects on created pods, per grant (namespace,
    name), and which of them a created pod was seen carrying.

    An id is expected from the moment the mutating webhook reserves it (``expect``,
    before the pod exists) and from the grant statuses the operator observes
    (``observe``: the pending reservations, which covers a restart), until its
    reservation is settled (``forget``) or the grant no longer holds it or is gone
    (``observe``). Only an expected id is recorded when seen (``record``), so the
    memory is bounded by the uses actually counted, not by what pods' authors write:
    the pod watch is cluster-wide and a label can be added to any pod. Ids seen before
    they are expected (at a restart the watch may list the pods before the grants are
    observed) are kept ``keep_seconds`` in a small bounded buffer, and only if they
    have the form the webhook writes. Past ``max_expected`` expectations nothing more
    is expected: a warning, and ``synced`` is False (settling lists pods) until fewer.

    ``synced``: the watch has listed the pods and is watching them, so an id a pod
    carries is here (or soon will be); while False, settling lists pods instead.
    """

    def __init__(
        self,
        keep_seconds: float,
        *,
        max_expected: int = MAX_EXPECTED,
        max_early: int = MAX_EARLY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep_seconds = keep_seconds
        self.max_expected = max_expected
        self.max_early = max_early
        self._clock = clock
        self._watching = False
        self._full = False
        self._out_of_sync_since: float | None = clock()
        self._expected: dict[Key, dict[str, float]] = {}  # id -> when expected (monotonic)
        self._count = 0  # expected ids, all grants
        self._seen: dict[Key, set[str]] = {}  # expected ids a created pod carried
        self._early: dict[tuple[str, str, str], float] = {}  # seen, not (yet) expected
        self._pruned_at: float | None = None

    @property
    def synced(self) -> bool:
        return self._watching and not self._full

    @synced.setter
    def synced(self, watching: bool) -> None:
        self._watching = watching
        self._note_sync()

    def _note_sync(self) -> None:
        if self.synced:
            self._out_of_sync_since = None
        elif self._out_of_sync_since is None:
            self._out_of_sync_since = self._clock()

    def out_of_sync_for(self) -> float:
        """Seconds since the record stopped being in sync (0 while it is)."""
        since = self._out_of_sync_since
        return 0.0 if since is None else self._clock() - since

    def __len__(self) -> int:
        """The ids seen (and expected)."""
        return sum(len(ids) for ids in self._seen.values())

    def expected(self) -> int:
        return self._count

    def expect(self, namespace: str, grant: str, rid: str) -> None:
        """A use reserved with id ``rid``: a created pod will carry it."""
        key = (namespace, grant)
        ids = self._expected.get(key)
        if ids is not None and rid in ids:
            return
        if self._count >= self.max_expected:
            if not self._full:
                log.warning(
                    "more than %d reserved uses are pending: uses are confirmed by listing "
                    "pods until fewer are",
                    self.max_expected,
                )
                self._full = True
                self._note_sync()
            return
        at = self._clock()
        self._expected.setdefault(key, {})[rid] = at
        self._count += 1
        if self._early.pop((namespace, grant, rid), None) is not None:
            self._seen.setdefault(key, set()).add(rid)

    def observe(self, namespace: str, grant: str, pending: Iterable[str]) -> None:
        """The grant's pending reservation ids, as a watch event of it says: each is
        expected; an id expected ``keep_seconds`` ago that the grant no longer holds is
        forgotten (a younger one may be newer than the event)."""
        pending = set(pending)
        for rid in pending:
            self.expect(namespace, grant, rid)
        ids = self._expected.get((namespace, grant))
        if ids:
            cutoff = self._clock() - self.keep_seconds
            self.forget(
                namespace, grant, [r for r, at in ids.items() if r not in pending and at <= cutoff]
            )

    def gone(self, namespace: str, grant: str) -> None:
        """The grant was deleted: none of its ids is expected any more."""
        self.forget(namespace, grant, list(self._expected.get((namespace, grant), ())))

    def record(self, metadata: Mapping[str, Any], at: float | None = None) -> None:
        """A created pod's metadata (``at``: a monotonic clock): the expected reservations
        it carries were made. Anything else it claims is dropped, or, in the form the
        webhook writes, kept a while in case it is expected soon."""
        at = self._clock() if at is None else at
        namespace = str(metadata.get("namespace") or "")
        for grant, rid in reservations_claimed(metadata):
            key = (namespace, grant)
            if rid in self._expected.get(key, ()):
                self._seen.setdefault(key, set()).add(rid)
            elif len(self._early) < self.max_early:
                self._early.setdefault((namespace, grant, rid), at)
        if self._pruned_at is None or at - self._pruned_at >= self.keep_seconds / 4:
            self.prune(at)

    def seen(self, namespace: str, grant: str) -> set[str]:
        return set(self._seen.get((namespace, grant), ()))

    def forget(self, namespace: str, grant: str, ids: Iterable[str]) -> None:
        """Settled (or given back) reservations: no longer expected."""
        key = (namespace, grant)
        expected = self._expected.get(key)
        seen = self._seen.get(key)
        for rid in ids:
            if expected is not None and expected.pop(rid, None) is not None:
                self._count -= 1
            if seen is not None:
                seen.discard(rid)
        if expected is not None and not expected:
            del self._expected[key]
        if seen is not None and not seen:
            del self._seen[key]
        if self._full and self._count < self.max_expected:
            self._full = False
            self._note_sync()

    def prune(self, at: float) -> None:
        """Forget the unexpected ids first seen ``keep_seconds`` or longer before ``at``.
        An expected id stays as long as it is expected: its reservation is pending."""
        self._pruned_at = at
        cutoff = at - self.keep_seconds
        self._early = {k: seen for k, seen in self._early.items() if seen > cutoff}


class PodSource(Protocol):
    """What the watch needs of the Kubernetes client (``kube.KubeClient``)."""

    async def list_pod_metadata(
        self, namespace: str | None, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch_pod_metadata(
        self,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        *,
        timeout_seconds: int = ...,
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]: ...


class PodWatch:
    """Lists the labelled pods, then watches them from the list's resourceVersion, into
    ``seen``. A watch that ends is resumed from the last resourceVersion it saw (events
    meanwhile are replayed); one too old to resume from (410 Gone) is listed again; any
    other failure is retried with backoff. ``namespace`` None: every namespace."""

    def __init__(
        self,
        source: PodSource,
        seen: SeenUses,
        *,
        namespace: str | None,
        metrics: Metrics | None = None,
        backoff_seconds: float = BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seen = seen
        self._source = source
        self._namespace = namespace
        self._metrics = metrics
        self._backoff_seconds = backoff_seconds
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="pod-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.seen.synced = False
        await cancel_and_wait(task)

    async def run(self) -> None:
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    pods, version = await self._source.list_pod_metadata(self._namespace, SELECTOR)
                    at = self._clock()
                    for metadata in pods:
                        self.seen.record(metadata, at)
                async with self._source.watch_pod_metadata(
                    self._namespace, SELECTOR, version, timeout_seconds=WATCH_SECONDS
                ) as events:
                    if not self.seen.synced:
                        log.info(
                            "watching pods with the label %s: uses are confirmed by it", SELECTOR
                        )
                    self.seen.synced = True
                    failures = 0
                    async for type_, metadata in events:
                        version = str(metadata.get("resourceVersion") or version)
                        if type_ != "BOOKMARK":  # ADDED, MODIFIED, DELETED: the pod was created
                            self.seen.record(metadata, self._clock())
            except asyncio.CancelledError:
                raise
            except Exception as err:
                gone = isinstance(err, KubeAPIError) and err.status == 410
                failures += 1
                self.seen.synced = False
                if self._metrics is not None:
                    self._metrics.pod_watch_restarts.labels("Gone" if gone else "Error").inc()
                if gone:
                    version = None  # list again: what happened meanwhile is no longer replayed
                    log.info("the pod watch is too far behind (410 Gone); listing pods again")
                    if failures == 1:
                        continue
                delay = min(MAX_BACKOFF_SECONDS, self._backoff_seconds * 2 ** min(failures - 1, 8))
                if not gone:
                    log.warning(
                        "the pod watch failed (%s); uses are confirmed by listing pods until "
                        "it is back, in %.0f s",
                        err,
                        delay,
                    )
                await asyncio.sleep(delay)


async def settle_uses(
    memo: kopf.Memo, namespace: str, name: str, grant: dict[str, Any] | None = None
) -> None:
    """Confirm uses that created pods carry; give back those no pod claimed in time.

    ``grant``: the grant as just read, if the caller has it. Pods seen by the watch
    (``memo.seen_uses``) confirm without an API call. The namespace's pods are listed
    (metadata only) when the watch is not in sync, and before any use is given back:
    every pod, not only those with the inject label, since a label can be taken off a
    running pod and its use must stay counted. The reservations annotation itself
    cannot be changed (the validating webhook refuses it).
    """
    window = dt.timedelta(seconds=memo.config.reservation_window_seconds)
    watched: SeenUses | None = memo.get("seen_uses")
    at = now()
    listed: set[str] | None = None
    if watched is None or not watched.synced:
        listed = await _carried(memo, namespace, name)
    # The watch, resumed, replays what happened meanwhile (a pod deleted already): while
    # it is out of sync a use no pod carries now stays pending, up to HOLD_WINDOWS
    # windows; out of sync longer, it is given back as without a watch.
    holding = watched is not None and (
        not watched.synced and watched.out_of_sync_for() < HOLD_WINDOWS * window.total_seconds()
    )
    for _ in range(SETTLE_ATTEMPTS):
        if grant is None:
            grant = await memo.kube.read_grant(namespace, name)
            if grant is None:
                return
        status = grant.get("status") or {}
        seen = (listed or set()) | (watched.seen(namespace, name) if watched else set())
        if listed is None and unclaimed(status, seen, window=window, at=at):
            listed = await _carried(memo, namespace, name)  # a last look before giving back
            seen |= listed
        updated = settle(
            status,
            seen,
            window=window,
            generation=(grant.get("metadata") or {}).get("generation"),
            at=at,
            give_back=not holding,
        )
        if updated is None:
            return
        if await memo.kube.replace_grant_status(namespace, {**grant, "status": updated}) is None:
            grant = None  # written meanwhile: read it again
            continue
        if watched is not None:
            watched.forget(namespace, name, _pending(status) - _pending(updated))
        released = int(status.get("usesConsumed") or 0) - int(updated.get("usesConsumed") or 0)
        if released > 0 and watched is not None and not watched.synced:
            log.warning(
                "the pod watch has been out of sync for %.0f s: %d use(s) of %s/%s that no "
                "pod carries now are given back without it",
                watched.out_of_sync_for(),
                released,
                namespace,
                name,
            )
        if released > 0:
            await memo.audit.record(
                type=EventType.USE_RELEASED,
                effect=Effect.PERMIT,
                reason="NoPodCreated",
                message=f"{released} use(s) given back: no created pod claimed them",
                **audit_fields(namespace, name, updated, grant.get("spec")),
            )
        return


async def _carried(memo: kopf.Memo, namespace: str, name: str) -> set[str]:
    """The reservations of ``name`` that the namespace's pods carry now (one list)."""
    return reservation_ids(await memo.kube.list_pod_annotations(namespace), name)


def _pending(status: Mapping[str, Any]) -> set[str]:
    return {str(r.get("id")) for r in status.get("reservations") or []}
