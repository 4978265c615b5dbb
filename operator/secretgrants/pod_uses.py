"""Counted uses confirmed by watching pods: a pod that existed, even for a moment, keeps its use.

The mutating webhook reserves a use in the grant's status and writes the reservation id
in the pod's ``secretgrants.io/reservations`` annotation (``admission``); settling
(``uses.settle``) confirms a reservation a created pod carries and gives back one that
no pod carried within the window (a later admission step refused the pod). Looking for
pods only when settling (a list every 2 s) missed a pod deleted in between, and gave
its use back. So one watch of the pods with the inject label (the mutating webhook's
objectSelector; the validating webhook requires it on a pod with reservations) records
every reservation id it sees on a created pod (:class:`SeenUses`, in memory, bounded),
and settling confirms from that record, with no API list per look. Before a use is
given back, the namespace's pods (all of them: a label can be taken off) are still
listed once, for what the watch missed (pods created and gone while it relisted after
a 410 Gone). While the watch is not in sync, settling lists every time.
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

from secretgrants.admission import LABEL_INJECT, pod_reservations, reservation_ids
from secretgrants.api.common import now
from secretgrants.audit import Effect, EventType, audit_fields
from secretgrants.kube import KubeAPIError, WatchEvent
from secretgrants.metrics import Metrics
from secretgrants.tasks import cancel_and_wait
from secretgrants.uses import settle, unclaimed

__all__ = ["KEEP_WINDOWS", "SELECTOR", "PodWatch", "SeenUses", "settle_uses"]

log = logging.getLogger("secretgrants.pod_uses")

SELECTOR: Final = f"{LABEL_INJECT}=true"  # the pods the mutating webhook sees
KEEP_WINDOWS: Final = 4  # a seen id is forgotten this many reservation windows after
WATCH_SECONDS: Final = 300  # the apiserver ends each watch request after this long
BACKOFF_SECONDS: Final = 1.0  # after a failed list or watch: 1, 2, 4 .. s
MAX_BACKOFF_SECONDS: Final = 60.0
SETTLE_ATTEMPTS: Final = 5  # compare-and-swap attempts of one settling


class SeenUses:
    """The reservation ids seen on created pods, per grant (namespace, name).

    ``synced``: the watch has listed the pods and is watching them, so an id a pod
    carries is here (or soon will be); while False, settling lists pods as before.
    An id is forgotten once its reservation is settled, or ``keep_seconds`` after it
    was first seen (a pod event after settling records it again, for that long).
    """

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self.synced = False
        self._ids: dict[tuple[str, str], dict[str, float]] = {}
        self._pruned_at: float | None = None

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def record(self, metadata: Mapping[str, Any], at: float) -> None:
        """A created pod's metadata (``at``: a monotonic clock): its reservations were made."""
        namespace = str(metadata.get("namespace") or "")
        for grant, rid in pod_reservations({"metadata": metadata}).items():
            if rid:
                self._ids.setdefault((namespace, grant), {}).setdefault(rid, at)
        if self._pruned_at is None or at - self._pruned_at >= self.keep_seconds / 4:
            self.prune(at)

    def seen(self, namespace: str, grant: str) -> set[str]:
        return set(self._ids.get((namespace, grant), ()))

    def forget(self, namespace: str, grant: str, ids: Iterable[str]) -> None:
        """Settled reservations: no longer needed."""
        found = self._ids.get((namespace, grant))
        if found is None:
            return
        for rid in ids:
            found.pop(rid, None)
        if not found:
            del self._ids[(namespace, grant)]

    def prune(self, at: float) -> None:
        """Forget ids first seen ``keep_seconds`` or longer before ``at``."""
        self._pruned_at = at
        cutoff = at - self.keep_seconds
        for key, ids in list(self._ids.items()):
            kept = {rid: seen for rid, seen in ids.items() if seen > cutoff}
            if not kept:
                del self._ids[key]
            elif len(kept) < len(ids):
                self._ids[key] = kept


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
        )
        if updated is None:
            return
        if await memo.kube.replace_grant_status(namespace, {**grant, "status": updated}) is None:
            grant = None  # written meanwhile: read it again
            continue
        if watched is not None:
            watched.forget(namespace, name, _pending(status) - _pending(updated))
        released = int(status.get("usesConsumed") or 0) - int(updated.get("usesConsumed") or 0)
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
