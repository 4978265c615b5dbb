"""A live grant's life after it was granted: binding and guard re-checks, renewal, expiry.

``Tending`` keeps what the scheduler needs of each live grant in memory (its
ServiceAccount binding and the few spec fields the tenant guard reads), turns watch
events into deadlines (``grants.next_deadline``), and, when a grant is due, reads it
fresh and acts: a broken binding or a failing guard revokes, a passed ``expiresAt``
expires, a due renewal asks the PDP again. Every action is safe to re-run: a Secret
is blanked before the status says so, and a grant that is no longer live is left alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import kopf

from secretgrants import tracing
from secretgrants.admission import LABEL_INJECT, reservation_ids
from secretgrants.api.common import now
from secretgrants.api.grant import SecretGrantRequestSpec, WorkloadRef
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import EventType, correlated
from secretgrants.delivery import ANNOTATION_STATE, delivery_secret_name
from secretgrants.errors import SecretGrantsError
from secretgrants.grants import (
    LIVE_PHASES,
    GuardOutcome,
    Target,
    check_request,
    check_target,
    expired_status,
    expires_at,
    next_deadline,
    renewal_due,
    revoked_status,
)
from secretgrants.metrics import Metrics
from secretgrants.reasons import Phase
from secretgrants.restarts import RestartLimiter, restart_patch
from secretgrants.schedule import Key
from secretgrants.scheduler import Scheduler
from secretgrants.uses import settle

__all__ = ["Outcome", "Tending", "audit_fields", "end_grant", "renew_now", "secret_of", "subject"]

log = logging.getLogger("secretgrants")

RENEWED_LOOK_AGAIN_SECONDS = 1.0  # after a renewal, read the grant again this soon


@dataclass
class Outcome:
    """What one authorize-and-deliver pass wants written, and whether to try again."""

    status: dict[str, Any]
    retry_reason: str | None = None
    permitted: bool = False


class Authorize(Protocol):
    """The handlers' authorize-and-deliver pass (PDP decision, provider read, Secret)."""

    async def __call__(
        self,
        memo: kopf.Memo,
        parsed: SecretGrantRequestSpec,
        outcome: GuardOutcome,
        *,
        namespace: str,
        name: str,
        uid: str,
        generation: int | None,
        status: dict[str, Any],
    ) -> Outcome: ...


SETTLE_INTERVAL_SECONDS = 2.0  # how often reserved uses are confirmed or given back


async def settle_uses(memo: kopf.Memo, namespace: str, name: str) -> None:
    """Confirm uses that created pods carry; give back those no pod claimed in time."""
    window = dt.timedelta(seconds=memo.config.reservation_window_seconds)
    pods = await memo.kube.list_pod_annotations(namespace, f"{LABEL_INJECT}=true")
    seen = reservation_ids(pods, name)
    for _ in range(5):
        grant = await memo.kube.read_grant(namespace, name)
        if grant is None:
            return
        updated = settle(
            grant.get("status") or {},
            seen,
            window=window,
            generation=(grant.get("metadata") or {}).get("generation"),
        )
        if updated is None:
            return
        if (
            await memo.kube.replace_grant_status(namespace, {**grant, "status": updated})
            is not None
        ):
            before = int((grant.get("status") or {}).get("usesConsumed") or 0)
            released = before - int(updated.get("usesConsumed") or 0)
            if released > 0:
                await memo.audit.record(
                    type=EventType.USE_RELEASED,
                    effect=AuditEffect.PERMIT,
                    reason="NoPodCreated",
                    message=f"{released} use(s) given back: no created pod claimed them",
                    **audit_fields(namespace, name, updated, grant.get("spec")),
                )
            return


class Tended(NamedTuple):
    """All that is kept in memory per live grant (not its body)."""

    service_account: str | None
    service_account_uid: str | None
    target: Target | None  # None when the spec does not parse: the fresh read decides


