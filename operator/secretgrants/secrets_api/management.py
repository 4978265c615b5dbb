"""Management of secrets through the API, each call through the same PEP as a grant.

For one operation: parse the canonical URI (and refuse a ``#key`` where the
purpose takes none), run the tenant guard for the *caller's* namespace (400
with the guard's reason), ask the PDP about the operation's purpose (the
seed's mapping, :mod:`.operations`; a deny is a 403 with the decision id),
then call the provider (``UnsupportedOperation`` 501, not found 404,
provider failures 502). Every outcome is audited with ``resource_ref``,
never the URI; nothing here logs or returns a value.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from secretgrants import tracing
from secretgrants.audit import Auditor, EventType, current_correlation_id, resource_ref
from secretgrants.audit import Effect as AuditEffect
from secretgrants.errors import (
    GuardError,
    InvalidSecretURI,
    SecretGrantsError,
    SecretNotFound,
    UnsupportedOperation,
)
from secretgrants.metrics import Metrics
from secretgrants.policy.base import PolicyDecisionPoint
from secretgrants.policy.model import (
    AccessRequest,
    Decision,
    Effect,
    RequestContext,
    Resource,
    Subject,
    apply_obligations,
)
from secretgrants.providers.base import Provider, SecretMetadata
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.models import (
    BulkItem,
    BulkItemResult,
    Done,
    Keys,
    Metadata,
    MetadataDetail,
    VersionItem,
    Versions,
    Written,
)
from secretgrants.secrets_api.operations import OPERATIONS, Operation, operation_for
from secretgrants.secrets_api.problems import Problem, from_error
from secretgrants.tenancy import Tenant, TenantSource, guard, resolve_tenant
from secretgrants.uri import SecretURI, parse_secret_uri

_T = TypeVar("_T")

__all__ = ["IndexTenants", "ManagementCall", "Manager", "SaltSource", "TenantLookup"]


class TenantLookup(Protocol):
    def tenant_for(self, namespace: str) -> Tenant:
        """The namespace's tenant; raises TenantNotFound or TenantConflict."""
        ...


class SaltSource(Protocol):
    async def salt_for(self, tenant: Tenant) -> bytes | None: ...


class IndexTenants:
    """Tenants from the operator's in-memory indexes (namespace labels, SecretTenants).

    ``namespace_labels`` and ``tenant_sources`` are kopf indexes (or any mapping of
    key -> iterable of values): the same data the grant handlers guard with.
    """

    def __init__(
        self,
        namespace_labels: Mapping[str, Iterable[Mapping[str, str]]],
        tenant_sources: Mapping[str, Iterable[TenantSource]],
        fallback: Tenant | None,
    ) -> None:
        self.namespace_labels = namespace_labels
        self.tenant_sources = tenant_sources
        self.fallback = fallback

    def tenant_for(self, namespace: str) -> Tenant:
        labels = next(iter(self.namespace_labels.get(namespace, [])), {})
        sources = list(self.tenant_sources.get("all", []))
        return resolve_tenant(namespace, labels, sources, self.fallback)


@dataclass(frozen=True)
class ManagementCall:
    """One management operation as asked (the values in ``data`` are never logged)."""

    operation: Operation
    uri: str
    data: Mapping[str, str] | None = None
    versions: Sequence[int] | None = None
    owner: str | None = None

    @classmethod
    def from_bulk(cls, item: BulkItem) -> ManagementCall:
        return cls(
            operation=operation_for(Operation(item.op), destroy=item.destroy),
            uri=item.uri,
            data=item.data,
            versions=item.versions,
            owner=item.owner,
        )


@dataclass
class _Audit:
    """What every audit event of one call carries."""

    caller: Caller
    operation: Operation
    tenant: str | None = None
    resource_ref: str | None = None
    decision_id: str | None = None
    pdp: str | None = None
    correlation_id: str = ""
    stage: EventType = EventType.GUARD_REJECTED  # where a refusal happened


