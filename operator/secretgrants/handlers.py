"""The kopf registrations: thin handlers that read, call the pure logic, and write status.

Nothing is decided here: ``grants`` decides, ``tenancy`` resolves tenants,
``policy`` asks the PDP, ``providers`` read values, ``delivery`` shapes the
Secret, and ``kube`` writes it. This module only moves data between them.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from secretgrants import tracing
from secretgrants.api.common import GROUP, VERSION, ConditionStatus, set_condition
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import (
    EventType,
    audit_fields,
    correlated_handler,
)
from secretgrants.audit import subject as _subject
from secretgrants.delivery import ANNOTATION_STATE
from secretgrants.errors import SecretGrantsError
from secretgrants.grants import (
    LIVE_PHASES,
    check_request,
    failure_status,
    parse_conditions,
    settled,
)
from secretgrants.kube import login as kube_login
from secretgrants.lifecycle import (
    end_grant,
    revoking,
    secret_of,
)
from secretgrants.reasons import ConditionType, Phase
from secretgrants.reconcile import (
    audit,
    authorize_and_deliver,
    delivery_moved,
    withdraw_delivery,
)
from secretgrants.serial import RENEWABLE_PHASES
from secretgrants.settings import Settings
from secretgrants.startup import assemble, close, tune_kopf
from secretgrants.tenancy import Tenant, TenantSource

log = logging.getLogger("secretgrants")

GRANTS = (GROUP, VERSION, "secretgrantrequests")
TENANTS = (GROUP, VERSION, "secrettenants")
MAX_BACKOFF_SECONDS = 60.0


def backoff(retry: int) -> float:
    return min(2.0 ** min(retry, 10), MAX_BACKOFF_SECONDS)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches log in as our KubeClients do (see ``kube.login``)."""
    return kube_login().info


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    cfg = Settings()
    memo.config = cfg
    tune_kopf(settings, cfg)
    await assemble(memo, cfg, kwargs)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await close(memo)


# The indexes are async: kopf runs a sync handler in a thread, a hop per watch event.
@kopf.index("serviceaccounts")
async def service_accounts(
    namespace: str | None, name: str | None, uid: str | None, **_: Any
) -> dict[tuple[str, str], str]:
    """ServiceAccount UIDs from the watch stream: binding checks need no API call."""
    return {(namespace or "", name or ""): uid or ""}


@kopf.index("namespaces")
async def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.index(*TENANTS)
async def tenant_sources(name: str, spec: kopf.Spec, **_: Any) -> dict[str, TenantSource | None]:
    try:
        return {"all": TenantSource.from_object(name, dict(spec))}
    except Exception:  # an invalid tenant claims nothing; its own status says why
        log.warning("SecretTenant %s is invalid and is ignored", name)
        return {}


@kopf.on.resume(*GRANTS)
@kopf.on.create(*GRANTS)
@kopf.on.update(*GRANTS, field="spec")
@correlated_handler
async def reconcile_grant(
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    **kwargs: Any,
) -> None:
    namespace, name = namespace or "", name or ""
    generation = meta.get("generation")
    if kwargs.get("reason") in ("resume", "create") and settled(dict(status), generation):
        # Decided for this generation before a restart: nothing to redo, no use reset. A
        # "create" of a decided grant is one whose kopf bookkeeping kopf cannot find (an
        # operator that kept it in annotations before); deciding again would reset its uses.
        return
    with tracing.span(
        tracing.SPAN_GRANT,
        grant_namespace=namespace,
        grant_name=name,
        trigger=str(kwargs.get("reason", "unknown")),
    ) as grant_span:
        async with memo.grant_locks.hold(namespace, name):  # one writer at a time (``serial``)
            current = await _status_under_lock(memo, namespace, name, dict(status))
            if current is None:
                return  # gone meanwhile
            decided, retry_reason = await _decide(
                memo, grant_span, spec, namespace, name, uid or "", generation, current, kwargs
            )
            if current.get("phase") in RENEWABLE_PHASES:
                # Other writers act on the grant as soon as the lock is free: the decision
                # is written before that, not by kopf after this handler returns.
                await memo.kube.patch_grant_status(namespace, name, decided)
            else:
                patch.status.update(decided)  # kopf writes it with its bookkeeping: one write
        if retry_reason:
            raise kopf.TemporaryError(retry_reason, delay=backoff(retry))


