"""The kopf registrations: thin handlers that read, call the pure logic, and write status.

Nothing is decided here: ``grants`` decides, ``tenancy`` resolves tenants,
and this module only moves data between them and the API.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from secretgrants.api.common import GROUP, VERSION, ConditionStatus, set_condition
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.errors import SecretGrantsError
from secretgrants.grants import (
    check_request,
    failure_status,
    guard_passed_status,
    parse_conditions,
)
from secretgrants.reasons import ConditionType
from secretgrants.settings import Settings
from secretgrants.tenancy import Tenant, TenantSource, env_tenant

log = logging.getLogger("secretgrants")

GRANTS = (GROUP, VERSION, "secretgrantrequests")
TENANTS = (GROUP, VERSION, "secrettenants")
ANNOTATION_PREFIX = GROUP


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = Settings()
    memo.config = cfg
    memo.fallback = env_tenant(cfg.tenant_id, cfg.tenant_allowed_mounts)
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
    if cfg.tenant_salt is None:
        log.warning("TENANT_SALT is not set: audit records carry no resource_ref")


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
    patch: kopf.Patch,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    namespace_labels: kopf.Index[str, dict[str, str]] = kwargs["namespace_labels"]
    tenant_sources: kopf.Index[str, TenantSource] = kwargs["tenant_sources"]
    namespace = namespace or ""
    generation = meta.get("generation")
    labels = next(iter(namespace_labels.get(namespace, [])), {})
    fallback: Tenant | None = memo.fallback
    try:
        parsed = SecretGrantRequestSpec.model_validate(dict(spec))
        outcome = check_request(
            parsed, namespace, labels, list(tenant_sources.get("all", [])), fallback
        )
    except SecretGrantsError as err:
        patch.status.update(failure_status(err, generation=generation, status=dict(status)))
        return
    patch.status.update(guard_passed_status(outcome, generation=generation, status=dict(status)))


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
