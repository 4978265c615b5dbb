"""The pod admission webhook: an HTTPS server in the operator process, the PEP at the point of use.

``/mutate-pods`` checks each grant a pod names, reserves one use per grant
(compare-and-swap on the grant status), and injects the volumes.
``/validate-pods`` refuses pods that use a delivery Secret the admission did
not hand them (for a grant with a use limit: without a use reserved in the
grant's status), or in a container outside the grant's ``delivery.containers``,
at creation and when ephemeral containers are added (an UPDATE of
``pods/ephemeralcontainers``), and refuses updates of a created pod that change
its ``secretgrants.io/reservations`` annotation. Decisions live in
``admission``, ``injection``, ``secret_use`` and ``uses``; this module reads,
retries and answers AdmissionReviews.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import random
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from secretgrants import tracing
from secretgrants.admission import (
    DRY_RUN_RESERVATION,
    AdmissionDenied,
    admits,
    check_grant_for_pod,
    check_reservations_kept,
    delivered_secret,
    metered,
    pod_service_account,
    requested_grants,
    service_account_replaced,
)
from secretgrants.api.common import now
from secretgrants.audit import Auditor, EventType
from secretgrants.audit import Effect as AuditEffect
from secretgrants.delivery import DELIVERY_PREFIX, delivery_secret_name
from secretgrants.grant_reads import GrantReads
from secretgrants.injection import GrantMount, grant_mount, injection_patch
from secretgrants.metrics import Metrics
from secretgrants.pki import new_ca
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
from secretgrants.uses import release, reserve
from secretgrants.webhook_config import MUTATE_PATH, VALIDATE_PATH

__all__ = ["PodAdmission", "ServingCert", "WebhookServer", "serving_cert"]

log = logging.getLogger("secretgrants.webhook")

MAX_CAS_ATTEMPTS = 60
EPHEMERAL_ADMITTED: Final = "EphemeralContainerAdmitted"  # the reason of its pod_admitted record


class GrantStore(Protocol):
    """What the admission needs of the API (KubeClient implements it)."""

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None: ...

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ServingCert:
    cert_file: Path
    key_file: Path
    ca_pem: bytes

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def serving_cert(
    cert_dir: Path | None, *, dns_names: tuple[str, ...], ips: tuple[str, ...]
) -> ServingCert:
    """Mounted files (tls.crt, tls.key, ca.crt, e.g. from cert-manager), else a fresh self-signed CA."""
    if cert_dir is not None:
        ca_file = cert_dir / "ca.crt"
        ca = ca_file.read_bytes() if ca_file.exists() else (cert_dir / "tls.crt").read_bytes()
        return ServingCert(cert_dir / "tls.crt", cert_dir / "tls.key", ca)
    ca_pair = new_ca("secretgrants-webhook-ca")
    leaf = ca_pair.issue(dns_names[0], dns_names=dns_names, ips=ips, server=True)
    directory = Path(tempfile.mkdtemp(prefix="secretgrants-webhook-"))
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(leaf.cert_pem + ca_pair.cert_pem)
    key_file.touch(mode=0o600)
    key_file.write_bytes(leaf.key_pem)
    return ServingCert(cert_file, key_file, ca_pair.cert_pem)


# Refusals that a fresh PDP decision can lift (when the grant's renewal is on).
RENEWABLE_REFUSALS: Final = frozenset({"UsesExhausted", "GrantExpired"})


class PodAdmission:
    """The checks and the use accounting, over a GrantStore."""

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
    ) -> None:
        self.store = store
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
                rid = uuid.uuid4().hex[:16]
                injected[name] = rid
                if not metered(grants[name]):
                    continue  # no use limit: nothing to count, no write (the pod is audited)
                await self._reserve(namespace, name, rid, service_account, correlation_id)
                reserved[name] = rid
        except BaseException:
            await asyncio.shield(self._release_all(namespace, reserved))
            raise
        return injection_patch(pod, mounts, injected)

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The grant from the API, kept a moment for the next admissions."""
        grant = await self.store.read_grant(namespace, name)
        self.reads.put(namespace, name, grant)
        return grant

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


def _review_response(uid: str, *, patch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def _review_denial(uid: str, denied: AdmissionDenied) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {
                "code": denied.code,
                "reason": denied.reason,
                "message": f"secretgrants: {denied.message}",
            },
        },
    }


class WebhookServer:
    """aiohttp over TLS; one AdmissionReview per request."""

    def __init__(self, admission: PodAdmission, cert: ServingCert) -> None:
        self.admission = admission
        self.cert = cert
        self._runner: web.AppRunner | None = None
        self.ssl_context: ssl.SSLContext | None = None  # once started
        self.latencies: list[float] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post(MUTATE_PATH, self._mutate)
        app.router.add_post(VALIDATE_PATH, self._validate)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self, address: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self.ssl_context = self.cert.ssl_context()
        site = web.TCPSite(self._runner, address, port, ssl_context=self.ssl_context)
        await site.start()
        log.info("admission webhook listening on https://%s:%d", address, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _mutate(self, request: web.Request) -> web.Response:
        with tracing.span(tracing.SPAN_ADMISSION, operation="mutate"):
            return await self._review(request, mutate=True)

    async def _validate(self, request: web.Request) -> web.Response:
        with tracing.span(tracing.SPAN_ADMISSION, operation="validate"):
            return await self._review(request, mutate=False)

    async def _review(self, request: web.Request, *, mutate: bool) -> web.Response:
        started = time.perf_counter()
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
            pod = req.get("object") or {}
            namespace = str(req.get("namespace") or (pod.get("metadata") or {}).get("namespace"))
            # An UPDATE of a created pod (its metadata), or of pods/ephemeralcontainers
            # (an ephemeral container added): the pod, whole, before and after.
            update = req.get("operation") == "UPDATE"
            ephemeral = update and req.get("subResource") == "ephemeralcontainers"
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"title": "malformed AdmissionReview", "status": 400}, status=400
            )
        pod_name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get(
            "generateName", "?"
        )
        tracing.annotate(grant_namespace=namespace)
        dry_run, old = bool(req.get("dryRun")), req.get("oldObject")
        adm = self.admission
        try:
            patch = None
            if mutate:
                patch = await adm.mutate(pod, namespace, dry_run=dry_run, correlation_id=uid)
                log.info("pod %s/%s admitted with its grants", namespace, pod_name)
            elif ephemeral:
                await adm.validate_ephemeral(
                    pod, old, namespace, dry_run=dry_run, correlation_id=uid
                )
            elif update:
                await adm.validate_update(pod, old, namespace, dry_run=dry_run, correlation_id=uid)
            else:
                await adm.validate(pod, namespace, dry_run=dry_run, correlation_id=uid)
            body = _review_response(uid, patch=patch)
            tracing.annotate(allowed=True)
        except AdmissionDenied as denied:
            log.info("pod %s/%s denied: %s", namespace, pod_name, denied.reason)
            tracing.annotate(allowed=False, reason=denied.reason)
            body = _review_denial(uid, denied)
        except Exception:
            log.exception("admission of pod %s/%s failed", namespace, pod_name)
            tracing.annotate(allowed=False, reason="InternalError")
            body = _review_denial(
                uid,
                AdmissionDenied(
                    "InternalError", "the admission check failed; see the operator log", code=500
                ),
            )
        elapsed = time.perf_counter() - started
        self.admission.metrics.admission_latency.observe(elapsed)
        self.latencies.append(elapsed)
        del self.latencies[:-10_000]
        return web.json_response(body)
