"""OpenTelemetry spans of a grant, the traceparent sent to PDPs, trace ids in audit events.

What goes in: the grant handler run in-process on its real parts (the YAML
provider on a file, the built-in PDP, or the project's own AuthZEN server on
127.0.0.1, salts, audit, metrics) with a small in-memory stand-in for the
Kubernetes client (the e2e tests cover the real apiserver), and the SDK's
``InMemorySpanExporter``. What is asserted: the span tree of a permit and of
a deny (names, parents, attributes), the ``traceparent`` header and the
AuthZEN context ids the PDP received, audit events carrying the span's ids,
that no span holds the secret value, the URI, its path or key name, the
no-op path (tracing off, OpenTelemetry absent), and OTLP/HTTP export.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import kopf
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from secretgrants import handlers, tracing
from secretgrants.audit import AuditEvent, Auditor, EventType, MemorySink
from secretgrants.metrics import Metrics
from secretgrants.policy import (
    AuthZENClient,
    AuthZENServer,
    BuiltinPDP,
    BuiltinPolicy,
    HTTPOptions,
    OPAClient,
)
from secretgrants.providers import ProviderRegistry, YAMLFileProvider
from secretgrants.redaction import MASK, register_secret
from secretgrants.salts import SaltResolver
from secretgrants.serial import GrantLocks
from secretgrants.settings import Settings
from secretgrants.tenancy import env_tenant

SECRET = "Tr4ce-S3cret-VALUE-91c2"
PATH = "tracing-app/db"
KEY = "pw-key-5d1e"
URI = f"yaml://dev/{PATH}#{KEY}"
NS = "tracing-ns"
SA_UID = "sa-uid-1234"
POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "tracing-app-read",
            "subjects": [{"service_account": "app"}],
            "resources": ["yaml://dev/tracing-app/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 120, "max_uses": 3},
        }
    ],
}


class KubeStandIn:
    """The two Kubernetes calls a grant makes, in memory (the apiserver is in the e2e tests)."""

    def __init__(self) -> None:
        self.secrets: list[dict[str, Any]] = []

    async def service_account_uid(self, namespace: str, name: str) -> str | None:
        return SA_UID if name in ("app", "stranger") else None

    async def upsert_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets.append(body)

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        raise AssertionError("nothing was delivered before, nothing to withdraw")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert tracing.configure(tracing.Mode.CONSOLE, exporter=spans)
    yield spans
    tracing.shutdown()


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault.yaml"
    path.write_text(yaml.safe_dump({"dev": {"tracing-app": {"db": {KEY: SECRET, "user": "u"}}}}))
    return path


@pytest.fixture
def policy() -> BuiltinPolicy:
    return BuiltinPolicy.from_yaml(yaml.safe_dump(POLICY))


def make_memo(vault_file: Path, pdp: Any) -> kopf.Memo:
    cfg = Settings(tenant_id="tenant-a", tenant_allowed_mounts=["yaml://dev"])
    memo = kopf.Memo()
    memo.config = cfg
    memo.fallback = env_tenant(cfg.tenant_id, cfg.tenant_allowed_mounts)
    memo.pdp = pdp
    memo.providers = ProviderRegistry({"yaml": YAMLFileProvider(vault_file)})
    memo.kube = KubeStandIn()
    memo.salts = SaltResolver(_no_secret, "secretgrants-system", b"tracing-salt")
    memo.metrics = Metrics()
    memo.audit_memory = MemorySink()
    memo.audit = Auditor([memo.audit_memory])
    memo.grant_locks = GrantLocks()
    return memo


async def _no_secret(namespace: str, name: str, key: str) -> bytes | None:
    return None


async def reconcile(memo: kopf.Memo, name: str, sa: str = "app") -> dict[str, Any]:
    """The create handler of one grant, as kopf calls it; returns the status it patched."""
    patch = kopf.Patch()
    spec = {"secretUri": URI, "serviceAccountName": sa, "purpose": "read", "justification": "t"}
    await handlers.reconcile_grant(
        spec=spec,
        meta={"generation": 1},
        status={},
        namespace=NS,
        name=name,
        uid=f"uid-{name}",
        patch=patch,
        memo=memo,
        retry=0,
        reason="create",
        namespace_labels={},
        tenant_sources={},
    )
    return dict(patch.status)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str, **attrs: object) -> ReadableSpan:
    found = [
        s
        for s in by_name(spans, name)
        if all((s.attributes or {}).get(tracing.ATTRIBUTES[k]) == v for k, v in attrs.items())
    ]
    assert len(found) == 1, [(s.name, dict(s.attributes or {})) for s in spans]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def attr(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {}).get(tracing.ATTRIBUTES[key])


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def assert_nothing_secret(spans: tuple[ReadableSpan, ...]) -> None:
    text = "\n".join(s.to_json() for s in spans)
    for needle in (SECRET, URI, "yaml://", PATH, "tracing-app", KEY):
        assert needle not in text, needle


async def test_permit_span_tree(
    exporter: InMemorySpanExporter, vault_file: Path, policy: BuiltinPolicy
) -> None:
    memo = make_memo(vault_file, BuiltinPDP(policy))
    status = await reconcile(memo, "db")
    assert status["phase"] == "Granted"
    spans = exporter.get_finished_spans()

    root = one(spans, tracing.SPAN_GRANT)
    guard = one(spans, tracing.SPAN_GUARD)
    pdp = one(spans, tracing.SPAN_PDP)
    metadata = one(spans, tracing.SPAN_PROVIDER, operation="metadata")
    read = one(spans, tracing.SPAN_PROVIDER, operation="read")
    delivery = one(spans, tracing.SPAN_DELIVERY)
    assert len(spans) == 6
    root_id = root.get_span_context().span_id  # type: ignore[union-attr]
    assert root.parent is None
    assert parent_of(guard) == parent_of(pdp) == parent_of(read) == parent_of(delivery) == root_id
    assert parent_of(metadata) == pdp.get_span_context().span_id  # type: ignore[union-attr]
    assert {hex_ids(s)[0] for s in spans} == {hex_ids(root)[0]}
    # in order: guard, then PDP (with the metadata read), then the value, then delivery
    assert guard.end_time <= pdp.start_time  # type: ignore[operator]
    assert pdp.end_time <= read.start_time <= read.end_time <= delivery.start_time  # type: ignore[operator]

    assert attr(root, "grant_namespace") == NS and attr(root, "grant_name") == "db"
    assert attr(root, "purpose") == "read" and attr(root, "tenant") == "tenant-a"
    assert attr(root, "trigger") == "create" and attr(root, "phase") == "Granted"
    assert attr(root, "resource_ref") == status["resourceRef"]
    assert str(status["resourceRef"]).startswith("hmac-sha256:")
    assert attr(pdp, "pdp_kind") == "builtin" and attr(pdp, "effect") == "permit"
    assert attr(pdp, "reason") == "Permitted"
    assert attr(pdp, "decision_id") == status["decision"]["id"]
    assert attr(read, "provider") == "yaml" and attr(delivery, "key_count") == 1
    assert all(s.status.is_ok for s in spans)
    assert_nothing_secret(spans)
    # the value did reach the delivery Secret: the trace is clean, not empty-handed
    (secret,) = memo.kube.secrets
    assert secret["data"] == {KEY: base64.b64encode(SECRET.encode()).decode()}


async def test_deny_span_tree(
    exporter: InMemorySpanExporter, vault_file: Path, policy: BuiltinPolicy
) -> None:
    memo = make_memo(vault_file, BuiltinPDP(policy))
    status = await reconcile(memo, "nope", sa="stranger")
    assert status["phase"] == "Denied"
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(
        [tracing.SPAN_GRANT, tracing.SPAN_GUARD, tracing.SPAN_PDP, tracing.SPAN_PROVIDER]
    )
    root, pdp = one(spans, tracing.SPAN_GRANT), one(spans, tracing.SPAN_PDP)
    assert parent_of(pdp) == root.get_span_context().span_id  # type: ignore[union-attr]
    assert attr(pdp, "effect") == "deny" and attr(pdp, "pdp_kind") == "builtin"
    assert attr(pdp, "reason") == "Denied" == status["conditions"][0]["reason"]
    assert attr(pdp, "decision_id") == status["decision"]["id"]
    assert pdp.status.is_ok  # a deny is the PDP's answer, not a failure
    assert attr(root, "phase") == "Denied" and attr(root, "grant_name") == "nope"
    assert memo.kube.secrets == []  # nothing delivered, so no provider read and no delivery span
    assert_nothing_secret(spans)


async def test_guard_rejection_is_a_failed_guard_span(exporter: InMemorySpanExporter) -> None:
    memo = make_memo(Path("/nonexistent"), None)
    memo.fallback = env_tenant("tenant-a", ["yaml://elsewhere"])
    status = await reconcile(memo, "outside")
    assert status["phase"] == "Rejected"
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == [tracing.SPAN_GRANT, tracing.SPAN_GUARD]
    guard, root = one(spans, tracing.SPAN_GUARD), one(spans, tracing.SPAN_GRANT)
    assert not guard.status.is_ok and attr(guard, "reason") == "MountNotAllowed"
    assert attr(guard, "error_type") == "MountNotAllowed"
    assert attr(root, "phase") == "Rejected" and attr(root, "reason") == "MountNotAllowed"
    (event,) = memo.audit_memory.events
    assert (event.trace_id, event.span_id) == hex_ids(root)
    assert_nothing_secret(spans)


async def test_audit_events_carry_the_span_ids(
    exporter: InMemorySpanExporter, vault_file: Path, policy: BuiltinPolicy
) -> None:
    memo = make_memo(vault_file, BuiltinPDP(policy))
    await reconcile(memo, "db")
    spans = exporter.get_finished_spans()
    events: dict[EventType, AuditEvent] = {e.type: e for e in memo.audit_memory.events}
    assert set(events) == {EventType.DECISION, EventType.DELIVERY_WRITTEN}
    decision, delivered = events[EventType.DECISION], events[EventType.DELIVERY_WRITTEN]
    assert (decision.trace_id, decision.span_id) == hex_ids(one(spans, tracing.SPAN_PDP))
    assert (delivered.trace_id, delivered.span_id) == hex_ids(one(spans, tracing.SPAN_DELIVERY))
    # ids given by the caller win over the current span's
    given = await memo.audit.record(
        type=EventType.EXPIRED, effect="deny", reason="Expired", trace_id="0" * 31 + "1"
    )
    assert given.trace_id == "0" * 31 + "1" and given.span_id is None


async def test_traceparent_and_context_ids_reach_the_authzen_pdp(
    exporter: InMemorySpanExporter, vault_file: Path, policy: BuiltinPolicy
) -> None:
    with AuthZENServer(policy, record_bodies=True) as server:
        client = AuthZENClient(server.base_url)
        try:
            status = await reconcile(make_memo(vault_file, client), "db")
        finally:
            await client.close()
        served = list(server.requests)
    assert status["phase"] == "Granted"
    spans = exporter.get_finished_spans()
    pdp = one(spans, tracing.SPAN_PDP)
    assert attr(pdp, "pdp_kind") == "authzen"
    trace_id, span_id = hex_ids(pdp)
    flags = int(pdp.get_span_context().trace_flags)  # type: ignore[union-attr]
    assert flags & 1  # sampled
    expected = f"00-{trace_id}-{span_id}-{flags:02x}"
    evaluation = [r for r in served if r.method == "POST"]
    assert len(evaluation) == 1 and evaluation[0].traceparent == expected
    assert all(r.traceparent == expected for r in served)  # discovery too
    assert evaluation[0].body is not None
    context = json.loads(evaluation[0].body)["context"]
    assert (context["trace_id"], context["span_id"], context["traceparent"]) == (
        trace_id,
        span_id,
        expected,
    )


async def test_traceparent_reaches_an_opa_endpoint(
    exporter: InMemorySpanExporter, policy: BuiltinPolicy
) -> None:
    """The OPA client sends the header too. The listener is the project's AuthZEN server,
    which records every request's ``traceparent`` (it answers OPA's path with 404, so the
    decision is a fail-closed deny: only the header is asserted here)."""
    from secretgrants.policy.model import AccessRequest, RequestContext, Resource, Subject

    with AuthZENServer(policy) as server:
        client = OPAClient(server.base_url, path="secretgrants/authz")
        try:
            with tracing.span(tracing.SPAN_PDP, pdp_kind="opa"):
                parent = tracing.traceparent()
                request = AccessRequest(
                    subject=Subject(namespace=NS, service_account="app"),
                    resource=Resource.from_uri("yaml://dev/tracing-app/db"),
                    purpose="read",  # type: ignore[arg-type]
                    context=RequestContext(traceparent=parent),
                )
                decision = await client.evaluate(request)
        finally:
            await client.close()
        served = list(server.requests)
    assert not decision.permitted
    assert parent is not None and [r.traceparent for r in served] == [parent]
    assert served[0].path == "/v1/data/secretgrants/authz"


async def test_off_means_no_spans_no_ids_no_header(vault_file: Path, policy: BuiltinPolicy) -> None:
    assert tracing.configure("off") is False
    assert not tracing.enabled()
    with tracing.span(tracing.SPAN_GRANT, grant_name="x") as span:
        span.set(phase="Granted")
        span.fail("Whatever")
        assert tracing.current_ids() == (None, None) and tracing.traceparent() is None
    with AuthZENServer(policy, record_bodies=True) as server:
        client = AuthZENClient(server.base_url)
        try:
            memo = make_memo(vault_file, client)
            status = await reconcile(memo, "db")
        finally:
            await client.close()
        served = list(server.requests)
    assert status["phase"] == "Granted"
    assert served and all(r.traceparent is None for r in served)
    assert all(e.trace_id is None and e.span_id is None for e in memo.audit_memory.events)
    context = json.loads(served[-1].body or b"{}")["context"]
    assert context["trace_id"] is None and context["traceparent"] is None


def test_attribute_rules_hold_on_and_off(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(TypeError, match="not a span attribute"):
        with tracing.span(tracing.SPAN_GRANT, secret_uri="x"):
            pass
    register_secret(SECRET)  # as the provider read path does for every value it hands out
    with tracing.span(tracing.SPAN_GRANT, grant_name=URI) as span:
        span.set(reason=f"bad {SECRET}")
    (recorded,) = exporter.get_finished_spans()
    assert attr(recorded, "grant_name") == MASK
    assert attr(recorded, "reason") == f"bad {MASK}"
    tracing.shutdown()
    with pytest.raises(TypeError, match="not a span attribute"):
        with tracing.span(tracing.SPAN_GRANT, path="x"):
            pass
    with pytest.raises(TypeError):
        tracing.annotate(value="x")


def test_an_exception_marks_the_span_by_type_not_message(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError):
        with tracing.span(tracing.SPAN_PROVIDER, operation="read"):
            raise RuntimeError(f"failed reading {URI}")
    (recorded,) = exporter.get_finished_spans()
    assert not recorded.status.is_ok and recorded.status.description == "RuntimeError"
    assert attr(recorded, "error_type") == "RuntimeError" and not recorded.events
    assert URI not in recorded.to_json()


def test_absent_opentelemetry_is_a_warning_and_no_ops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import raises
    with caplog.at_level(logging.WARNING, "secretgrants.tracing"):
        assert tracing.configure("console") is False
    assert "not installed" in caplog.text and "secretgrants[tracing]" in caplog.text
    assert not tracing.enabled()


def test_the_package_imports_and_runs_without_opentelemetry() -> None:
    """A fresh interpreter in which every ``opentelemetry`` import fails, as without the extra."""
    code = """
