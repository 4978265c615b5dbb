"""The operator's parts, built from the settings at start and closed at the end.

kopf's startup and cleanup handlers (``handlers``) call :func:`tune_kopf`,
:func:`assemble` and :func:`close`: the clients, the audit sinks, the webhook and
Secrets API servers, the scheduler of live grants, the pod watch and the background
loops all live in ``memo``, and are made and stopped here in one order, so that the
handlers stay thin and the wiring is read in one place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import kopf

from secretgrants import tracing
from secretgrants.audit import Auditor, MemorySink
from secretgrants.audit_kafka import KafkaSink, aiokafka_producer
from secretgrants.audit_sinks import KubeEventSink, StdoutSink
from secretgrants.bookkeeping import SpecDigestStorage, progress_storage
from secretgrants.cert_reload import CertReloader
from secretgrants.diagnostics import DiagnosticsServer
from secretgrants.finalizer_policy import FINALIZER
from secretgrants.finalizer_policy import binding as finalizer_binding
from secretgrants.finalizer_policy import policy as finalizer_policy
from secretgrants.grant_reads import GrantReads
from secretgrants.heap import HeapTrimmer
from secretgrants.kube import KubeClient
from secretgrants.lifecycle import Tending, renew_now
from secretgrants.metrics import Metrics, serve
from secretgrants.pod_uses import KEEP_WINDOWS, PodWatch, SeenUses
from secretgrants.policy import build_pdp
from secretgrants.providers import ProviderRegistry
from secretgrants.reconcile import authorize_and_deliver, indexed_uid
from secretgrants.restarts import RestartLimiter
from secretgrants.salts import SaltResolver
from secretgrants.secrets_api import IndexTenants, SecretsAPI, settings_options
from secretgrants.serial import GrantLocks
from secretgrants.settings import Settings
from secretgrants.tenancy import env_tenant
from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
from secretgrants.webhook_config import configurations_for

__all__ = ["QuietWatchHandlers", "assemble", "close", "tune_kopf"]

log = logging.getLogger("secretgrants")

KAFKA_FLUSH_SECONDS: Final = 5.0  # at shutdown, queued audit events get this long to reach Kafka
IO_THREADS: Final = 32  # the default executor, where blocking provider calls (hvac) run


def tune_kopf(settings: kopf.OperatorSettings, cfg: Settings) -> None:
    """kopf's settings, chosen by measurement (bench/grants.py, docs/performance.md)."""
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


async def assemble(memo: kopf.Memo, cfg: Settings, indexes: Mapping[str, Any]) -> None:
    """Build and start every part into ``memo``; ``indexes``: kopf's startup kwargs, which
    hold its live indexes (namespace labels, tenant sources, ServiceAccount UIDs)."""
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
        "namespace_labels": indexes["namespace_labels"],
        "tenant_sources": indexes["tenant_sources"],
        "service_accounts": indexes["service_accounts"],
    }
    memo.grant_locks = GrantLocks()  # every writer of a grant's decision state takes its lock
    memo.seen_uses = memo.pod_watch = None
    if cfg.webhook_enabled:  # the reservation ids the pod watch records: see ``pod_uses``
        memo.seen_uses = SeenUses(KEEP_WINDOWS * cfg.reservation_window_seconds)
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
        expectations=memo.seen_uses,  # each use reserved is expected on a pod
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
                indexes["namespace_labels"], indexes["tenant_sources"], memo.fallback
            ),
            salts=memo.salts,
            **settings_options(cfg),
        )
        await memo.secrets_api.start(cfg.webhook_address, cfg.api_port, memo.cert)
    memo.cert_reloader = _watch_mounted_cert(memo, cfg)
    # One scheduler for every live grant's renewal and expiry (fed by ``observe_grant``).
    memo.tending = Tending(
        memo, indexes, authorize_and_deliver, recheck_interval=cfg.recheck_interval_seconds
    )
    memo.tending.scheduler.start()
    if memo.seen_uses is not None:  # the pods the webhook counts uses for: see ``pod_uses``
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
    if memo.get("secrets_api") is not None:  # the names a DPoP proof's htu may use
        reloader.on_new_certificate(memo.secrets_api.origins.load_certificate)
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


async def close(memo: kopf.Memo) -> None:
    """Stop what :func:`assemble` started, the scheduler first and the clients last."""
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


class QuietWatchHandlers(logging.Filter):
    """kopf logs "Handler 'x' succeeded." at INFO for every watch event of every grant;
    for the watch handlers that is one line per event with nothing to say: drop it."""

    QUIET: Final = frozenset({"Handler 'observe_grant' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET
