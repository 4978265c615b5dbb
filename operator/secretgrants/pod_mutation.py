"""The mutating webhook: check each grant a pod names, count one use of each, inject the volumes.

A use is counted by a compare-and-swap on the grant's status, serialised per
grant in this process; a use counted for a pod the request then refuses is
given back. An exhausted or expired grant whose renewal is on is renewed first,
at the point of use. The checks are ``admission``'s and the patch is
``injection``'s; this module reads, retries and audits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Mapping
from typing import Any, Final

from secretgrants.admission import (
    DRY_RUN_RESERVATION,
    AdmissionDenied,
    admits,
    check_grant_for_pod,
    metered,
    new_reservation_id,
    pod_service_account,
    requested_grants,
    service_account_replaced,
)
from secretgrants.api.common import now
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import EventType
from secretgrants.injection import GrantMount, grant_mount, injection_patch
from secretgrants.pod_admission_base import PodAdmissionBase
from secretgrants.uses import release, reserve

__all__ = ["PodMutation"]

log = logging.getLogger("secretgrants.webhook")

MAX_CAS_ATTEMPTS = 60

# Refusals that a fresh PDP decision can lift (when the grant's renewal is on).
RENEWABLE_REFUSALS: Final = frozenset({"UsesExhausted", "GrantExpired"})


class PodMutation(PodAdmissionBase):
    """``/mutate-pods``: the patch that mounts a pod's grants, one use of each counted."""

    async def mutate(
        self,
        pod: Mapping[str, Any],
        namespace: str,
        *,
        dry_run: bool,
        correlation_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The JSON patch that mounts the pod's grants, one use of each counted.

        Every admission and refusal is audited (with the AdmissionReview uid as its
        correlation id), except dry runs: they have no side effects, audit included.
        """
        grants: dict[str, dict[str, Any]] = {}
        try:
            patch = await self._mutate(
                pod, namespace, grants, dry_run=dry_run, correlation_id=correlation_id
            )
        except AdmissionDenied as denied:
            if not dry_run:
                await self._audit_denied(denied, namespace, pod, grants, correlation_id)
            raise
        if not dry_run:
            for name, grant in grants.items():
                await self._audit_pod(
                    EventType.POD_ADMITTED,
                    AuditEffect.PERMIT,
                    "Admitted",
                    namespace,
                    pod,
                    name,
                    self.reads.get(namespace, name) or grant,
                    correlation_id,
                )
        return patch

    async def _mutate(
        self,
        pod: Mapping[str, Any],
        namespace: str,
        grants: dict[str, dict[str, Any]],
        *,
        dry_run: bool,
        correlation_id: str | None,
    ) -> list[dict[str, Any]]:
        names = requested_grants(pod)
        service_account = pod_service_account(pod)
        uid = self._known_uid(namespace, service_account)
        at = now()
        mounts: list[GrantMount] = []
        for name in names:
            grant = await self._checked_read(namespace, name, service_account, at, uid)
            if not dry_run:
                grant = await self._renewed_if_due(namespace, name, grant, service_account, at, uid)
            if grant is not None:
                grants[name] = grant
            try:
                check_grant_for_pod(name, grant, service_account, at, service_account_uid=uid)
            except AdmissionDenied as denied:
                denied.grant = name
                raise
            assert grant is not None
            mounts.append(grant_mount(name, grant, self.audience))
        # Shape errors (volume or container conflicts) refuse the pod before any use is counted.
        injection_patch(pod, mounts, {})
        if dry_run:
            return injection_patch(pod, mounts, dict.fromkeys(names, DRY_RUN_RESERVATION))
        reserved: dict[str, str] = {}
        injected: dict[str, str] = {}
        try:
            for name in names:
                rid = new_reservation_id()
                injected[name] = rid
                if not metered(grants[name]):
                    continue  # no use limit: nothing to count, no write (the pod is audited)
                await self._reserve(namespace, name, rid, service_account, correlation_id)
                reserved[name] = rid
                if self.expectations is not None:  # before the pod exists: the watch records it
                    self.expectations.expect(namespace, name, rid)
        except BaseException:
            if self.expectations is not None:
                for name, rid in reserved.items():
                    self.expectations.forget(namespace, name, {rid})
            await asyncio.shield(self._release_all(namespace, reserved))
            raise
        return injection_patch(pod, mounts, injected)

    async def _checked_read(
        self,
        namespace: str,
        name: str,
        service_account: str,
        at: dt.datetime,
        uid: str | None = None,
    ) -> dict[str, Any] | None:
        """The kept copy when it admits the pod; otherwise what the API says now."""
        kept = self.reads.get(namespace, name)
        if kept is not None and admits(name, kept, service_account, at, service_account_uid=uid):
            return kept
        return await self._read(namespace, name)

    async def _renewed_if_due(
        self,
        namespace: str,
        name: str,
        grant: dict[str, Any] | None,
        service_account: str,
        at: dt.datetime,
        uid: str | None = None,
    ) -> dict[str, Any] | None:
        """The grant, renewed first when it is exhausted or expired and asks for renewal.

        "Expired or exhausted grants force a fresh PDP check" (the seeds): a pod of the
        bound ServiceAccount that finds its grant used up gets a new decision right
        now, instead of a refusal while the renewal waits for its turn. Any other
        refusal (another ServiceAccount or one re-created since, not Granted, ...)
        never asks the PDP.
        """
        if self.renew is None or grant is None or service_account_replaced(grant, uid):
            return grant
        try:
            check_grant_for_pod(name, grant, service_account, at)
            return grant
        except AdmissionDenied as denied:
            if denied.reason not in RENEWABLE_REFUSALS:
                return grant
        status = grant.get("status") or {}
        if not ((grant.get("spec") or {}).get("renewal") or {}).get("enabled"):
            return grant
        if (status.get("binding") or {}).get("serviceAccountName") != service_account:
            return grant
        if not await self.renew(namespace, name):
            return grant
        return await self._read(namespace, name)  # start from the renewed object

    async def _reserve(
        self,
        namespace: str,
        name: str,
        rid: str,
        service_account: str,
        correlation_id: str | None = None,
    ) -> None:
        """Count one use: compare-and-swap on the grant's status.

        Admissions of one grant are serialised in this process (a lock per grant), and
        each starts from the object our last write returned, so concurrent pods do not
        storm the apiserver with conflicting writes; a 409 (another writer) re-reads.
        """
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            grant = self.reads.get(namespace, name)
            cached = grant is not None
            for attempt in range(MAX_CAS_ATTEMPTS):
                if grant is None:
                    grant = await self._read(namespace, name)
                try:
                    check_grant_for_pod(name, grant, service_account, now())
                except AdmissionDenied:
                    if not cached:
                        raise
                    # The object our last write returned may be stale (a renewal or the
                    # use settling wrote since): refuse only on what the apiserver says now.
                    grant, cached = None, False
                    continue
                cached = False
                assert grant is not None
                meta = grant.get("metadata") or {}
                status = reserve(grant.get("status") or {}, rid, generation=meta.get("generation"))
                written = await self.store.replace_grant_status(
                    namespace, {**grant, "status": status}
                )
                if written is not None:
                    self.reads.put(namespace, name, written)
                    break
                self.reads.forget(namespace, name)
                grant = None
                await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))  # noqa: S311
            else:
                raise AdmissionDenied(
                    "TooManyConcurrentUses",
                    f"SecretGrantRequest {name!r} is being used by too many pods at once; retry",
                    code=429,
                )
        await self.auditor.record(
            type=EventType.USE_RESERVED,
            effect=AuditEffect.PERMIT,
            reason="Reserved",
            grant_namespace=namespace,
            grant_name=name,
            tenant=status.get("tenant"),
            purpose=(grant.get("spec") or {}).get("purpose", "read"),
            resource_ref=status.get("resourceRef"),
            decision_id=(status.get("decision") or {}).get("id"),
            correlation_id=correlation_id,
            subject=f"system:serviceaccount:{namespace}:{service_account}",
        )

    async def _release_all(self, namespace: str, reserved: Mapping[str, str]) -> None:
        for name, rid in reserved.items():
            try:
                await self.release(namespace, name, {rid})
            except Exception:
                log.exception("could not give back a use of grant %s/%s", namespace, name)

    async def release(self, namespace: str, name: str, rids: set[str]) -> None:
        for _ in range(MAX_CAS_ATTEMPTS):
            grant = await self.store.read_grant(namespace, name)
            if grant is None:
                return
            meta = grant.get("metadata") or {}
            status = release(grant.get("status") or {}, rids, generation=meta.get("generation"))
            if status == (grant.get("status") or {}):
                return
            if await self.store.replace_grant_status(namespace, {**grant, "status": status}):
                return
        raise RuntimeError(f"could not release uses of {namespace}/{name}: too many conflicts")