async def _status_under_lock(
    memo: kopf.Memo, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any] | None:
    """The status to decide on, with the grant's lock held; None when the grant is gone.

    kopf's copy, unless the grant is in a phase that other writers act on (renewal,
    expiry, revocation: ``serial.RENEWABLE_PHASES``): then what they left, read again.
    Only the spec handler moves a grant into those phases, and kopf runs it one at a
    time per grant, so kopf's copy of a grant in any other phase is current.
    """
    if status.get("phase") not in RENEWABLE_PHASES:
        return status
    fresh = await memo.kube.read_grant(namespace, name)
    return None if fresh is None else dict(fresh.get("status") or {})


async def _decide(
    memo: kopf.Memo,
    grant_span: tracing.Span,
    spec: kopf.Spec,
    namespace: str,
    name: str,
    uid: str,
    generation: int | None,
    current: dict[str, Any],
    kwargs: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """The tenant guard, then the PDP decision and delivery: the status to write, and
    why to try again (or None). A live grant's Secret is emptied when it is not permitted."""
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    tenant_sources: kopf.Index[str, TenantSource] = kwargs["tenant_sources"]
    labels = next(iter(namespace_labels.get(namespace, [])), {})
    fallback: Tenant | None = memo.fallback
    try:
        with tracing.span(tracing.SPAN_GUARD, grant_namespace=namespace, grant_name=name):
            parsed = SecretGrantRequestSpec.model_validate(dict(spec))
            outcome = check_request(
                parsed, namespace, labels, list(tenant_sources.get("all", [])), fallback
            )
    except SecretGrantsError as err:
        await withdraw_delivery(memo, namespace, name, current)
        failed = failure_status(err, generation=generation, status=current)
        grant_span.set(phase=failed.get("phase"), reason=err.reason.value)
        await audit(
            memo,
            EventType.GUARD_REJECTED,
            AuditEffect.DENY,
            err.reason.value,
            grant_namespace=namespace,
            grant_name=name,
            grant_uid=uid,
            subject=_subject(namespace, spec.get("serviceAccountName")),
            purpose=spec.get("purpose"),
        )
        return failed, None
    grant_span.set(purpose=parsed.purpose.value, tenant=outcome.tenant.tenant_id)
    result = await authorize_and_deliver(
        memo,
        parsed,
        outcome,
        namespace=namespace,
        name=name,
        uid=uid,
        generation=generation,
        status=current,
    )
    if not result.permitted or delivery_moved(current, result.status):
        await withdraw_delivery(memo, namespace, name, current)
    grant_span.set(phase=result.status.get("phase"))
    return result.status, result.retry_reason


@kopf.on.event(*GRANTS)
async def observe_grant(  # async: on the loop (kopf runs a sync handler in a thread)
    type: str | None,
    name: str | None,
    namespace: str | None,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Every watch event of a grant, no API call: the grants-by-phase gauge, the live
    grants' next deadlines (renewal, expiry, settling uses) for the one scheduler, and
    admission forgets the copy it kept of a grant that changed."""
    namespace, name = namespace or "", name or ""
    count_phase(memo, type, namespace, name, status)
    memo.tending.observe(type, namespace, name, spec, status)
    memo.admission.reads.changed(namespace, name, meta.get("resourceVersion"))


def count_phase(
    memo: kopf.Memo, type: str | None, namespace: str, name: str, status: kopf.Status
) -> None:
    """Keep the grants-by-phase gauge from the watch stream, O(1) per event."""
    phases: dict[tuple[str, str], str] = memo.setdefault("phases", {})
    key = (namespace, name)
    before = phases.pop(key, None)
    after = None if type == "DELETED" else str(status.get("phase") or Phase.PENDING.value)
    if after is not None:
        phases[key] = after
    if before != after:
        if before is not None:
            memo.metrics.grants.labels(before).dec()
        if after is not None:
            memo.metrics.grants.labels(after).inc()


@kopf.on.delete(*GRANTS)
@correlated_handler
async def revoke_on_delete(
    name: str | None,
    namespace: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A deleted live grant is revoked first: its Secret is blanked before GC removes it.

    Registered for every grant (no ``when`` filter), so every grant carries the finalizer
    before anything is delivered (the apiserver adds it at creation through
    ``finalizer_policy``, or kopf in a write of its own): a grant deleted right after it
    was granted is still blanked first.
    """
    namespace, name = namespace or "", name or ""
    async with memo.grant_locks.hold(namespace, name):  # after a renewal in flight, not amid it
        current = await _status_under_lock(memo, namespace, name, dict(status))
        current = dict(status) if current is None else current
        if current.get("phase") not in LIVE_PHASES:
            return  # nothing was delivered, or it was already taken back
        with tracing.span(
            tracing.SPAN_GRANT, grant_namespace=namespace, grant_name=name, trigger="revoke"
        ):
            await memo.kube.blank_secret(
                namespace, secret_of(name, current), {ANNOTATION_STATE: "revoked"}
            )
            memo.metrics.revocations.labels("Deleted").inc()
            await audit(
                memo,
                EventType.REVOKED,
                AuditEffect.DENY,
                "Deleted",
                **audit_fields(namespace, name, current, dict(spec)),
            )
    log.info("grant %s/%s deleted; its delivery Secret was emptied", namespace, name)


@kopf.on.event("serviceaccounts")
@correlated_handler
async def service_account_gone(
    type: str,
    name: str | None,
    namespace: str | None,
    memo: kopf.Memo,
    uid: str | None = None,
    **_: Any,
) -> None:
    """Revoke the live grants bound to a ServiceAccount that was deleted (that very one:
    a grant bound to a newer ServiceAccount of the same name is left alone)."""
    if type != "DELETED" or not namespace or not name:
        return
    message = f"ServiceAccount {name!r} was deleted; the grant is revoked"
    for listed in await memo.kube.list_grants(namespace):
        if not _live_and_bound_to(listed, name, uid):
            continue
        grant_name = listed["metadata"]["name"]
        async with memo.grant_locks.hold(namespace, grant_name):
            grant = await memo.kube.read_grant(namespace, grant_name)  # as the last writer left it
            if grant is None or not _live_and_bound_to(grant, name, uid):
                continue
            await end_grant(
                memo, namespace, grant_name, grant, revoking(message), "ServiceAccountChanged"
            )


def _live_and_bound_to(grant: dict[str, Any], service_account: str, uid: str | None) -> bool:
    status = grant.get("status") or {}
    binding = status.get("binding") or {}
    bound_uid = binding.get("serviceAccountUID")
    return (
        status.get("phase") in LIVE_PHASES
        and binding.get("serviceAccountName") == service_account
        and (not uid or not bound_uid or bound_uid == uid)
    )


@kopf.on.resume(*TENANTS)
@kopf.on.create(*TENANTS)
@kopf.on.update(*TENANTS, field="spec")
async def validate_tenant(
    spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, name: str, **_: Any
) -> None:
    generation = meta.get("generation")
    try:
        TenantSource.from_object(name, dict(spec))
        cond = (ConditionStatus.TRUE, "Accepted", "the tenant is in force")
    except Exception as err:  # pydantic or URI error: say which
        cond = (ConditionStatus.FALSE, "InvalidSpec", str(err)[:1000])
    conditions = set_condition(
        parse_conditions(dict(status)), ConditionType.READY, cond[0], cond[1], cond[2], generation
    )
    patch.status.update(
        {"observedGeneration": generation, "conditions": [c.to_kube() for c in conditions]}
    )
