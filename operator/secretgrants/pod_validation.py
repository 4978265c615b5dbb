"""The validating webhook: refuse pods that use a delivery Secret the admission did not hand them.

Checked at creation (each delivery Secret a pod uses needs a use reserved for it
in the same request, or a live grant without a use limit), when ephemeral
containers are added (an UPDATE of ``pods/ephemeralcontainers``: only the pod's
own live grants), for containers outside a grant's ``delivery.containers``, and
on any update that changes the pod's ``secretgrants.io/reservations``
annotation. The checks are ``secret_use``'s and ``admission``'s; this module
finds the grants behind the Secrets a pod uses, reads again before refusing on
a kept copy, and audits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from secretgrants.admission import (
    AdmissionDenied,
    check_reservations_kept,
    delivered_secret,
    pod_service_account,
)
from secretgrants.api.common import now
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import EventType
from secretgrants.delivery import DELIVERY_PREFIX, delivery_secret_name
from secretgrants.pod_admission_base import PodAdmissionBase
from secretgrants.secret_use import (
    added_ephemeral_containers,
    check_delivery_containers,
    check_delivery_use,
    check_ephemeral_use,
    container_secret_refs,
    direct_secret_mounts,
    mounted_secrets,
    secret_users,
)

__all__ = ["PodValidation"]

EPHEMERAL_ADMITTED: Final = "EphemeralContainerAdmitted"  # the reason of its pod_admitted record


class PodValidation(PodAdmissionBase):
    """``/validate-pods``: direct mounts, ephemeral containers, delivery containers, and
    reservations kept."""

    async def _delivering(
        self, namespace: str, candidates: set[str]
    ) -> list[tuple[dict[str, Any], str]]:
        """The grants whose delivery Secret is one of ``candidates``.

        A delivery Secret's name is ``sg-<grant>-<hash of grant>``: the grant is read by
        name (one GET), and only names too long to invert fall back to listing the grants.
        """
        found: list[tuple[dict[str, Any], str]] = []
        unresolved: set[str] = set()
        for secret_name in sorted(candidates):
            guess = secret_name[3:-9]
            if not guess or delivery_secret_name(guess) != secret_name:
                unresolved.add(secret_name)
                continue
            grant = self.reads.get(namespace, guess) or await self._read(namespace, guess)
            if grant is not None and delivered_secret(grant) == secret_name:
                found.append((grant, secret_name))
        if any(len(n) > 240 for n in unresolved):  # grant names longer than 230 characters
            for grant in await self.store.list_grants(namespace):
                if delivered_secret(grant) in unresolved:
                    found.append((grant, str(delivered_secret(grant))))
        return found

    async def validate(
        self,
        pod: Mapping[str, Any],
        namespace: str,
        *,
        dry_run: bool = False,
        correlation_id: str | None = None,
    ) -> None:
        """Refuse (and audit) a pod that uses a delivery Secret the mutating webhook did not
        give it in this request, or in a container outside the grant's
        ``delivery.containers``. A refusal on a kept copy of the grant is made again on a
        fresh read (the copy may predate the use reserved moments ago)."""
        uid = self._known_uid(namespace, pod_service_account(pod))
        at = now()

        def check(name: str, grant: Mapping[str, Any], secret_name: str) -> None:
            check_delivery_use(
                name, grant, secret_name, pod, at, dry_run=dry_run, service_account_uid=uid
            )
            check_delivery_containers(name, grant, secret_name, pod)

        await self._audited(
            direct_secret_mounts(pod), check, pod, namespace, dry_run, correlation_id
        )

    async def validate_ephemeral(
        self,
        pod: Mapping[str, Any],
        old_pod: Mapping[str, Any] | None,
        namespace: str,
        *,
        dry_run: bool = False,
        correlation_id: str | None = None,
    ) -> None:
        """Refuse (and audit) ephemeral containers that use a delivery Secret the pod may not.

        ``pod`` is the pod with its new ``spec.ephemeralContainers``, ``old_pod`` the pod
        before (an UPDATE of ``pods/ephemeralcontainers``). Only the added containers are
        judged: the rest of the pod was admitted already. What they read through ``env``
        and ``envFrom`` must be the pod's own live grant; what they mount can be none but
        the pod's own volumes, and a grant that names its ``delivery.containers`` keeps
        both out of containers not in that list. Each grant an added container is allowed
        to mount or read is audited as ``pod_admitted`` (except on a dry run).
        """
        uid = self._known_uid(namespace, pod_service_account(pod))
        added = added_ephemeral_containers(pod, old_pod)
        read = container_secret_refs(added)
        at = now()

        def check(name: str, grant: Mapping[str, Any], secret_name: str) -> None:
            if secret_name in read:
                check_ephemeral_use(name, grant, secret_name, pod, at, service_account_uid=uid)
            check_delivery_containers(name, grant, secret_name, pod, added=added)

        used = read | mounted_secrets(pod, added)
        allowed = await self._audited(used, check, pod, namespace, dry_run, correlation_id)
        if dry_run or not allowed:
            return
        for name, grant in allowed.items():
            users = ", ".join(map(repr, secret_users(pod, added, str(delivered_secret(grant)))))
            await self._audit_pod(
                EventType.POD_ADMITTED,
                AuditEffect.PERMIT,
                EPHEMERAL_ADMITTED,
                namespace,
                pod,
                name,
                grant,
                correlation_id,
                message=f"ephemeral container {users} uses its delivery Secret"[:512],
            )

    async def validate_update(
        self,
        pod: Mapping[str, Any],
        old_pod: Mapping[str, Any] | None,
        namespace: str,
        *,
        dry_run: bool = False,
        correlation_id: str | None = None,
    ) -> None:
        """Refuse (and audit) an update of a created pod that changes or removes its
        ``secretgrants.io/reservations`` annotation: the uses it records are confirmed
        by finding them on pods, and a use no pod carries would be given back."""
        try:
            check_reservations_kept(pod, old_pod)
        except AdmissionDenied as denied:
            if not dry_run:
                await self._audit_denied(denied, namespace, pod, {}, correlation_id)
            raise

    async def _audited(
        self,
        used: set[str],
        check: Callable[[str, Mapping[str, Any], str], None],
        pod: Mapping[str, Any],
        namespace: str,
        dry_run: bool,
        correlation_id: str | None,
    ) -> dict[str, dict[str, Any]]:
        """The grants whose delivery Secret the pod may use; a refusal is audited, then raised."""
        grants: dict[str, dict[str, Any]] = {}
        try:
            return await self._check_delivery_uses(used, check, namespace, grants)
        except AdmissionDenied as denied:
            if not dry_run:
                await self._audit_denied(denied, namespace, pod, grants, correlation_id)
            raise

    async def _check_delivery_uses(
        self,
        used: set[str],
        check: Callable[[str, Mapping[str, Any], str], None],
        namespace: str,
        grants: dict[str, dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        """``check`` each grant whose delivery Secret is one of the Secrets ``used``; the
        grants that passed, by name.

        Delivery Secrets are found through the grants' status (the operator has no
        right to read Secrets back), and only for pods that use an ``sg-`` Secret.
        """
        passed: dict[str, dict[str, Any]] = {}
        candidates = {n for n in used if n.startswith(DELIVERY_PREFIX)}
        if not candidates:
            return passed
        for grant, secret_name in await self._delivering(namespace, candidates):
            name = str((grant.get("metadata") or {}).get("name"))
            grants[name] = grant
            try:
                check(name, grant, secret_name)
            except AdmissionDenied:
                fresh = await self._read(namespace, name)  # refuse only on what the API says now
                if fresh is None or delivered_secret(fresh) != secret_name:
                    continue
                grants[name] = fresh
                check(name, fresh, secret_name)
            passed[name] = grants[name]
        return passed