class Tending:
    """The live grants, their deadlines, and what is done when one is due."""

    def __init__(
        self,
        memo: kopf.Memo,
        indexes: Mapping[str, Any],
        authorize: Authorize,
        *,
        recheck_interval: float,
        concurrency: int = 16,
    ) -> None:
        self._memo = memo
        self._indexes = indexes
        self._authorize = authorize
        self._live: dict[Key, Tended] = {}
        self._given_up: dict[Key, str] = {}  # expiresAt for which a renewal was refused
        self._settled: dict[Key, float] = {}  # last look at a grant's reserved uses (epoch)
        self.scheduler = Scheduler(
            self.tend, sweep=self.sweep, sweep_interval=recheck_interval, concurrency=concurrency
        )

    def __len__(self) -> int:
        return len(self._live)

    def observe(
        self,
        type_: str | None,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        """A watch event (or the initial listing): schedule a live grant, forget the rest."""
        key = (namespace, name)
        if type_ == "DELETED" or status.get("phase") not in LIVE_PHASES:
            self._live.pop(key, None)
            self._given_up.pop(key, None)
            self._settled.pop(key, None)
            self.scheduler.forget(key)
            return
        binding = status.get("binding") or {}
        tended = Tended(
            binding.get("serviceAccountName"), binding.get("serviceAccountUID"), _target(spec)
        )
        self._live[key] = tended
        clock = time.time()
        if self._binding_broken(namespace, tended) is not None:
            self.scheduler.schedule(key, clock)
            return
        at = self._next(key, spec, status, clock)
        if at is None:
            self.scheduler.forget(key)
        else:
            self.scheduler.schedule(key, at)

    def _next(
        self, key: Key, spec: Mapping[str, Any], status: Mapping[str, Any], clock: float
    ) -> float | None:
        """The grant's next deadline (epoch seconds): renewal, expiry, or settling its uses."""
        at = next_deadline(spec, status, now=_at(clock), given_up_for=self._given_up.get(key))
        deadline = at.timestamp() if at is not None else None
        settle = self._settle_at(key, status)
        if settle is not None and (deadline is None or settle < deadline):
            return settle
        return deadline

    def _settle_at(self, key: Key, status: Mapping[str, Any]) -> float | None:
        """Uses reserved by the webhook are settled (confirmed or given back) every
        ``SETTLE_INTERVAL_SECONDS`` from the oldest, or from the last look at them."""
        reserved = [r.get("reservedAt") for r in status.get("reservations") or []]
        stamps = [_epoch(r) for r in reserved if r]
        if not stamps:
            self._settled.pop(key, None)
            return None
        return max(min(stamps), self._settled.get(key, 0.0)) + SETTLE_INTERVAL_SECONDS

    def sweep(self) -> list[Key]:
        """The live grants whose binding or tenant guard fails now (in memory, no API call)."""
        labels_index = self._indexes["namespace_labels"]
        tenants = list(self._indexes["tenant_sources"].get("all", []))
        fallback = self._memo.fallback
        verdicts: dict[tuple[str, Target], bool] = {}  # grants share targets: check each once
        due: list[Key] = []
        for key, tended in self._live.items():
            namespace = key[0]
            if self._binding_broken(namespace, tended) is not None:
                due.append(key)
                continue
            if tended.target is None:
                continue
            seen = (namespace, tended.target)
            if seen not in verdicts:
                labels: dict[str, str] = next(iter(labels_index.get(namespace, [])), {})
                try:
                    check_target(tended.target, namespace, labels, tenants, fallback)
                    verdicts[seen] = True
                except SecretGrantsError:
                    verdicts[seen] = False
            if not verdicts[seen]:
                due.append(key)
        return due

    async def tend(self, key: Key) -> float | None:
        """Act on one due grant, read fresh; its next deadline (epoch seconds) or None."""
        with correlated():  # one unit of work: its audit events share a correlation id
            return await self._tend(key)

    async def _tend(self, key: Key) -> float | None:
        namespace, name = key
        memo = self._memo
        raw = await memo.kube.read_grant(namespace, name)
        if raw is None:
            return None
        body = kopf.Body(raw)
        status = dict(raw.get("status") or {})
        if status.get("phase") not in LIVE_PHASES:
            return None
        generation = (raw.get("metadata") or {}).get("generation")
        binding = status.get("binding") or {}
        broken = self._binding_broken(
            namespace,
            Tended(binding.get("serviceAccountName"), binding.get("serviceAccountUID"), None),
        )
        if broken:
            ending = revoked_status(broken, generation=generation, status=status)
            await end_grant(
                memo, namespace, name, status, ending, "ServiceAccountChanged", raw.get("spec")
            )
            return None
        guard_error = _guard_error(memo, body, namespace, self._indexes)
        if guard_error is not None:  # a SecretTenant changed under a live grant
            ending = revoked_status(
                f"the tenant guard no longer allows this grant: {guard_error}",
                generation=generation,
                status=status,
            )
            await end_grant(memo, namespace, name, status, ending, "TenantGuard", raw.get("spec"))
            return None
        current = now()
        at = expires_at(status)
        if at is not None and at <= current:
            ending = expired_status(generation=generation, status=status)
            await end_grant(memo, namespace, name, status, ending, "Expired", raw.get("spec"))
            return None
        spec = dict(raw.get("spec") or {})
        if status.get("reservations"):
            self._settled[key] = time.time()
            with tracing.span(
                tracing.SPAN_GRANT, grant_namespace=namespace, grant_name=name, trigger="settle"
            ):
                await settle_uses(memo, namespace, name)  # a change comes back by the watch
        given_up = self._given_up.get(key)
        if renewal_due(spec, status, now=current, given_up_for=given_up):
            uid = str((raw.get("metadata") or {}).get("uid") or "")
            locks: dict[Key, asyncio.Lock] = memo.setdefault("renew_locks", {})  # with admission
            async with locks.setdefault(key, asyncio.Lock()):
                renewed = await _renew(
                    memo, body, namespace, name, uid, self._indexes, self._authorize
                )
            if renewed:
                return time.time() + RENEWED_LOOK_AGAIN_SECONDS  # the watch brings the rest
            given_up = self._given_up[key] = str(status.get("expiresAt"))
        return self._next(key, spec, status, time.time())

    def _binding_broken(self, namespace: str, tended: Tended) -> str | None:
        """Why the bound ServiceAccount no longer holds the grant, or None (from the SA index)."""
        sa_name = tended.service_account
        if not sa_name:
            return None
        index = self._indexes["service_accounts"]
        current = next(iter(index.get((namespace, sa_name), [])), None)
        if current is None:
            return f"ServiceAccount {sa_name!r} was deleted; the grant is revoked"
        if current != tended.service_account_uid:
            return (  # a new UID means a delete and a create: either message holds
                f"ServiceAccount {sa_name!r} was deleted and recreated (its UID changed); "
                "the grant is revoked"
            )
        return None


def _target(spec: Mapping[str, Any]) -> Target | None:
    try:
        return Target.of(SecretGrantRequestSpec.model_validate(dict(spec)))
    except ValueError:
        return None


def _at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def secret_of(name: str, status: Mapping[str, Any]) -> str:
    return (status.get("delivery") or {}).get("secretName") or delivery_secret_name(name)


def subject(namespace: str, service_account: object) -> str | None:
    if not service_account:
        return None
    return f"system:serviceaccount:{namespace}:{service_account}"


def audit_fields(
    namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The audit fields of a grant from its status and spec (never its URI)."""
    spec = spec or {}
    binding = status.get("binding") or {}
    return {
        "grant_namespace": namespace,
        "grant_name": name,
        "subject": subject(
            namespace, binding.get("serviceAccountName") or spec.get("serviceAccountName")
        ),
        "tenant": status.get("tenant"),
        "purpose": spec.get("purpose", "read"),
        "resource_ref": status.get("resourceRef"),
        "decision_id": (status.get("decision") or {}).get("id"),
    }


async def end_grant(
    memo: kopf.Memo,
    namespace: str,
    name: str,
    status: dict[str, Any],
    ending: dict[str, Any],
    cause: str,
    spec: Mapping[str, Any] | None = None,
) -> None:
    """Blank the delivery Secret first (kubelets keep a deleted Secret's last content), then
    record the ending, then write the ending status (a re-run records it again)."""
    trigger = "expire" if ending["phase"] == Phase.EXPIRED.value else "revoke"
    with tracing.span(
        tracing.SPAN_GRANT, grant_namespace=namespace, grant_name=name, trigger=trigger
    ):
        state = str(ending["phase"]).lower()
        await memo.kube.blank_secret(namespace, secret_of(name, status), {ANNOTATION_STATE: state})
        metrics: Metrics = memo.metrics
        expired = ending["phase"] == Phase.EXPIRED.value
        if expired:
            metrics.expirations.inc()
        else:
            metrics.revocations.labels(cause).inc()
        await memo.audit.record(
            type=EventType.EXPIRED if expired else EventType.REVOKED,
            effect=AuditEffect.DENY,
            reason=cause,
            **audit_fields(namespace, name, status, spec),
        )
        log.info("grant %s/%s is %s; its delivery Secret was emptied", namespace, name, state)
        await memo.kube.patch_grant_status(namespace, name, ending)


def _guard_error(
    memo: kopf.Memo, body: kopf.Body, namespace: str, indexes: Mapping[str, Any]
) -> str | None:
    """The tenant guard again, from the in-memory indexes (no API call): why it fails, or None."""
    labels: dict[str, str] = next(iter(indexes["namespace_labels"].get(namespace, [])), {})
    try:
        parsed = SecretGrantRequestSpec.model_validate(dict(body.get("spec") or {}))
        check_request(
            parsed, namespace, labels, list(indexes["tenant_sources"].get("all", [])), memo.fallback
        )
    except SecretGrantsError as err:
        return err.message
    return None


async def _renew(
    memo: kopf.Memo,
    body: kopf.Body,
    namespace: str,
    name: str,
    uid: str,
    indexes: Mapping[str, Any],
    authorize: Authorize,
) -> bool:
    """Ask the PDP again and deliver the current value; True when the grant was renewed."""
    status = dict(body.get("status") or {})
    generation = (body.get("metadata") or {}).get("generation")
    labels: dict[str, str] = next(iter(indexes["namespace_labels"].get(namespace, [])), {})
    try:
        parsed = SecretGrantRequestSpec.model_validate(dict(body.get("spec") or {}))
        outcome = check_request(
            parsed, namespace, labels, list(indexes["tenant_sources"].get("all", [])), memo.fallback
        )
    except SecretGrantsError as err:
        kopf.warn(body, reason="RenewalRefused", message=err.message)
        return False
    with tracing.span(
        tracing.SPAN_GRANT,
        grant_namespace=namespace,
        grant_name=name,
        trigger="renew",
        purpose=parsed.purpose.value,
        tenant=outcome.tenant.tenant_id,
    ) as grant_span:
        result = await authorize(
            memo,
            parsed,
            outcome,
            namespace=namespace,
            name=name,
            uid=uid,
            generation=generation,
            status=status,
        )
        grant_span.set(phase=result.status.get("phase"))
        if not result.permitted:
            kopf.warn(
                body,
                reason="RenewalDenied",
                message="renewal was not permitted; the grant expires at its expiresAt",
            )
            return False
        await memo.kube.patch_grant_status(namespace, name, result.status)
        kopf.info(body, reason="Renewed", message="the PDP permitted a renewal; value re-delivered")
        log.info("grant %s/%s renewed", namespace, name)
        memo.metrics.renewals.inc()
        await memo.audit.record(
            type=EventType.RENEWED,
            effect=AuditEffect.PERMIT,
            reason="Renewed",
            grant_uid=uid,
            **audit_fields(namespace, name, result.status, body.get("spec")),
        )
    if parsed.renewal and parsed.renewal.restart_workloads:
        await _restart_workloads(memo, body, namespace, parsed.renewal.restart_workloads)
    return True


async def _restart_workloads(
    memo: kopf.Memo, body: kopf.Body, namespace: str, workloads: list[WorkloadRef]
) -> None:
    """Roll the named workloads so their pods mount the new value (rate-limited)."""
    limiter: RestartLimiter = memo.restarts
    for ref in workloads:
        if not limiter.allow(namespace, ref.kind, ref.name):
            kopf.warn(
                body,
                reason="RestartSkipped",
                message=f"{ref.kind} {ref.name} was restarted recently; not again yet",
            )
            continue
        found = await memo.kube.patch_workload(namespace, ref.kind, ref.name, restart_patch(now()))
        if found:
            kopf.info(body, reason="Restarted", message=f"rollout restart of {ref.kind} {ref.name}")
        else:
            kopf.warn(body, reason="RestartFailed", message=f"{ref.kind} {ref.name} not found")


async def renew_now(memo: kopf.Memo, namespace: str, name: str, authorize: Authorize) -> bool:
    """Renew at the point of use (pod admission): one renewal per grant at a time.

    Re-reads the grant under the lock, so a renewal that another admission (or the
    scheduler) finished meanwhile is reused instead of asking the PDP twice.
    """
    locks: dict[tuple[str, str], asyncio.Lock] = memo.setdefault("renew_locks", {})
    async with locks.setdefault((namespace, name), asyncio.Lock()):
        grant = await memo.kube.read_grant(namespace, name)
        if grant is None:
            return False
        status = grant.get("status") or {}
        at = expires_at(status)
        remaining = status.get("usesRemaining")
        fresh = (
            status.get("phase") == Phase.GRANTED.value
            and (at is None or at > now())
            and (remaining is None or int(remaining) > 0)
        )
        if fresh:
            return True
        with correlated():
            return await _renew(
                memo,
                kopf.Body(grant),
                namespace,
                name,
                str((grant.get("metadata") or {}).get("uid") or ""),
                memo.indexes,
                authorize,
            )
