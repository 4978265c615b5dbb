"""Grants decided by each real PDP and delivered from the real Vault, end to end.

What goes in: a namespace with a ServiceAccount ``app``, an operator watching
only that namespace (configured per test: built-in PDP, AuthZEN served by the
built-in engine over HTTP, or OPA with the example Rego), and grants for
``vault+kv2://secret/e2e/db``. What is asserted: phase, decision, obligations,
binding, the delivery Secret, expiry, and that no value leaks into status,
events or the operator log.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secretgrants.devenv import OPAServer, free_port
from secretgrants.policy import AuthZENServer, BuiltinPolicy
from tests.conftest import E2E_POLICY, REPO, SECRET_VALUE, Cluster, OperatorProcess
from tests.e2e.kube import apply, condition, eventually, get, grant, tenant

URI = "vault+kv2://secret/e2e/db#password"


def wait_phase(
    cluster: Cluster, name: str, ns: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        obj = get(cluster, "sgr", name, ns)
        status = obj.get("status") or {}
        assert status.get("phase") == phase, status
        return obj

    return eventually(check, timeout=timeout)


def secret_values(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    obj = get(cluster, "secret", name, ns)
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def _ts(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def test_builtin_permit_delivers_the_value_bound_to_the_service_account(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    apply(cluster, grant("db", ns, URI, ttlSeconds=3600, maxUses=10, justification="e2e"))
    obj = wait_phase(cluster, "db", ns, "Granted")
    st = obj["status"]
    assert st["decision"]["effect"] == "permit" and st["decision"]["pdp"] == "builtin"
    assert "e2e-app-read" in st["decision"]["reason"]
    # the PDP lowered what was asked: ttl 3600 -> 120, uses 10 -> 5
    assert st["obligations"]["ttlSeconds"] == 120 and st["obligations"]["maxUses"] == 5
    assert (_ts(st["expiresAt"]) - _ts(st["grantedAt"])).total_seconds() == 120
    assert st["usesRemaining"] == 5 and st["usesConsumed"] == 0
    sa_uid = get(cluster, "serviceaccount", "app", ns)["metadata"]["uid"]
    assert st["binding"] == {"serviceAccountName": "app", "serviceAccountUID": sa_uid}
    assert st["resourceRef"].startswith("hmac-sha256:") and "e2e" not in st["resourceRef"]
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    secret = get(cluster, "secret", st["delivery"]["secretName"], ns)
    assert secret["type"] == "secretgrants.io/grant"
    owner = secret["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "SecretGrantRequest" and owner["uid"] == obj["metadata"]["uid"]
    assert secret_values(cluster, ns, st["delivery"]["secretName"]) == {"password": SECRET_VALUE}
    assert st["delivery"]["keys"] == ["password"] and st["delivery"]["version"] >= 1
    # the value is nowhere but in the delivery Secret
    assert SECRET_VALUE not in json.dumps(obj)
    events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert SECRET_VALUE not in events
    assert SECRET_VALUE not in operator.log()
    # audit: a decision and a delivery event, keyed by resource_ref, naming no path
    audit = [e for e in operator.audit_events() if e.get("grant_name") == "db"]
    by_type = {e["type"]: e for e in audit}
    decision = by_type["decision"]
    assert decision["effect"] == "permit" and decision["pdp"] == "builtin"
    assert decision["decision_id"] == st["decision"]["id"]
    assert decision["resource_ref"] == st["resourceRef"]
    assert decision["subject"] == f"system:serviceaccount:{ns}:app"
    assert decision["tenant"] == "e2e" and decision["purpose"] == "read"
    assert by_type["delivery_written"]["effect"] == "permit"
    assert "e2e/db" not in json.dumps(audit) and "password" not in json.dumps(audit)

    def kube_events() -> None:
        raw = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
        reasons = {e["reason"] for e in raw["items"] if e["involvedObject"]["name"] == "db"}
        assert {"Decision", "DeliveryWritten"} <= reasons, reasons

    eventually(kube_events, timeout=10)
    assert "e2e/db" not in cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    metrics = operator.metrics()
    assert 'secretgrants_decisions_total{effect="permit",pdp="builtin"} 1.0' in metrics
    assert 'secretgrants_grants{phase="Granted"} 1.0' in metrics
    assert "e2e" not in "\n".join(
        line for line in metrics.splitlines() if line.startswith("secretgrants_")
    )


def test_builtin_deny_when_no_rule_matches(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    cluster.kubectl("create", "serviceaccount", "intruder", "-n", ns)
    apply(cluster, grant("nope", ns, URI, sa="intruder"))
    obj = wait_phase(cluster, "nope", ns, "Denied")
    assert obj["status"]["decision"]["effect"] == "deny"
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == "Denied" and "no rule matched" in ready["message"]
    assert not cluster.kubectl(
        "get", "secrets", "-n", ns, "-l", "secretgrants.io/grant=nope", "-o", "name"
    ).stdout.strip()


def test_missing_service_account_waits_then_grants(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    apply(cluster, grant("later", ns, URI, sa="app2"))
    obj = wait_phase(cluster, "later", ns, "Pending")
    eventually(lambda: _assert_reason(cluster, "later", ns, "ServiceAccountNotFound"))
    policy_allows_app2 = False  # the e2e rule binds SA "app": app2 is then denied, not stuck
    cluster.kubectl("create", "serviceaccount", "app2", "-n", ns)
    obj = wait_phase(
        cluster, "later", ns, "Denied" if not policy_allows_app2 else "Granted", timeout=40
    )
    assert obj["status"]["decision"]["pdp"] == "builtin"


def _assert_reason(cluster: Cluster, name: str, ns: str, reason: str) -> None:
    obj = get(cluster, "sgr", name, ns)
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == reason, obj.get("status")


def test_expiry_blanks_the_secret_then_marks_expired(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    apply(cluster, grant("short", ns, URI, ttlSeconds=3))
    obj = wait_phase(cluster, "short", ns, "Granted")
    name = obj["status"]["delivery"]["secretName"]
    assert secret_values(cluster, ns, name) == {"password": SECRET_VALUE}
    obj = wait_phase(cluster, "short", ns, "Expired", timeout=20)
    assert secret_values(cluster, ns, name) == {}
    assert condition(obj, "Ready")["reason"] == "Expired"  # type: ignore[index]
    secret = get(cluster, "secret", name, ns)
    assert secret["metadata"]["annotations"]["secretgrants.io/state"] == "expired"


def test_overdue_grant_expires_at_once_after_an_operator_restart(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    from tests.conftest import stop_operator

    ns = ready_namespace
    op = start_operator_for()
    apply(cluster, grant("overdue", ns, URI, ttlSeconds=4))
    obj = wait_phase(cluster, "overdue", ns, "Granted")
    stop_operator(op)
    import time

    time.sleep(5)  # the grant's TTL passes while no operator runs
    assert get(cluster, "sgr", "overdue", ns)["status"]["phase"] == "Granted"
    start_operator_for()
    wait_phase(cluster, "overdue", ns, "Expired", timeout=20)
    assert secret_values(cluster, ns, obj["status"]["delivery"]["secretName"]) == {}


def test_guard_failure_never_asks_the_pdp(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    ns = ready_namespace
    server = AuthZENServer(BuiltinPolicy.model_validate(E2E_POLICY), record_bodies=True)
    url = server.start()
    try:
        op = start_operator_for(SECRETGRANTS_PDP="authzen", SECRETGRANTS_PDP_URL=url)
        apply(cluster, grant("elsewhere", ns, "vault+kv2://finance/ledger#key"))
        wait_phase(cluster, "elsewhere", ns, "Rejected")
        apply(cluster, grant("fine", ns, URI))
        wait_phase(cluster, "fine", ns, "Granted")
        evaluations = [r for r in server.requests if r.path.startswith("/access/v1/evaluation")]
        assert len(evaluations) == 1  # only the allowed grant reached the PDP
        sent = evaluations[0].body or b""
        assert b"secret/e2e/db" in sent and b"finance" not in sent
        assert SECRET_VALUE.encode() not in sent  # the PDP never sees a value
        # The PDP's X-Request-ID is the audit's correlation id: a PDP log line and the
        # operator's audit record of the same decision can be joined.
        decisions = [
            e for e in op.audit_events() if e["type"] == "decision" and e["grant_name"] == "fine"
        ]
        assert decisions and decisions[-1]["correlation_id"] == evaluations[0].request_id
        assert json.loads(sent)["context"]["correlation_id"] == evaluations[0].request_id
    finally:
        server.stop()


def test_authzen_pdp_down_denies_then_grants_when_it_returns(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    ns = ready_namespace
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_operator_for(SECRETGRANTS_PDP="authzen", SECRETGRANTS_PDP_URL=url)
    apply(cluster, grant("pdp", ns, URI))
    obj = wait_phase(cluster, "pdp", ns, "Denied")
    assert condition(obj, "Ready")["reason"] == "PDPUnavailable"  # type: ignore[index]
    server = AuthZENServer(BuiltinPolicy.model_validate(E2E_POLICY), port=port)
    server.start()
    try:
        obj = wait_phase(cluster, "pdp", ns, "Granted", timeout=60)
        assert obj["status"]["decision"]["pdp"] == "authzen"
    finally:
        server.stop()


def test_authzen_deny(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    ns = ready_namespace
    server = AuthZENServer(BuiltinPolicy.model_validate({"version": 1, "rules": []}))
    url = server.start()
    try:
        start_operator_for(SECRETGRANTS_PDP="authzen", SECRETGRANTS_PDP_URL=url)
        apply(cluster, grant("az", ns, URI))
        obj = wait_phase(cluster, "az", ns, "Denied")
        assert condition(obj, "Ready")["reason"] == "Denied"  # type: ignore[index]
        assert obj["status"]["decision"]["pdp"] == "authzen"
    finally:
        server.stop()


@pytest.fixture
def opa_with_example(tmp_path: Path) -> Iterator[OPAServer]:
    server = OPAServer(
        policies=[REPO / "examples" / "policy" / "secretgrants.rego"], workdir=tmp_path
    )
    server.start()
    yield server
    server.stop()


def test_opa_permits_and_denies_with_the_example_policy(
    cluster: Cluster,
    ready_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    opa_with_example: OPAServer,
) -> None:
    ns = ready_namespace
    start_operator_for(
        SECRETGRANTS_PDP="opa",
        SECRETGRANTS_PDP_URL=opa_with_example.addr,
        SECRETGRANTS_OPA_PATH="secretgrants/authz/decision",
    )
    # the example policy lets nothing in this namespace read e2e secrets: a deny
    apply(cluster, grant("opa-deny", ns, URI))
    obj = wait_phase(cluster, "opa-deny", ns, "Denied")
    assert obj["status"]["decision"]["pdp"] == "opa"
    assert condition(obj, "Ready")["reason"] == "Denied"  # type: ignore[index]


def test_opa_permit_for_the_payments_example(
    cluster: Cluster,
    crds: None,
    tmp_path: Path,
    operator_env: dict[str, str],
    opa_with_example: OPAServer,
    vault: Any,
) -> None:
    import hvac

    from tests.conftest import start_operator, stop_operator

    hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2.create_or_update_secret(
        path="payments/db", secret={"password": SECRET_VALUE}, mount_point="secret"
    )
    ns = "payments"
    cluster.kubectl("create", "namespace", ns)
    tname = f"acme-{uuid.uuid4().hex[:6]}"
    apply(cluster, tenant(tname, "acme", ["vault+kv2://secret"], namespaces=[ns]))
    cluster.kubectl("create", "serviceaccount", "payments-api", "-n", ns)
    op = start_operator(
        cluster.kubeconfig,
        tmp_path,
        namespace=ns,
        env={
            **operator_env,
            "SECRETGRANTS_PDP": "opa",
            "SECRETGRANTS_PDP_URL": opa_with_example.addr,
            "SECRETGRANTS_OPA_PATH": "secretgrants/authz/decision",
        },
    )
    try:
        apply(
            cluster,
            grant(
                "db",
                ns,
                "vault+kv2://secret/payments/db#password",
                sa="payments-api",
                ttlSeconds=60,
            ),
        )
        obj = wait_phase(cluster, "db", ns, "Granted")
        assert obj["status"]["decision"]["pdp"] == "opa"
        assert obj["status"]["obligations"]["ttlSeconds"] == 60  # asked 60, policy allows 900
        assert obj["status"]["obligations"]["maxUses"] == 20
        name = obj["status"]["delivery"]["secretName"]
        assert secret_values(cluster, ns, name) == {"password": SECRET_VALUE}
    finally:
        stop_operator(op)
        cluster.kubectl("delete", "secrettenant", tname, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_tenant_salt_secret_keys_the_resource_ref(
    cluster: Cluster, namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    """A SecretTenant's saltSecretRef (in the operator namespace) keys resourceRef, not TENANT_SALT."""
    import hashlib
    import hmac

    ns = namespace
    cluster.kubectl(
        "create", "secret", "generic", "audit-salt", "-n", ns, "--from-literal=salt=tenant-salt"
    )
    name = f"t-{uuid.uuid4().hex[:8]}"
    ref = {"namespace": ns, "name": "audit-salt"}
    apply(
        cluster, tenant(name, "salted", ["vault+kv2://secret"], namespaces=[ns], saltSecretRef=ref)
    )
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    try:
        start_operator_for(SECRETGRANTS_OPERATOR_NAMESPACE=ns)
        apply(cluster, grant("salted", ns, URI))
        st = wait_phase(cluster, "salted", ns, "Granted")["status"]
        expected = hmac.new(b"tenant-salt", URI.encode(), hashlib.sha256).hexdigest()
        assert st["resourceRef"] == f"hmac-sha256:{expected}"
        assert "secret/e2e" not in json.dumps(st)  # the status names no path
    finally:
        cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def test_explain_says_why_in_plain_words(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    import os
    import subprocess
    import sys

    ns = ready_namespace
    apply(cluster, grant("db", ns, URI, maxUses=2))
    apply(cluster, grant("elsewhere", ns, "vault+kv2://finance/ledger#key"))
    wait_phase(cluster, "db", ns, "Granted")
    wait_phase(cluster, "elsewhere", ns, "Rejected")

    def run(name: str) -> str:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        out = subprocess.run(
            [sys.executable, "-m", "secretgrants", "explain", name, "-n", ns],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return out.stdout

    granted = run("db")
    assert f"SecretGrantRequest {ns}/db: Granted" in granted
    assert "decision:   permit by builtin" in granted
    assert (
        "uses:       0 consumed, 2 left" in granted and "bound to:   ServiceAccount app" in granted
    )
    assert SECRET_VALUE not in granted
    rejected = run("elsewhere")
    assert "Rejected" in rejected and "MountNotAllowed" in rejected
    assert "next:       ask the platform team" in rejected
