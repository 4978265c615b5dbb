"""A live grant's life after it was granted: binding and guard re-checks, renewal, expiry.

``Tending`` keeps what the scheduler needs of each live grant in memory (its
ServiceAccount binding and the few spec fields the tenant guard reads), turns watch
events into deadlines (``grants.next_deadline``), and, when a grant is due, takes its
lock (``serial``), reads it fresh and acts: a broken binding or a failing guard revokes,
a passed ``expiresAt`` expires, a due renewal asks the PDP again. Every action is safe
to re-run: a Secret is blanked before the status says so, the status is written by
compare-and-swap, and a grant that is no longer live is left alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, Protocol, cast

import kopf

from secretgrants import tracing
from secretgrants.api.common import now
from secretgrants.api.grant import SecretGrantRequestSpec, WorkloadRef
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import EventType, audit_fields, correlated
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
from secretgrants.pod_uses import settle_uses
from secretgrants.reasons import Phase
from secretgrants.restarts import RestartLimiter, restart_patch
from secretgrants.schedule import Key
from secretgrants.scheduler import Scheduler
from secretgrants.serial import RENEWABLE_PHASES, merge_patch, must_blank, renewal_blocked

__all__ = [
    "DeliverIf",
    "Ending",
    "Outcome",
    "Tending",
    "end_grant",
    "expiring",
    "renew_now",
    "replace_status",
    "revoking",
    "secret_of",
]

log = logging.getLogger("secretgrants")

RENEWED_LOOK_AGAIN_SECONDS = 1.0  # after a renewal, read the grant again this soon
RENEWAL_RETRY_SECONDS = 5.0  # after a renewal that could not be decided: 5, 10, 20 .. s
RENEWAL_RETRY_MAX_SECONDS = 60.0


class Renewal(Enum):
    """How a renewal ended."""

    RENEWED = "renewed"
    REFUSED = "refused"  # the PDP said no, or the grant changed: not asked again this TTL
    RETRY = "retry"  # the PDP or the store could not answer: asked again, until expiresAt


MAX_WRITE_ATTEMPTS = 10  # compare-and-swap attempts of one status write

# Asked just before a value is written to the delivery Secret: False gives the pass up.
DeliverIf = Callable[[], Awaitable[bool]]
# The status an ending writes, from the grant it ends (read fresh for every attempt).
Ending = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass
class Outcome:
    """What one authorize-and-deliver pass wants written, and whether to try again.

    ``superseded``: ``deliver_if`` said no (the grant changed meanwhile); nothing was
    delivered and nothing is to be written.
    """

    status: dict[str, Any]
    retry_reason: str | None = None
    permitted: bool = False
    superseded: bool = False


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
        deliver_if: DeliverIf | None = None,
    ) -> Outcome: ...


SETTLE_INTERVAL_SECONDS = 2.0  # how often reserved uses are confirmed or given back


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
        self._renew_failures: dict[Key, int] = {}  # renewals in a row that could not be decided
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
        """A watch event (or the initial listing): schedule a live grant, forget the rest;
        the pod watch expects the pending reservations of any grant (``pod_uses``)."""
        key = (namespace, name)
        expectations = self._memo.get("seen_uses")
        if expectations is not None:
            if type_ == "DELETED":
                expectations.gone(namespace, name)
            else:
                reservations = status.get("reservations") or []
                expectations.observe(namespace, name, [str(r.get("id")) for r in reservations])
        if type_ == "DELETED" or status.get("phase") not in LIVE_PHASES:
            self._live.pop(key, None)
            self._given_up.pop(key, None)
            self._renew_failures.pop(key, None)
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
        async with self._memo.grant_locks.hold(namespace, name):  # one writer at a time
            raw = await self._memo.kube.read_grant(namespace, name)
            if raw is None:
                return None
            return await self._act(key, raw)

    async def _act(self, key: Key, raw: dict[str, Any]) -> float | None:
        """What is due for the grant ``raw`` (read under its lock), done."""
        namespace, name = key
        memo = self._memo
        body = _body(raw)
        status = dict(raw.get("status") or {})
        if status.get("phase") not in LIVE_PHASES:
            return None
        binding = status.get("binding") or {}
        broken = self._binding_broken(
            namespace,
            Tended(binding.get("serviceAccountName"), binding.get("serviceAccountUID"), None),
        )
        if broken:
            await end_grant(memo, namespace, name, raw, revoking(broken), "ServiceAccountChanged")
            return None
        guard_error = _guard_error(memo, body, namespace, self._indexes)
        if guard_error is not None:  # a SecretTenant changed under a live grant
            message = f"the tenant guard no longer allows this grant: {guard_error}"
            await end_grant(memo, namespace, name, raw, revoking(message), "TenantGuard")
            return None
        current = now()
        at = expires_at(status)
        if at is not None and at <= current:
            await end_grant(memo, namespace, name, raw, expiring, "Expired")
            return None
        spec = dict(raw.get("spec") or {})
        if status.get("reservations"):
            self._settled[key] = time.time()
            with tracing.span(
                tracing.SPAN_GRANT, grant_namespace=namespace, grant_name=name, trigger="settle"
            ):
                await settle_uses(memo, namespace, name, raw)  # a change comes back by the watch
        given_up = self._given_up.get(key)
        if renewal_due(spec, status, now=current, given_up_for=given_up):
            renewal = await _renew(memo, raw, self._indexes, self._authorize, phases=LIVE_PHASES)
            if renewal is Renewal.RENEWED:
                self._renew_failures.pop(key, None)
                return time.time() + RENEWED_LOOK_AGAIN_SECONDS  # the watch brings the rest
            if renewal is Renewal.RETRY:
                return self._retry_renewal(key, status)
            self._renew_failures.pop(key, None)
            self._given_up[key] = str(status.get("expiresAt"))
        return self._next(key, spec, status, time.time())

    def _retry_renewal(self, key: Key, status: Mapping[str, Any]) -> float:
        """When to ask again after a renewal the PDP or the store could not answer: with
        backoff, and never after ``expiresAt`` (then the grant expires as it would have)."""
        failures = self._renew_failures[key] = self._renew_failures.get(key, 0) + 1
        backoff = RENEWAL_RETRY_SECONDS * float(2 ** min(failures - 1, 8))
        delay = min(RENEWAL_RETRY_MAX_SECONDS, backoff)
        at = time.time() + delay
        expiry = expires_at(status)
        return min(at, expiry.timestamp()) if expiry is not None else at

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


def _body(grant: dict[str, Any]) -> kopf.Body:
    """The grant as kopf sees it (for its Events)."""
    return kopf.Body(cast(kopf.RawBody, grant))


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


def _generation(grant: Mapping[str, Any]) -> int | None:
    generation = (grant.get("metadata") or {}).get("generation")
    return int(generation) if generation is not None else None


def expiring(grant: Mapping[str, Any]) -> dict[str, Any]:
    """The ending of a grant whose TTL ran out."""
    return expired_status(generation=_generation(grant), status=grant.get("status"))


def revoking(message: str) -> Ending:
    """The ending of a grant revoked for ``message``."""

    def ending(grant: Mapping[str, Any]) -> dict[str, Any]:
        return revoked_status(message, generation=_generation(grant), status=grant.get("status"))

    return ending


async def replace_status(
    memo: kopf.Memo,
    namespace: str,
    grant: dict[str, Any],
    patch: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    *,
    still: Callable[[dict[str, Any]], bool],
) -> bool:
    """Write ``patch(grant)`` onto the grant's status at the resourceVersion it was read at.

    On a conflict (another write since the read) the grant is read again: while
    ``still(fresh)`` holds, the patch is written onto the fresh status; once it does
    not, or the grant is gone, nothing is written (False). Never a blind overwrite.
    """
    name = str((grant.get("metadata") or {}).get("name") or "")
    for _ in range(MAX_WRITE_ATTEMPTS):
        status = merge_patch(grant.get("status") or {}, patch(grant))
        if await memo.kube.replace_grant_status(namespace, {**grant, "status": status}) is not None:
            return True
        fresh = await memo.kube.read_grant(namespace, name)
        if fresh is None or not still(fresh):
            return False
        grant = fresh
    raise RuntimeError(
        f"could not write the status of grant {namespace}/{name}: too many conflicts"
    )


async def end_grant(
    memo: kopf.Memo,
    namespace: str,
    name: str,
    grant: dict[str, Any],
    ending: Ending,
    cause: str,
) -> bool:
    """Blank the delivery Secret first (kubelets keep a deleted Secret's last content), then
    record the ending, then write the ending status (a re-run records it again).

    The caller holds the grant's lock (``serial.GrantLocks``) and read ``grant`` under
    it. The status is written by compare-and-swap: after a conflicting write (a use
    counted, a spec edit) a grant still live gets the ending on its fresh status, and
    one no longer live is left as it is (its Secret is blank either way). True when
    the ending was written.
    """
    status = dict(grant.get("status") or {})
    phase = str(ending(grant)["phase"])
    expired = phase == Phase.EXPIRED.value
    with tracing.span(
        tracing.SPAN_GRANT,
        grant_namespace=namespace,
        grant_name=name,
        trigger="expire" if expired else "revoke",
    ):
        state = phase.lower()
        await memo.kube.blank_secret(namespace, secret_of(name, status), {ANNOTATION_STATE: state})
        metrics: Metrics = memo.metrics
        if expired:
            metrics.expirations.inc()
        else:
            metrics.revocations.labels(cause).inc()
        await memo.audit.record(
            type=EventType.EXPIRED if expired else EventType.REVOKED,
            effect=AuditEffect.DENY,
            reason=cause,
            **audit_fields(namespace, name, status, grant.get("spec")),
        )
        log.info("grant %s/%s is %s; its delivery Secret was emptied", namespace, name, state)
        return await replace_status(
            memo, namespace, grant, ending, still=lambda g: _phase(g) in LIVE_PHASES
        )


def _phase(grant: Mapping[str, Any]) -> str | None:
    phase = (grant.get("status") or {}).get("phase")
    return str(phase) if phase is not None else None


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
    grant: dict[str, Any],
    indexes: Mapping[str, Any],
    authorize: Authorize,
    *,
    phases: frozenset[str],
) -> Renewal:
    """Ask the PDP again and deliver the current value.

    The caller holds the grant's lock and read ``grant`` under it. The new value is
    delivered, and the status written (by compare-and-swap), only while the grant is
    still in one of ``phases`` at the spec generation this renewal decided on
    (``serial.renewal_blocked``): a spec edited meanwhile is the spec handler's to
    decide, and the renewal gives up. A value delivered for a grant that then turns out
    not to be live is taken back (``_blank_if_left_behind``).
    """
    meta = grant.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    uid = str(meta.get("uid") or "")
    body = _body(grant)
    status = dict(grant.get("status") or {})
    generation = meta.get("generation")
    blocked = renewal_blocked(grant, generation=generation, phases=phases)
    if blocked is not None:
        log.info("grant %s/%s is not renewed: %s", namespace, name, blocked)
        return Renewal.REFUSED
    labels: dict[str, str] = next(iter(indexes["namespace_labels"].get(namespace, [])), {})
    try:
        parsed = SecretGrantRequestSpec.model_validate(dict(body.get("spec") or {}))
        outcome = check_request(
            parsed, namespace, labels, list(indexes["tenant_sources"].get("all", [])), memo.fallback
        )
    except SecretGrantsError as err:
        kopf.warn(body, reason="RenewalRefused", message=err.message)
        return Renewal.REFUSED
    latest = grant  # the grant as last read: the status write starts from it
    delivered = False

    async def deliver_if() -> bool:
        nonlocal latest, delivered
        fresh = await memo.kube.read_grant(namespace, name)
        why = renewal_blocked(fresh, generation=generation, phases=phases)
        if fresh is None or why is not None:
            log.info("the renewal of grant %s/%s gave up: %s", namespace, name, why)
            return False
        latest, delivered = fresh, True
        return True

    def still(fresh: dict[str, Any]) -> bool:
        return renewal_blocked(fresh, generation=generation, phases=phases) is None

    with tracing.span(
        tracing.SPAN_GRANT,
        grant_namespace=namespace,
        grant_name=name,
        trigger="renew",
        purpose=parsed.purpose.value,
        tenant=outcome.tenant.tenant_id,
    ) as grant_span:
        try:
            result = await authorize(
                memo,
                parsed,
                outcome,
                namespace=namespace,
                name=name,
                uid=uid,
                generation=generation,
                status=status,
                deliver_if=deliver_if,
            )
            grant_span.set(phase=result.status.get("phase"))
            if result.superseded:
                return Renewal.REFUSED
            if not result.permitted:
                return _not_renewed(body, result)
            written = await replace_status(
                memo, namespace, latest, lambda _: result.status, still=still
            )
        except Exception:
            if delivered:
                await _blank_if_left_behind(memo, namespace, name, status)
            raise
        if not written:
            log.info("the renewal of grant %s/%s gave up: the grant changed", namespace, name)
            if delivered:
                await _blank_if_left_behind(memo, namespace, name, status)
            return Renewal.REFUSED
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
    return Renewal.RENEWED


def _not_renewed(body: kopf.Body, result: Outcome) -> Renewal:
    """Say on the grant why a renewal did not happen; RETRY when asking again may help."""
    conditions: list[Mapping[str, Any]] = result.status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    reason, message = str(ready.get("reason") or ""), str(ready.get("message") or "")
    if result.retry_reason:
        kopf.warn(
            body,
            reason="RenewalFailed",
            message=f"renewal could not be decided ({reason}: {message}); asking again "
            "until expiresAt",
        )
        return Renewal.RETRY
    if reason == "Denied":
        kopf.warn(
            body,
            reason="RenewalDenied",
            message="renewal was not permitted; the grant expires at its expiresAt",
        )
    else:
        kopf.warn(
            body,
            reason="RenewalFailed",
            message=f"renewal failed ({reason}: {message}); the grant expires at its expiresAt",
        )
    return Renewal.REFUSED


async def _blank_if_left_behind(
    memo: kopf.Memo, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """A renewal delivered a value but wrote no status: empty the Secret unless the grant
    is still live. When the grant cannot be read, a grant renewed from a phase that is
    not live (Expired) is taken to be in it still: its status write made it live."""
    try:
        blank = must_blank(await memo.kube.read_grant(namespace, name))
    except Exception:
        blank = status.get("phase") not in LIVE_PHASES
    if not blank:
        return
    try:
        await memo.kube.blank_secret(
            namespace, secret_of(name, status), {ANNOTATION_STATE: "withdrawn"}
        )
    except Exception:  # the caller's own error (if any) is the one raised
        log.exception("the delivery Secret of grant %s/%s could not be emptied", namespace, name)
    else:
        log.info("grant %s/%s: the value a renewal delivered was taken back", namespace, name)


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
    """Renew at the point of use (pod admission), as one of the grant's writers.

    Re-reads the grant under its lock, so a renewal that another admission (or the
    scheduler) finished meanwhile is reused instead of asking the PDP twice, and a grant
    revoked or decided again meanwhile is not renewed. An Expired grant is renewed too.
    """
    async with memo.grant_locks.hold(namespace, name):
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
            renewal = await _renew(memo, grant, memo.indexes, authorize, phases=RENEWABLE_PHASES)
            return renewal is Renewal.RENEWED
