"""What the mutating and the validating side of pod admission share.

Both sides read grants through one ``GrantStore`` and one set of kept reads
(the validating webhook judges a pod on the grant a use was reserved on moments
before, in the same request), know the ServiceAccounts' UIDs from the
operator's index, and audit every pod they admit or refuse in the same shape.
``PodMutation`` and ``PodValidation`` build on this; ``webhook.PodAdmission``
is the two together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from secretgrants.admission import AdmissionDenied, pod_service_account
from secretgrants.audit import Auditor, EventType
from secretgrants.audit import Effect as AuditEffect
from secretgrants.grant_reads import GrantReads
from secretgrants.metrics import Metrics

__all__ = ["Expectations", "GrantStore", "PodAdmissionBase"]


class GrantStore(Protocol):
    """What the admission needs of the API (KubeClient implements it)."""

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None: ...

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]: ...


class Expectations(Protocol):
    """Where the reservations the webhook makes are expected on pods (``pod_uses.SeenUses``):
    the operator's pod watch records an id only once it is expected."""

    def expect(self, namespace: str, grant: str, rid: str) -> None: ...

    def forget(self, namespace: str, grant: str, ids: Iterable[str]) -> None: ...


class PodAdmissionBase:
    """The store, the kept reads, the auditor and metrics, and the audit records of a pod."""

    def __init__(
        self,
        store: GrantStore,
        *,
        audience: str | None,
        auditor: Auditor | None = None,
        metrics: Metrics | None = None,
        renew: Callable[[str, str], Awaitable[bool]] | None = None,
        reads: GrantReads | None = None,
        service_account_uid: Callable[[str, str], str | None] | None = None,
        expectations: Expectations | None = None,
    ) -> None:
        self.store = store
        # Told of each use reserved (and given back), so the pod watch knows the ids to
        # record; None: no pod watch (tests, or the webhook served elsewhere).
        self.expectations = expectations
        # The UID of a ServiceAccount (namespace, name) as the operator's watch knows it,
        # None when it does not (yet): a grant bound to another UID is refused.
        self.service_account_uid = service_account_uid
        # Grants read or written moments ago (kept by default for none: every check reads).
        self.reads = reads if reads is not None else GrantReads(max_age=0)
        # Asks the PDP again for an exhausted or expired grant with renewal on; True when
        # a fresh permit was written (the operator's renewal, called at the point of use).
        self.renew = renew
        self.audience = audience
        self.auditor = auditor or Auditor()
        self.metrics = metrics or Metrics()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _known_uid(self, namespace: str, service_account: str) -> str | None:
        if self.service_account_uid is None:
            return None
        return self.service_account_uid(namespace, service_account)

    async def _audit_denied(
        self,
        denied: AdmissionDenied,
        namespace: str,
        pod: Mapping[str, Any],
        grants: Mapping[str, dict[str, Any]],
        correlation_id: str | None,
    ) -> None:
        await self._audit_pod(
            EventType.POD_DENIED,
            AuditEffect.DENY,
            denied.reason,
            namespace,
            pod,
            denied.grant,
            grants.get(denied.grant or ""),
            correlation_id,
        )

    async def _audit_pod(
        self,
        type_: EventType,
        effect: AuditEffect,
        reason: str,
        namespace: str,
        pod: Mapping[str, Any],
        grant_name: str | None,
        grant: Mapping[str, Any] | None,
        correlation_id: str | None,
        message: str | None = None,
    ) -> None:
        """One pod_admitted / pod_denied record, with what the grant's status knows."""
        status = (grant or {}).get("status") or {}
        spec = (grant or {}).get("spec") or {}
        meta = pod.get("metadata") or {}
        await self.auditor.record(
            type=type_,
            effect=effect,
            reason=reason,
            grant_namespace=namespace,
            grant_name=grant_name,
            grant_uid=((grant or {}).get("metadata") or {}).get("uid"),
            pod=meta.get("name") or meta.get("generateName"),
            subject=f"system:serviceaccount:{namespace}:{pod_service_account(pod)}",
            tenant=status.get("tenant"),
            purpose=spec.get("purpose", "read") if grant else None,
            resource_ref=status.get("resourceRef"),
            decision_id=(status.get("decision") or {}).get("id"),
            correlation_id=correlation_id,
            message=message,
        )

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The grant from the API, kept a moment for the next admissions."""
        grant = await self.store.read_grant(namespace, name)
        self.reads.put(namespace, name, grant)
        return grant
