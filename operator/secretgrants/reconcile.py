"""One reconciliation pass of a grant, after its tenant guard passed.

ServiceAccount binding, PDP decision (with the provider's metadata as resource
attributes), obligations, provider read, delivery Secret: ``authorize_and_deliver``
returns the status to write and whether to try again. The kopf handlers
(``handlers``) and renewals (``lifecycle``) call it; it decides nothing itself
(``grants`` does) and never writes the grant's status.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping
from typing import Any

import kopf

from secretgrants import tracing
from secretgrants.api.common import now
from secretgrants.api.grant import DeliveryMode, SecretGrantRequestSpec
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import (
    EventType,
    current_correlation_id,
    resource_ref,
)
from secretgrants.audit import subject as _subject
from secretgrants.delivery import (
    ANNOTATION_STATE,
    check_secret_keys,
    delivery_secret,
    select_keys,
)
from secretgrants.errors import DeliveryFailed, DeliveryUnavailable, SecretGrantsError
from secretgrants.grants import (
    LIVE_PHASES,
    GuardOutcome,
    access_request,
    decided_status,
    failure_status,
    granted_status,
    guard_passed_status,
)
from secretgrants.kube import KubeAPIError
from secretgrants.lifecycle import (
    DeliverIf,
    Outcome,
    secret_of,
)
from secretgrants.metrics import Metrics
from secretgrants.policy import Decision, Effect, PolicyDecisionPoint, apply_obligations
from secretgrants.reasons import Reason
from secretgrants.redaction import redact, register_secret
from secretgrants.settings import Settings

__all__ = ["audit", "authorize_and_deliver", "indexed_uid", "withdraw_delivery"]


def delivery_moved(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """The new decision no longer delivers through the Secret the previous one wrote
    (a spec changed from Volume to Api delivery): that Secret must not keep the value,
    since no live grant claims it and the validating webhook would not guard it."""
    previous = (before.get("delivery") or {}).get("secretName")
    return bool(previous) and previous != (after.get("delivery") or {}).get("secretName")


async def withdraw_delivery(
    memo: kopf.Memo, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """A changed spec that is no longer permitted, or no longer delivered through the
    Secret, takes the delivered value back at once."""
    if status.get("phase") in LIVE_PHASES:
        await memo.kube.blank_secret(
            namespace, secret_of(name, status), {ANNOTATION_STATE: "withdrawn"}
        )


async def authorize_and_deliver(
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
) -> Outcome:
    """ServiceAccount binding, PDP decision, provider read, delivery Secret: one pass.

    ``deliver_if`` is asked right before the value is written to the delivery Secret (a
    renewal checks there that the grant did not change under it); False gives the pass
    up with nothing delivered (``Outcome.superseded``).
    """
    cfg: Settings = memo.config
    tenant = outcome.tenant.tenant_id
    ref = resource_ref(await memo.salts.salt_for(outcome.tenant), outcome.uri)
    context: dict[str, Any] = {
        "grant_namespace": namespace,
        "grant_name": name,
        "grant_uid": uid,
        "tenant": tenant,
        "purpose": parsed.purpose.value,
        "resource_ref": ref,
        "subject": _subject(namespace, parsed.service_account_name),
    }
    tracing.annotate(resource_ref=ref)

    sa_uid = indexed_uid(memo, namespace, parsed.service_account_name)
    if sa_uid is None:  # not in the watch's index (yet): ask the API
        sa_uid = await memo.kube.service_account_uid(namespace, parsed.service_account_name)
    if sa_uid is None:
        waiting = guard_passed_status(
            outcome,
            generation=generation,
            status=status,
            reason=Reason.SERVICE_ACCOUNT_NOT_FOUND,
            message=f"waiting for ServiceAccount {parsed.service_account_name!r} to exist",
        )
        return Outcome(waiting, "ServiceAccount not found")

    metrics: Metrics = memo.metrics
    scheme = outcome.uri.scheme
    try:
        with tracing.span(tracing.SPAN_PDP, purpose=parsed.purpose.value) as pdp_span:
            started = time.perf_counter()
            decision = await _decide(memo, outcome, parsed, namespace, sa_uid, cfg)
            metrics.pdp_latency.labels(decision.pdp_kind).observe(time.perf_counter() - started)
            enforcement = apply_obligations(parsed.ttl_seconds, parsed.max_uses, decision)
            final = enforcement.decision
            effect = (
                AuditEffect.PERMIT
                if final.permitted
                else AuditEffect.ERROR
                if final.retryable
                else AuditEffect.DENY
            )
            metrics.decisions.labels(effect.value, final.pdp_kind).inc()
            reason = final.condition_reason.value if not final.permitted else "Permitted"
            pdp_span.set(
                pdp_kind=final.pdp_kind,
                effect=effect.value,
                reason=reason,
                decision_id=final.decision_id,
            )
            if final.retryable:
                pdp_span.fail(reason)
            await audit(
                memo,
                EventType.DECISION,
                effect,
                reason,
                decision_id=final.decision_id,
                pdp=final.pdp_kind,
                **context,
            )
        if not enforcement.permitted:
            if final.retryable:
                metrics.errors.labels(Reason.PDP_UNAVAILABLE.value).inc()
            denied = decided_status(
                final,
                generation=generation,
                status=status,
                tenant=tenant,
                resource_ref=ref,
            )
            return Outcome(denied, "PDP unavailable" if final.retryable else None)
        with tracing.span(tracing.SPAN_PROVIDER, provider=scheme, operation="read"):
            provider = memo.providers.provider_for(outcome.uri)
            started = time.perf_counter()
            data = await provider.read(outcome.uri.without_fragment(), parsed.version)
            metrics.provider_latency.labels(scheme, "read").observe(time.perf_counter() - started)
        values = select_keys(data.data, parsed, outcome.uri.fragment)
        for value in values.values():
            register_secret(value)
        if parsed.delivery.mode is DeliveryMode.VOLUME:
            check_secret_keys(values)

        if enforcement.ttl_seconds is None:
            enforcement = enforcement.model_copy(update={"ttl_seconds": cfg.default_ttl_seconds})
        at = now()
        expires = at + dt.timedelta(seconds=enforcement.ttl_seconds or cfg.default_ttl_seconds)
        secret_name: str | None = None
        if parsed.delivery.mode is DeliveryMode.VOLUME:
            if deliver_if is not None and not await deliver_if():
                return Outcome({}, superseded=True)
            with tracing.span(
                tracing.SPAN_DELIVERY,
                delivery_mode=parsed.delivery.mode.value,
                key_count=len(values),
            ):
                body = delivery_secret(
                    grant_name=name,
                    grant_uid=uid,
                    service_account=parsed.service_account_name,
                    values=values,
                    expires_at=expires,
                )
                await _write_delivery(memo, namespace, body)
                secret_name = body["metadata"]["name"]
                await audit(
                    memo,
                    EventType.DELIVERY_WRITTEN,
                    AuditEffect.PERMIT,
                    "Delivered",
                    decision_id=final.decision_id,
                    **context,
                )
    except SecretGrantsError as err:
        metrics.errors.labels(err.reason.value).inc()
        failure = (
            EventType.DELIVERY_FAILED
            if isinstance(err, DeliveryFailed)
            else EventType.PROVIDER_ERROR
        )
        await audit(memo, failure, AuditEffect.ERROR, err.reason.value, **context)
        failed = failure_status(err, generation=generation, status=status, tenant=tenant)
        return Outcome(failed, err.reason.value if err.retryable else None)

    granted = granted_status(
        enforcement,
        generation=generation,
        status=status,
        tenant=tenant,
        resource_ref=ref,
        service_account=parsed.service_account_name,
        service_account_uid=sa_uid,
        secret_name=secret_name,
        keys=list(values),
        version=data.version,
        at=at,
    )
    return Outcome(granted, permitted=True)


async def _write_delivery(memo: kopf.Memo, namespace: str, body: dict[str, Any]) -> None:
    """Write the delivery Secret; an apiserver refusal becomes a reason on the grant.

    The apiserver's words are kept (they name a key or a limit, never a value: the
    Secret's data is not echoed in its Status), redacted all the same. Overload (429),
    conflicts and server errors are retried; anything else (an invalid or too large
    Secret, a quota, a policy, an existing Secret of another type) waits for a change.
    """
    try:
        await memo.kube.upsert_secret(namespace, body)
    except KubeAPIError as err:
        said = redact(f"{err.status} {err.reason}: {err.message}".rstrip(": "))
        message = f"the apiserver refused the delivery Secret: {said}"
        if err.status in (409, 429) or err.status >= 500:
            raise DeliveryUnavailable(message) from None
        raise DeliveryFailed(message) from None


def indexed_uid(memo: kopf.Memo, namespace: str, name: str) -> str | None:
    """The ServiceAccount's UID from the watch's index, as the binding checks see it."""
    index = (memo.get("indexes") or {}).get("service_accounts")
    if index is None:
        return None
    uid = next(iter(index.get((namespace, name), [])), None)
    return str(uid) if uid else None


async def audit(
    memo: kopf.Memo, type_: EventType, effect: AuditEffect, reason: str, **fields: Any
) -> None:
    await memo.audit.record(type=type_, effect=effect, reason=reason, **fields)


async def _decide(
    memo: kopf.Memo,
    outcome: GuardOutcome,
    spec: SecretGrantRequestSpec,
    namespace: str,
    sa_uid: str,
    cfg: Settings,
) -> Decision:
    if memo.pdp is None:
        return Decision(
            decision_id=str(uuid.uuid4()),
            effect=Effect.PERMIT,
            reason="authorization disabled (ENABLE_AUTHORIZATION=false)",
            pdp_kind="disabled",
        )
    pdp: PolicyDecisionPoint = memo.pdp
    provider = memo.providers.provider_for(outcome.uri)
    with tracing.span(tracing.SPAN_PROVIDER, provider=outcome.uri.scheme, operation="metadata"):
        meta = await provider.read_metadata(outcome.uri.without_fragment())
    request = access_request(
        outcome,
        spec,
        namespace=namespace,
        service_account_uid=sa_uid,
        owner=meta.owner,
        created_by=meta.created_by,
        created_at=meta.created_at,
        correlation_id=current_correlation_id() or str(uuid.uuid4()),
        traceparent=tracing.traceparent(),  # the PDP span: sent as header and in the context
    )
    return await pdp.evaluate(request)