class Manager:
    """Carries out management calls for authenticated callers, or raises a :class:`Problem`."""

    def __init__(
        self,
        providers: Any,
        *,
        pdp: PolicyDecisionPoint | None,
        tenants: TenantLookup,
        salts: SaltSource | None,
        auditor: Auditor,
        metrics: Metrics,
    ) -> None:
        self.providers = providers
        self.pdp = pdp
        self.tenants = tenants
        self.salts = salts
        self.auditor = auditor
        self.metrics = metrics

    async def run(self, caller: Caller, call: ManagementCall) -> dict[str, Any]:
        """The response body of one permitted, carried-out operation."""
        ctx = _Audit(
            caller, call.operation, correlation_id=current_correlation_id() or str(uuid.uuid4())
        )
        try:
            body = await self._run(caller, call, ctx)
        except Problem as problem:
            await self._record(ctx, problem)
            raise
        await self._record(ctx, None)
        return body

    async def run_bulk(self, caller: Caller, items: Sequence[BulkItem]) -> list[BulkItemResult]:
        """Each item guarded, decided and carried out on its own, in order."""
        results = []
        for index, item in enumerate(items):
            call = ManagementCall.from_bulk(item)
            try:
                body = await self.run(caller, call)
            except Problem as problem:
                results.append(
                    BulkItemResult(
                        index=index,
                        op=call.operation.value,
                        status=problem.status,
                        code=problem.code,
                        detail=problem.detail,
                        decision_id=problem.extra.get("decisionId"),
                    )
                )
                continue
            results.append(
                BulkItemResult(
                    index=index,
                    op=call.operation.value,
                    status=200,
                    decision_id=body.get("decisionId"),
                    result=body,
                )
            )
        return results

    async def _run(self, caller: Caller, call: ManagementCall, ctx: _Audit) -> dict[str, Any]:
        spec = OPERATIONS[call.operation]
        try:
            uri = parse_secret_uri(call.uri)
            uri.check_purpose(spec.purpose.value)
            if (
                uri.fragment is not None
                and call.data is not None
                and set(call.data) != {uri.fragment}
            ):
                raise Problem(
                    400,
                    "InvalidRequest",
                    f"a write to '#{uri.fragment}' changes that one key: give exactly that key",
                )
            tenant = self.tenants.tenant_for(caller.namespace)
            ctx.tenant = tenant.tenant_id
            ctx.resource_ref = resource_ref(
                await self.salts.salt_for(tenant) if self.salts else None, uri
            )
            guard(uri, tenant)
        except (InvalidSecretURI, GuardError) as err:
            raise from_error(err) from None
        ctx.stage = EventType.PROVIDER_ERROR
        try:
            provider = self.providers.provider_for(uri)
            meta = await self._metadata_or_none(provider, uri)
            ctx.stage = EventType.DECISION
            decision = await self._decide(caller, tenant, uri, call, meta, ctx)
            ctx.stage = EventType.PROVIDER_ERROR
            return await self._carry_out(provider, uri, call, caller, meta, decision)
        except SecretGrantsError as err:
            self.metrics.errors.labels(err.reason.value).inc()
            raise from_error(err, decisionId=ctx.decision_id) from None

    async def _metadata_or_none(self, provider: Provider, uri: SecretURI) -> SecretMetadata | None:
        """Owner and creation data for the PDP; None for a secret not written yet."""
        try:
            return await self._timed(
                provider, "read_metadata", provider.read_metadata(uri.without_fragment())
            )
        except SecretNotFound:
            return None

    async def _timed(self, provider: Provider, operation: str, call: Awaitable[_T]) -> _T:
        started = time.perf_counter()
        try:
            with tracing.span(tracing.SPAN_PROVIDER, provider=provider.name, operation=operation):
                return await call
        finally:
            self.metrics.provider_latency.labels(provider.name, operation).observe(
                time.perf_counter() - started
            )

    async def _decide(
        self,
        caller: Caller,
        tenant: Tenant,
        uri: SecretURI,
        call: ManagementCall,
        meta: SecretMetadata | None,
        ctx: _Audit,
    ) -> Decision:
        purpose = OPERATIONS[call.operation].purpose
        if self.pdp is None:
            decision = Decision(
                decision_id=str(uuid.uuid4()),
                effect=Effect.PERMIT,
                reason="authorization disabled (ENABLE_AUTHORIZATION=false)",
                pdp_kind="disabled",
            )
        else:
            request = AccessRequest(
                subject=Subject(
                    namespace=caller.namespace,
                    service_account=caller.service_account,
                    uid=caller.uid or None,
                    tenant=tenant.tenant_id,
                ),
                resource=Resource.from_uri(
                    uri,
                    owner=meta.owner if meta else None,
                    created_by=meta.created_by if meta else None,
                    created_at=meta.created_at if meta else None,
                ),
                purpose=purpose,
                context=RequestContext(correlation_id=ctx.correlation_id),
            )
            started = time.perf_counter()
            decision = await self.pdp.evaluate(request)
            self.metrics.pdp_latency.labels(decision.pdp_kind).observe(
                time.perf_counter() - started
            )
        final = apply_obligations(None, None, decision).decision
        ctx.decision_id, ctx.pdp = final.decision_id, final.pdp_kind
        effect = "permit" if final.permitted else "error" if final.retryable else "deny"
        self.metrics.decisions.labels(effect, final.pdp_kind).inc()
        if not final.permitted:
            raise Problem(
                403,
                final.condition_reason.value,
                f"the PDP did not permit purpose {purpose.value!r}: {final.message}",
                extra={"decisionId": final.decision_id},
            )
        return final

    async def _carry_out(
        self,
        provider: Provider,
        uri: SecretURI,
        call: ManagementCall,
        caller: Caller,
        meta: SecretMetadata | None,
        decision: Decision,
    ) -> dict[str, Any]:
        op, decided = call.operation, decision.decision_id
        whole, name, actor = uri.without_fragment(), op.value, caller.username
        if op in (Operation.WRITE, Operation.ROTATE):
            fn = provider.write if op is Operation.WRITE else provider.rotate
            version = await self._timed(provider, name, fn(uri, call.data or {}, actor=actor))
            return _dump(Written(decision_id=decided, version=version))
        if op is Operation.DELETE:
            versions = list(call.versions) if call.versions else None
            await self._timed(provider, name, provider.delete(whole, versions))
            return _dump(Done(decision_id=decided))
        if op is Operation.UNDELETE:
            await self._timed(provider, name, provider.undelete(whole, list(call.versions or [])))
            return _dump(Done(decision_id=decided))
        if op in (Operation.DESTROY, Operation.DESTROY_VERSIONS):
            versions = list(call.versions or [])
            await self._timed(
                provider, "destroy_versions", provider.destroy_versions(whole, versions)
            )
            return _dump(Done(decision_id=decided))
        if op is Operation.SET_OWNER:
            owner = call.owner or ""
            await self._timed(provider, name, provider.update_owner(whole, owner, actor=actor))
            return _dump(Done(decision_id=decided))
        if op is Operation.KEYS:
            keys = await self._timed(provider, "list_keys", provider.list_keys(whole))
            return _dump(Keys(decision_id=decided, keys=list(keys)))
        if meta is None:  # read_metadata again, so that a missing secret is a 404
            meta = await self._timed(provider, "read_metadata", provider.read_metadata(whole))
        items = [VersionItem.of(v) for _, v in sorted(meta.versions.items())]
        if op is Operation.METADATA:
            return _dump(Metadata(decision_id=decided, **Metadata.fields_of(meta)))
        if op is Operation.METADATA_DETAIL:
            return _dump(
                MetadataDetail(
                    decision_id=decided,
                    custom_metadata=dict(meta.custom_metadata),
                    versions=items,
                    **Metadata.fields_of(meta),
                )
            )
        if op is Operation.VERSIONS:
            if meta.current_version is None:
                raise UnsupportedOperation(f"versions: provider {uri.provider!r} keeps no versions")
            return _dump(
                Versions(decision_id=decided, current_version=meta.current_version, versions=items)
            )
        raise Problem(
            400, "InvalidRequest", f"operation {op.value!r} is not a management operation"
        )

    async def _record(self, ctx: _Audit, problem: Problem | None) -> None:
        spec = OPERATIONS[ctx.operation]
        if problem is None:
            type_, effect, reason = (
                EventType.SECRET_MANAGED,
                AuditEffect.PERMIT,
                ctx.operation.value,
            )
        else:
            type_, reason = ctx.stage, problem.code
            effect = AuditEffect.ERROR if problem.status >= 500 else AuditEffect.DENY
        await self.auditor.record(
            type=type_,
            effect=effect,
            reason=reason,
            message=f"Secrets API {ctx.operation.value}",
            subject=ctx.caller.username,
            tenant=ctx.tenant,
            purpose=spec.purpose.value,
            resource_ref=ctx.resource_ref,
            decision_id=ctx.decision_id,
            correlation_id=ctx.correlation_id,
            pdp=ctx.pdp,
        )


def _dump(model: Done) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)
