"""The whole flow once, with every sink on: every event type, every field, no leak anywhere.

What goes in: one operator watching this test's namespace with the audit sinks
``stdout,events,kafka`` (real KRaft broker), console traces, metrics, a tenant
salt, the built-in PDP and the real Vault. The flow: a guard rejection, a PDP
deny, a provider error, a delivery the apiserver would refuse, a permit and its delivery, an admitted pod (a use
reserved), a refused pod, a use given back, a renewal, an expiry, a revocation,
a refused Secrets API call and a Secrets API read.

What is asserted: each of those event types reaches stdout and Kafka with the
fields a security team needs (subject, tenant, purpose, effect, resource_ref,
decision id where a decision was made, correlation id, trace and span ids,
grant, reason, time); and the secret value appears in no log line, audit
record, Kafka message, Kubernetes Event, span, metric or grant status, while the
plain URI, path and key name appear in no audit record, Event or span.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest

from secretgrants.audit import EventType, resource_ref
from secretgrants.devenv import KafkaServer, VaultDevServer
from secretgrants.uri import parse_secret_uri
from tests.conftest import SECRET_VALUE, TEST_SALT, Cluster, OperatorProcess, webhook_config_name
from tests.e2e.kube import apply, eventually, get, grant, tenant
from tests.e2e.test_audit_kafka import read_topic
from tests.e2e.test_pod_admission import create_pod, pod, wait_phase

PATH = "e2e/db"
URI = f"vault+kv2://secret/{PATH}#password"
# The lifecycle of a grant, each produced below. SECRET_MANAGED (a permitted management
# call) is covered by tests/e2e/test_secrets_api_management.py.
FLOW_TYPES = {t.value for t in EventType} - {EventType.SECRET_MANAGED.value}
ROTATED_VALUE = "rot-VALUE-5e1d-first"  # the renewed grant's value, searched for like SECRET_VALUE
DECIDED = {"decision", "delivery_written", "renewed"}  # events that follow a PDP decision


@pytest.fixture
def flow_namespace(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[namespace]))
    for sa in ("app", "other"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    yield namespace
    cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def test_every_event_type_with_every_field_and_no_leak_in_any_output(
    cluster: Cluster,
    flow_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    kafka: KafkaServer,
    vault: VaultDevServer,
    tmp_path: Path,
) -> None:
    ns = flow_namespace
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    op = start_operator_for(
        SECRETGRANTS_AUDIT_SINKS="stdout,events,kafka",
        SECRETGRANTS_KAFKA_BOOTSTRAP=kafka.bootstrap,
        SECRETGRANTS_KAFKA_TOPIC=topic,
        SECRETGRANTS_TRACING="console",
    )
    kv = hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2
    kv.create_or_update_secret(
        path="e2e/rot", secret={"password": ROTATED_VALUE}, mount_point="secret"
    )

    # guard rejection, PDP deny, provider error
    apply(cluster, grant("outside", ns, "vault+kv2://forbidden/e2e/db#password"))
    apply(cluster, grant("denied", ns, URI, sa="other"))
    apply(cluster, grant("missing", ns, "vault+kv2://secret/e2e/absent#password"))
    wait_phase(cluster, "outside", ns, "Rejected")
    wait_phase(cluster, "denied", ns, "Denied")
    # a delivery the apiserver would refuse (a key no Secret can hold)
    kv.create_or_update_secret(
        path="e2e/odd", secret={"db password": ROTATED_VALUE}, mount_point="secret"
    )
    apply(cluster, grant("odd", ns, "vault+kv2://secret/e2e/odd"))
    wait_phase(cluster, "odd", ns, "Error")
    # permit + delivery; a pod admitted (use reserved); a pod refused
    apply(cluster, grant("db", ns, URI, maxUses=5))
    apply(cluster, grant("theirs", ns, "vault+kv2://secret/e2e-other/db#password", sa="other"))
    wait_phase(cluster, "db", ns, "Granted")
    theirs = wait_phase(cluster, "theirs", ns, "Granted")
    ok, err = create_pod(cluster, ns, pod("admitted"))
    assert ok, err
    ok, _ = create_pod(cluster, ns, pod("wrong-sa", sa="other"))
    assert not ok
    # a use counted by the mutating webhook, then refused by the validating one: given back
    stolen = [
        {"name": "stolen", "secret": {"secretName": theirs["status"]["delivery"]["secretName"]}}
    ]
    ok, _ = create_pod(cluster, ns, pod("refused", volumes=stolen))
    assert not ok
    # renewal, expiry, revocation (the ServiceAccount of "theirs" is deleted)
    apply(
        cluster,
        grant(
            "rot",
            ns,
            "vault+kv2://secret/e2e/rot#password",
            ttlSeconds=6,
            renewal={"enabled": True, "beforeExpirySeconds": 3},
        ),
    )
    apply(cluster, grant("short", ns, URI, ttlSeconds=3))
    cluster.kubectl("delete", "serviceaccount", "other", "-n", ns)
    wait_phase(cluster, "theirs", ns, "Revoked")
    wait_phase(cluster, "short", ns, "Expired", timeout=30)
    # a refused Secrets API call (no token)
    ca = get(cluster, "mutatingwebhookconfiguration", webhook_config_name(ns))
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(base64.b64decode(ca["webhooks"][0]["clientConfig"]["caBundle"]))
    refused = httpx.post(
        f"{op.api_url}/api/secrets/v1/secrets",
        json={"uri": URI, "data": {"password": "x"}},
        verify=ssl.create_default_context(cafile=str(ca_path)),
        timeout=10,
    )
    assert refused.status_code == 401
    # a Secrets API read of an Api grant
    apply(cluster, grant("api", ns, URI, delivery={"mode": "Api"}))
    wait_phase(cluster, "api", ns, "Granted")
    read_token = cluster.kubectl(
        "create", "token", "app", "-n", ns, "--audience=crud.secrets", "--duration=10m"
    ).stdout.strip()
    read = httpx.get(
        f"{op.api_url}/api/secrets/v1/namespaces/{ns}/grants/api",
        headers={"Authorization": f"Bearer {read_token}"},
        verify=ssl.create_default_context(cafile=str(ca_path)),
        timeout=10,
    )
    assert read.status_code == 200, read.text

    def given_back() -> None:  # the refused pod's use of "db" (the admitted pod keeps its own)
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["usesConsumed"] == 1 and not st.get("reservations"), st

    eventually(given_back, timeout=30)
    # a deleted live grant is revoked (blanked and audited) before the GC removes it
    cluster.kubectl("delete", "sgr", "db", "-n", ns, "--wait=true", "--timeout=30s")

    def every_type() -> list[dict[str, Any]]:
        events = op.audit_events()
        seen = {e["type"] for e in events}
        assert FLOW_TYPES <= seen, sorted(FLOW_TYPES - seen)
        revoked = {e["reason"] for e in events if e["type"] == "revoked"}
        assert {"ServiceAccountChanged", "Deleted"} <= revoked, revoked
        return events

    events = eventually(every_type, timeout=40, interval=0.5)

    # --- every field -------------------------------------------------------------------
    ref = resource_ref(TEST_SALT.encode(), parse_secret_uri(URI))
    missing: set[str] = set()  # "type.field" for every event that lacks a field

    def need(event: dict[str, Any], field: str, ok: bool) -> None:
        if not ok:
            missing.add(f"{event['type']}.{field}")

    for event in events:
        kind = event["type"]
        for field in ("event_id", "time", "reason", "trace_id", "span_id", "correlation_id"):
            need(event, field, bool(event.get(field)))
        need(event, "effect", event["effect"] in {"permit", "deny", "error"})
        if kind == "api_refused":
            continue  # no grant and no subject: the caller had no token
        need(event, "grant", event.get("grant_namespace") == ns and bool(event.get("grant_name")))
        need(event, "subject", str(event.get("subject")).startswith(f"system:serviceaccount:{ns}:"))
        need(event, "purpose", event.get("purpose") == "read")
        if event.get("grant_name") == "outside":
            continue  # refused before a tenant could be resolved for its mount
        need(event, "tenant", event.get("tenant") == "e2e")
        need(event, "resource_ref", str(event.get("resource_ref")).startswith("hmac-sha256:"))
        if event.get("grant_name") in {"db", "short", "denied"} and event.get("resource_ref"):
            assert event["resource_ref"] == ref, event
        if kind in DECIDED:
            need(event, "decision_id", bool(event.get("decision_id")))
    assert not missing, sorted(missing)
    by_id = {e["event_id"]: e for e in events}

    # --- short Events on the grants, from every part of the operator ---------------------
    # (kopf handlers, pod admission, the expiry scheduler, the use settling)
    def posted() -> set[str]:
        items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
        reasons = {
            e["reason"]
            for e in items["items"]
            if e["involvedObject"]["kind"] == "SecretGrantRequest"
        }
        wanted = {"Decision", "DeliveryWritten", "PodAdmitted", "PodDenied", "UseReleased"}
        wanted |= {"Renewed", "Expired", "Revoked", "GuardRejected", "ProviderError"}
        assert wanted <= reasons, sorted(wanted - reasons)
        return reasons

    eventually(posted, timeout=20, interval=0.5)

    # --- the same events on Kafka ----------------------------------------------------------
    messages = read_topic(kafka.bootstrap, topic, lambda got: len(got) >= len(events), timeout=30)
    assert {m["event"]["event_id"] for m in messages} >= set(by_id)

    # --- no leak anywhere ------------------------------------------------------------------
    kube_events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    statuses = cluster.kubectl("get", "sgr", "-n", ns, "-o", "json").stdout
    spans = [
        line for line in op.log().splitlines() if '"trace_id"' in line and "secretgrants." in line
    ]
    assert spans, "tracing printed no span"
    outputs = {
        "operator log": op.log(),
        "kafka": "\n".join(m["raw"] for m in messages),
        "kubernetes events": kube_events,
        "metrics": op.metrics(),
        "grant status": json.dumps([o.get("status") for o in json.loads(statuses)["items"]]),
    }
    for where, text in outputs.items():
        for value in (SECRET_VALUE, ROTATED_VALUE):
            assert value not in text, f"a secret value leaked into the {where}"
    audit_records = {
        "stdout audit": "\n".join(json.dumps(e) for e in events),
        "kafka": outputs["kafka"],
        "kubernetes events": json.dumps(
            [(e.get("reason"), e.get("message")) for e in json.loads(kube_events)["items"]]
        ),
        "spans": "\n".join(spans),
    }
    for where, text in audit_records.items():
        for plain in ("vault+kv2://", "secret/e2e", PATH, "e2e/rot", "#password", '"password"'):
            assert plain not in text, f"{plain!r} appears in the {where}"