import sys, asyncio
sys.modules["opentelemetry"] = None
import secretgrants.handlers, secretgrants.webhook, secretgrants.secrets_api
from secretgrants import tracing
from secretgrants.audit import Auditor
assert tracing.configure("console") is False and tracing.configure("otlp") is False
with tracing.span(tracing.SPAN_GRANT, grant_name="x") as span:
    span.set(phase="Granted")
    assert tracing.traceparent() is None and tracing.current_ids() == (None, None)
event = asyncio.run(Auditor().record(type="decision", effect="permit", reason="Permitted"))
assert event.trace_id is None
print("no-op ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "no-op ok" in proc.stdout


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_export_honours_the_standard_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the OTLP/HTTP exporter sends, captured on 127.0.0.1 and decoded with the OTLP
    protobuf schema."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        assert tracing.configure("otlp", service_name="sg-test")
        with tracing.span(tracing.SPAN_GRANT, grant_namespace=NS, grant_name="db"):
            with tracing.span(tracing.SPAN_PDP, effect="permit"):
                pass
    finally:
        tracing.shutdown()  # flushes the batch
        server.shutdown()
        server.server_close()
    assert _Collector.received, "nothing was exported"
    path, content_type, body = _Collector.received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    export = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "sg-test"
    names = {s.name for scope in resource_spans.scope_spans for s in scope.spans}
    assert names == {tracing.SPAN_GRANT, tracing.SPAN_PDP}


async def test_an_unreachable_pdp_fails_the_pdp_span(
    exporter: InMemorySpanExporter, vault_file: Path, policy: BuiltinPolicy
) -> None:
    with AuthZENServer(policy) as server:
        base_url = server.base_url
    client = AuthZENClient(base_url, http=HTTPOptions(timeout=1.0, retries=0))  # stopped: refused
    try:
        with pytest.raises(kopf.TemporaryError):
            await reconcile(make_memo(vault_file, client), "db")
    finally:
        await client.close()
    spans = exporter.get_finished_spans()
    pdp, root = one(spans, tracing.SPAN_PDP), one(spans, tracing.SPAN_GRANT)
    assert not pdp.status.is_ok and pdp.status.description == "PDPUnavailable"
    assert attr(pdp, "effect") == "error" and attr(pdp, "pdp_kind") == "authzen"
    assert not root.status.is_ok and attr(root, "error_type") == "TemporaryError"
    assert not by_name(spans, tracing.SPAN_DELIVERY)


class GrantStoreStandIn:
    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def replace_grant_status(
        self, namespace: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        raise AssertionError("no grant, no use counted")

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]:
        return []


async def test_pod_admission_has_its_span(exporter: InMemorySpanExporter) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
    from secretgrants.webhook_config import MUTATE_PATH, VALIDATE_PATH

    cert = serving_cert(None, dns_names=("localhost",), ips=("127.0.0.1",))
    server = WebhookServer(PodAdmission(GrantStoreStandIn(), audience=None), cert)

    def review(uid: str, annotations: dict[str, str]) -> dict[str, Any]:
        pod = {
            "metadata": {"name": "p", "namespace": NS, "annotations": annotations},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c"}]},
        }
        return {"request": {"uid": uid, "namespace": NS, "object": pod}}

    async with TestClient(TestServer(server.app(), host="127.0.0.1")) as client:
        denied = await client.post(MUTATE_PATH, json=review("1", {"secretgrants.io/grants": "db"}))
        allowed = await client.post(VALIDATE_PATH, json=review("2", {}))
        assert (await denied.json())["response"]["allowed"] is False
        assert (await allowed.json())["response"]["allowed"] is True
    spans = exporter.get_finished_spans()
    mutate = one(spans, tracing.SPAN_ADMISSION, operation="mutate")
    validate = one(spans, tracing.SPAN_ADMISSION, operation="validate")
    assert attr(mutate, "allowed") is False and attr(mutate, "reason") == "GrantNotFound"
    assert attr(mutate, "grant_namespace") == NS and attr(validate, "allowed") is True
    assert mutate.parent is None and validate.parent is None
