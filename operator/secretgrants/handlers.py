"""The kopf registrations: thin handlers that read, call the pure logic, and write status.

Nothing is decided here: ``grants`` decides, ``tenancy`` resolves tenants,
``policy`` asks the PDP, ``providers`` read values, ``delivery`` shapes the
Secret, and ``kube`` writes it. This module only moves data between them.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import kopf

from secretgrants.api.common import GROUP, VERSION, ConditionStatus, now, set_condition
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.audit import resource_ref
from secretgrants.delivery import (
    ANNOTATION_STATE,
    delivery_secret,
    delivery_secret_name,
    select_keys,
)
from secretgrants.errors import SecretGrantsError
from secretgrants.grants import (
    GuardOutcome,
    access_request,
    check_request,
    decided_status,
    expired_status,
    expires_at,
    failure_status,
    granted_status,
    guard_passed_status,
    parse_conditions,
    settled,
)
from secretgrants.kube import KubeClient
from secretgrants.policy import Decision, Effect, PolicyDecisionPoint, apply_obligations, build_pdp
from secretgrants.providers import ProviderRegistry
from secretgrants.reasons import ConditionType, Phase, Reason
from secretgrants.settings import Settings
from secretgrants.tenancy import Tenant, TenantSource, env_tenant

log = logging.getLogger("secretgrants")

GRANTS = (GROUP, VERSION, "secretgrantrequests")
TENANTS = (GROUP, VERSION, "secrettenants")
ANNOTATION_PREFIX = GROUP
MAX_BACKOFF_SECONDS = 60.0


def backoff(retry: int) -> float:
    return min(2.0 ** min(retry, 10), MAX_BACKOFF_SECONDS)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = Settings()
    memo.config = cfg
    memo.fallback = env_tenant(cfg.tenant_id, cfg.tenant_allowed_mounts)
    memo.salt = cfg.tenant_salt.get_secret_value().encode() if cfg.tenant_salt else None
    memo.pdp = build_pdp(cfg) if cfg.enable_authorization else None
    memo.providers = ProviderRegistry.from_settings(cfg)
    memo.kube = KubeClient()
    # kopf's bookkeeping lives under our own prefix, not kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    if not cfg.enable_authorization:
        log.warning(
            "ENABLE_AUTHORIZATION=false: grants are NOT checked by any PDP. "
            "This is a development-only setting; never run it in production."
        )
    if memo.salt is None:
        log.warning("TENANT_SALT is not set: grants and audit records carry no resource_ref")
    log.info("providers configured: %s", ", ".join(memo.providers) or "none")


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("pdp") is not None:
        await memo.pdp.close()
    if memo.get("providers") is not None:
        await memo.providers.close()
    if memo.get("kube") is not None:
        memo.kube.close()


@kopf.index("namespaces")
def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.index(*TENANTS)
def tenant_sources(name: str, spec: kopf.Spec, **_: Any) -> dict[str, TenantSource | None]:
    try:
        return {"all": TenantSource.from_object(name, dict(spec))}
    except Exception:  # an invalid tenant claims nothing; its own status says why
        log.warning("SecretTenant %s is invalid and is ignored", name)
        return {}


@kopf.on.resume(*GRANTS)
@kopf.on.create(*GRANTS)
@kopf.on.update(*GRANTS, field="spec")
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
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    tenant_sources: kopf.Index[str, TenantSource] = kwargs["tenant_sources"]
    namespace, name = namespace or "", name or ""
    cfg: Settings = memo.config
    generation = meta.get("generation")
    current = dict(status)
    if kwargs.get("reason") == "resume" and settled(current, generation):
        return  # decided for this generation before a restart: nothing to redo, no use reset
    labels = next(iter(namespace_labels.get(namespace, [])), {})
    fallback: Tenant | None = memo.fallback
    try:
        parsed = SecretGrantRequestSpec.model_validate(dict(spec))
        outcome = check_request(
            parsed, namespace, labels, list(tenant_sources.get("all", [])), fallback
        )
    except SecretGrantsError as err:
        patch.status.update(failure_status(err, generation=generation, status=current))
        return
    tenant = outcome.tenant.tenant_id
    ref = resource_ref(memo.salt, outcome.uri)

    sa_uid = await memo.kube.service_account_uid(namespace, parsed.service_account_name)
    if sa_uid is None:
        waiting = guard_passed_status(
            outcome,
            generation=generation,
            status=current,
            reason=Reason.SERVICE_ACCOUNT_NOT_FOUND,
            message=f"waiting for ServiceAccount {parsed.service_account_name!r} to exist",
        )
        patch.status.update(waiting)
        raise kopf.TemporaryError("ServiceAccount not found", delay=backoff(retry))

    try:
        decision = await _decide(memo, outcome, parsed, namespace, sa_uid, cfg)
        enforcement = apply_obligations(parsed.ttl_seconds, parsed.max_uses, decision)
        if not enforcement.permitted:
            patch.status.update(
                decided_status(
                    enforcement.decision,
                    generation=generation,
                    status=current,
                    tenant=tenant,
                    resource_ref=ref,
                )
            )
            if enforcement.decision.retryable:
                raise kopf.TemporaryError("PDP unavailable", delay=backoff(retry))
            return
        provider = memo.providers.provider_for(outcome.uri)
        data = await provider.read(outcome.uri.without_fragment(), parsed.version)
        values = select_keys(data.data, parsed, outcome.uri.fragment)
    except SecretGrantsError as err:
        patch.status.update(
            failure_status(err, generation=generation, status=current, tenant=tenant)
        )
        if err.retryable:
            raise kopf.TemporaryError(err.reason.value, delay=backoff(retry)) from None
        return

    if enforcement.ttl_seconds is None:
        enforcement = enforcement.model_copy(update={"ttl_seconds": cfg.default_ttl_seconds})
    at = now()
    expires = at + dt.timedelta(seconds=enforcement.ttl_seconds or cfg.default_ttl_seconds)
    body = delivery_secret(
        grant_name=name,
        grant_uid=uid or "",
        service_account=parsed.service_account_name,
        values=values,
        expires_at=expires,
    )
    await memo.kube.upsert_secret(namespace, body)
    patch.status.update(
        granted_status(
            enforcement,
            generation=generation,
            status=current,
            tenant=tenant,
            resource_ref=ref,
            service_account=parsed.service_account_name,
            service_account_uid=sa_uid,
            secret_name=body["metadata"]["name"],
            keys=list(values),
            version=data.version,
            at=at,
        )
    )


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
    meta = await provider.read_metadata(outcome.uri.without_fragment())
    request = access_request(
        outcome,
        spec,
        namespace=namespace,
        service_account_uid=sa_uid,
        owner=meta.owner,
        created_by=meta.created_by,
        created_at=meta.created_at,
        correlation_id=str(uuid.uuid4()),
    )
    return await pdp.evaluate(request)


def _is_granted(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == Phase.GRANTED.value


@kopf.daemon(*GRANTS, when=_is_granted, cancellation_timeout=5.0)
async def expire_grant(
    name: str | None,
    namespace: str | None,
    status: kopf.Status,
    meta: kopf.Meta,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Sleep until expiresAt, then blank the delivery Secret first and mark the grant Expired.

    kopf restarts daemons on operator start, so overdue grants expire at once.
    """
    namespace, name = namespace or "", name or ""
    while not stopped:
        at = expires_at(dict(status))
        if at is None:
            await stopped.wait(30)
            continue
        delay = (at - now()).total_seconds()
        if delay > 0:
            await stopped.wait(min(delay, 30.0))
            continue
        secret = (status.get("delivery") or {}).get("secretName") or delivery_secret_name(name)
        await memo.kube.blank_secret(namespace, secret, {ANNOTATION_STATE: "expired"})
        await memo.kube.patch_grant_status(
            namespace, name, expired_status(generation=meta.get("generation"), status=dict(status))
        )
        log.info("grant %s/%s expired; its delivery Secret was emptied", namespace, name)
        return


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
