"""The kopf registrations: thin handlers that read, call the pure logic, and write status.

Nothing is decided here: ``grants`` decides, ``tenancy`` resolves tenants,
``policy`` asks the PDP, ``providers`` read values, ``delivery`` shapes the
Secret, and ``kube`` writes it. This module only moves data between them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import kopf

from secretgrants import tracing
from secretgrants.api.common import GROUP, VERSION, ConditionStatus, set_condition
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.audit import (
    Auditor,
    EventType,
    MemorySink,
    audit_fields,
    correlated_handler,
)
from secretgrants.audit import Effect as AuditEffect
from secretgrants.audit import subject as _subject
from secretgrants.audit_kafka import KafkaSink, aiokafka_producer
from secretgrants.audit_sinks import KubeEventSink, StdoutSink
from secretgrants.bookkeeping import SpecDigestStorage, progress_storage
from secretgrants.cert_reload import CertReloader
from secretgrants.delivery import ANNOTATION_STATE
from secretgrants.diagnostics import DiagnosticsServer
from secretgrants.errors import SecretGrantsError
from secretgrants.finalizer_policy import FINALIZER
from secretgrants.finalizer_policy import binding as finalizer_binding
from secretgrants.finalizer_policy import policy as finalizer_policy
from secretgrants.grant_reads import GrantReads
from secretgrants.grants import (
    LIVE_PHASES,
    check_request,
    failure_status,
    parse_conditions,
    settled,
)
from secretgrants.heap import HeapTrimmer
from secretgrants.kube import KubeClient
from secretgrants.kube import login as kube_login
from secretgrants.lifecycle import (
    Tending,
    end_grant,
    renew_now,
    revoking,
    secret_of,
)
from secretgrants.metrics import Metrics, serve
from secretgrants.pod_uses import KEEP_WINDOWS, PodWatch, SeenUses
from secretgrants.policy import build_pdp
from secretgrants.providers import ProviderRegistry
from secretgrants.reasons import ConditionType, Phase
from secretgrants.reconcile import audit, authorize_and_deliver, indexed_uid, withdraw_delivery
from secretgrants.restarts import RestartLimiter
from secretgrants.salts import SaltResolver
from secretgrants.secrets_api import IndexTenants, SecretsAPI, settings_options
from secretgrants.serial import RENEWABLE_PHASES, GrantLocks
from secretgrants.settings import Settings
from secretgrants.tenancy import Tenant, TenantSource, env_tenant
from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
from secretgrants.webhook_config import configurations_for

log = logging.getLogger("secretgrants")

GRANTS = (GROUP, VERSION, "secretgrantrequests")
TENANTS = (GROUP, VERSION, "secrettenants")
MAX_BACKOFF_SECONDS = 60.0
KAFKA_FLUSH_SECONDS = 5.0  # at shutdown, queued audit events get this long to reach Kafka
IO_THREADS = 32  # the default executor, where blocking provider calls (hvac) run


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
    tracing.configure(cfg.tracing, service_name=cfg.tracing_service_name)
    memo.fallback = env_tenant(cfg.tenant_id, cfg.tenant_allowed_mounts)
    memo.salt = cfg.tenant_salt.get_secret_value().encode() if cfg.tenant_salt else None
    memo.pdp = build_pdp(cfg) if cfg.enable_authorization else None
    memo.providers = ProviderRegistry.from_settings(cfg)
    # Blocking provider calls (hvac) run in the default executor: size it for
    # concurrent admissions rather than the CPU count.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="secretgrants-io")
    )
    memo.kube = KubeClient()
    # kopf's bookkeeping (handler progress, digests of the last handled spec) goes in
    # status.kopf, so a decision is one status write (see ``bookkeeping``).
    settings.persistence.progress_storage = progress_storage()
    settings.persistence.diffbase_storage = SpecDigestStorage()
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    # kopf waits this long for more events on an object before handling it; the default
    # (0.1 s) is most of a grant's create -> Granted time (bench/grants.py).
    settings.batching.batch_window = 0.01
    # A worker gives its slot back 0.5 s after its object's last event (kopf's default
    # keeps it 5 s): less memory held after a burst (5,000 grants, bench/grants.py: RSS
    # highest 149 MB and 114 MB a minute later, against 158 and 124). No limit on
    # workers by default: kopf sleeps out a handler's retry delay inside its worker, so
    # with a limit, grants retrying through a Vault outage could hold every slot and
    # hold up deletions (revocations) of other grants. With a limit of 128 a burst
    # peaked at 145 MB and the p50 of 1,000 grants at once halved (2.6 s, not 5.5 s).
    settings.queueing.worker_limit = cfg.worker_limit
    settings.batching.idle_timeout = 0.5
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    if not cfg.enable_authorization:
        log.warning(
            "ENABLE_AUTHORIZATION=false: grants are NOT checked by any PDP. "
            "This is a development-only setting; never run it in production."
        )
    if memo.salt is None:
        log.warning(
            "TENANT_SALT is not set: grants of tenants without a saltSecretRef carry no "
            "resource_ref (never the plain URI)"
        )
    log.info("providers configured: %s", ", ".join(memo.providers) or "none")
    memo.metrics = Metrics()
    if cfg.metrics_port:
        serve(memo.metrics, cfg.metrics_port, cfg.metrics_address)
    memo.audit_memory = MemorySink()
    sinks: list[Any] = [memo.audit_memory]
    if "stdout" in cfg.audit_sinks:
        sinks.append(StdoutSink())
    if "events" in cfg.audit_sinks:
        memo.audit_events = KubeEventSink(memo.kube, memo.metrics)
        sinks.append(memo.audit_events)
    memo.audit_kafka = None
    if "kafka" in cfg.audit_sinks and cfg.kafka_bootstrap:
        memo.audit_kafka = KafkaSink(
            aiokafka_producer(
                cfg.kafka_bootstrap,
                security_protocol=cfg.kafka_security_protocol.value,
                ca_file=cfg.kafka_ca_file,
                cert_file=cfg.kafka_cert_file,
                key_file=cfg.kafka_key_file,
                sasl_mechanism=cfg.kafka_sasl_mechanism,
                sasl_username=cfg.kafka_sasl_username,
                sasl_password=cfg.kafka_sasl_password,
            ),
            cfg.kafka_topic,
            buffer_size=cfg.kafka_buffer_size,
            metrics=memo.metrics,
        )
        await memo.audit_kafka.start()  # connects in the background: a broker away delays nothing
        sinks.append(memo.audit_kafka)
    memo.audit = Auditor(sinks)
    memo.diagnostics = None
    if cfg.dev_mode and cfg.diagnostics_port:
        memo.diagnostics = DiagnosticsServer(memo.audit_memory)
        await memo.diagnostics.start(cfg.diagnostics_port)
    memo.salts = SaltResolver(memo.kube.read_secret_key, cfg.operator_namespace, memo.salt)
    memo.restarts = RestartLimiter(cfg.restart_min_interval_seconds)
    # Pod admission and the Secrets API get their own client and connections: a burst
    # of background work (e.g. a thousand grants being decided) never delays a pod.
    memo.front = KubeClient(connections=16, name="front")
    # kopf's indexes are live objects: kept here for work outside kopf's handlers.
    memo.indexes = {
        "namespace_labels": kwargs["namespace_labels"],
        "tenant_sources": kwargs["tenant_sources"],
        "service_accounts": kwargs["service_accounts"],
    }
    memo.grant_locks = GrantLocks()  # every writer of a grant's decision state takes its lock
    memo.admission = PodAdmission(
        memo.front,
        audience=cfg.secrets_audience,
        auditor=memo.audit,
        metrics=memo.metrics,
        renew=lambda namespace, name: renew_now(memo, namespace, name, authorize_and_deliver),
        reads=GrantReads(max_age=cfg.admission_cache_seconds),
        # A ServiceAccount re-created under the bound name is refused before the
        # revocation that follows it (the same index the binding checks read).
        service_account_uid=lambda namespace, name: indexed_uid(memo, namespace, name),
    )
    memo.webhook = None
    service_dns = f"{cfg.webhook_service}.{cfg.operator_namespace}.svc"
    memo.cert = serving_cert(
        cfg.webhook_cert_dir,
        dns_names=(service_dns, f"{service_dns}.cluster.local", "localhost"),
        ips=("127.0.0.1",),
    )
    if cfg.webhook_enabled:
        await _start_webhook(memo, cfg)
    if cfg.webhook_manage_config:
        await _apply_finalizer_policy(memo.kube, cfg)
    else:
        _note_installed_configuration(cfg)
    memo.secrets_api = None
    if cfg.api_port:
        memo.secrets_api = SecretsAPI(
            memo.front,
            memo.providers,
            audience=cfg.secrets_audience,
            auditor=memo.audit,
            metrics=memo.metrics,
            pdp=memo.pdp,
            tenants=IndexTenants(
                kwargs["namespace_labels"], kwargs["tenant_sources"], memo.fallback
            ),
            salts=memo.salts,
            **settings_options(cfg),
        )
        await memo.secrets_api.start(cfg.webhook_address, cfg.api_port, memo.cert)
    memo.cert_reloader = _watch_mounted_cert(memo, cfg)
    # One scheduler for every live grant's renewal and expiry (fed by ``observe_grant``).
    memo.tending = Tending(
        memo, kwargs, authorize_and_deliver, recheck_interval=cfg.recheck_interval_seconds
    )
    memo.tending.scheduler.start()
    memo.seen_uses = memo.pod_watch = None
    if cfg.webhook_enabled:  # the pods the webhook counts uses for: see ``pod_uses``
        memo.seen_uses = SeenUses(KEEP_WINDOWS * cfg.reservation_window_seconds)
        memo.pod_watch = PodWatch(
            memo.kube, memo.seen_uses, namespace=cfg.namespace, metrics=memo.metrics
        )
        memo.pod_watch.start()
    # What startup made (modules, clients, settings) lives as long as the process: move
    # it out of the collector's sight, so a full collection (a pause of ~100 ms on a
    # loaded 2-core machine, measured) scans only what grants and requests allocate.
    gc.collect()
    gc.freeze()
    memo.heap = HeapTrimmer(cfg.heap_trim_seconds)
    memo.heap.start()


def _watch_mounted_cert(memo: kopf.Memo, cfg: Settings) -> CertReloader | None:
    """Serve a renewed mounted certificate (cert-manager) without a restart."""
    if cfg.webhook_cert_dir is None:
        return None  # made at start: it never changes

    async def new_ca(ca_pem: bytes) -> None:
        if cfg.webhook_enabled and cfg.webhook_manage_config:
            for body in configurations_for(cfg, ca_pem):
                await memo.kube.apply_webhook_configuration(body)
            log.info("webhook configurations %r trust the renewed CA", cfg.webhook_config_name)

    ca_file = cfg.webhook_cert_dir / "ca.crt"
    reloader = CertReloader(
        memo.cert.cert_file,
        memo.cert.key_file,
        ca_file if ca_file.exists() else None,
        interval=cfg.cert_reload_seconds,
        on_new_ca=new_ca,
    )
    for server in (memo.get("webhook"), memo.get("secrets_api")):
        if server is not None and server.ssl_context is not None:
            reloader.track(server.ssl_context)
    reloader.start()
    return reloader


async def _apply_finalizer_policy(kube: KubeClient, cfg: Settings) -> None:
    """Grants get the finalizer in their create request (see ``finalizer_policy``)."""
    namespaces = [cfg.namespace] if cfg.namespace else []
    name = cfg.webhook_config_name
    try:
        applied = await kube.apply_cluster_object(
            "mutatingadmissionpolicies", finalizer_policy(name)
        ) and await kube.apply_cluster_object(
            "mutatingadmissionpolicybindings", finalizer_binding(name, namespaces)
        )
    except Exception as err:  # an optimisation: never a reason not to start
        log.warning("the finalizer admission policy could not be applied: %s", err)
        return
    if applied:
        log.info("MutatingAdmissionPolicy %s-finalizer is in place", name)
    else:
        log.info(
            "no MutatingAdmissionPolicy (Kubernetes < 1.36, or no RBAC for it): "
            "the finalizer is added to each grant in a write of its own"
        )


def _note_installed_configuration(cfg: Settings) -> None:
    """The install (the Helm chart) keeps the admission configuration: the operator writes none."""
    log.info(
        "admission configuration %r is installed, not kept by the operator "
        "(SECRETGRANTS_WEBHOOK_MANAGE=false): it creates and patches none",
        cfg.webhook_config_name,
    )
    if cfg.webhook_enabled and cfg.webhook_cert_dir is None:
        log.warning(
            "SECRETGRANTS_WEBHOOK_MANAGE=false without SECRETGRANTS_WEBHOOK_CERT_DIR: the "
            "webhook serves a certificate made at start, which no installed webhook "
            "configuration trusts; mount the certificate whose CA is their caBundle"
        )


async def _start_webhook(memo: kopf.Memo, cfg: Settings) -> None:
    cert = memo.cert
    server = WebhookServer(memo.admission, cert)
    await server.start(cfg.webhook_address, cfg.webhook_port)
    memo.webhook = server
    if not cfg.webhook_manage_config:
        return
    for body in configurations_for(cfg, cert.ca_pem):
        await memo.kube.apply_webhook_configuration(body)
    log.info("webhook configurations %r are in place", cfg.webhook_config_name)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    # The webhook configurations stay: while the operator is away, pods that ask for
    # grants are refused (failurePolicy Fail), never admitted unchecked.
    if memo.get("tending") is not None:
        await memo.tending.scheduler.stop()
    if memo.get("pod_watch") is not None:
        await memo.pod_watch.stop()
    if memo.get("heap") is not None:
        await memo.heap.stop()
    if memo.get("cert_reloader") is not None:
        await memo.cert_reloader.stop()
    if memo.get("webhook") is not None:
        await memo.webhook.stop()
    if memo.get("diagnostics") is not None:
        await memo.diagnostics.stop()
    if memo.get("secrets_api") is not None:
        await memo.secrets_api.stop()
    if memo.get("pdp") is not None:
        await memo.pdp.close()
    if memo.get("providers") is not None:
        await memo.providers.close()
    if memo.get("audit_kafka") is not None:
        await memo.audit_kafka.stop(timeout=KAFKA_FLUSH_SECONDS)
    if memo.get("audit_events") is not None:
        await memo.audit_events.flush()  # Events still being posted, before the clients close
    for name in ("kube", "front"):
        if memo.get(name) is not None:
            await memo[name].aclose()
    tracing.shutdown()  # flush the spans still batched


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
    if not result.permitted:
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


class QuietWatchHandlers(logging.Filter):
    """kopf logs "Handler 'x' succeeded." at INFO for every watch event of every grant;
    for the watch handlers that is one line per event with nothing to say: drop it."""

    QUIET: Final = frozenset({"Handler 'observe_grant' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET


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
