"""Shared fixtures: the real servers, started once per session on 127.0.0.1.

What goes in: ``tests/unit`` needs no server and runs in seconds; ``tests/e2e``
uses the fixtures below. Every server is a real binary from ``hack/tools.sh``:
a missing binary is an error, never a skip.

``--kubeconfig PATH`` (or ``SECRETGRANTS_E2E_KUBECONFIG``) runs the e2e tests
against an existing cluster instead of the local control plane.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretgrants.devenv import KafkaServer, LocalControlPlane, OPAServer, VaultDevServer
from secretgrants.devenv.processes import binary, wait_until

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=os.environ.get("SECRETGRANTS_E2E_KUBECONFIG"),
        help="run e2e tests against this cluster instead of a local control plane",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Cluster:
    """What e2e tests need of a cluster, local or given."""

    kubeconfig: Path
    local: LocalControlPlane | None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    given = request.config.getoption("--kubeconfig")
    if given:
        yield Cluster(kubeconfig=Path(given), local=None)
        return
    plane = LocalControlPlane(tmp_path_factory.mktemp("kube"))
    plane.start()
    try:
        yield Cluster(kubeconfig=plane.kubeconfig, local=plane)
    finally:
        plane.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"sg-test-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultDevServer]:
    server = VaultDevServer(tmp_path_factory.mktemp("vault")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    server = OPAServer(workdir=tmp_path_factory.mktemp("opa")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A KRaft Kafka broker on 127.0.0.1 (jars from hack/tools.sh: missing ones are an error)."""
    server = KafkaServer(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    """The CRDs from crds/, applied and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/secretgrantrequests.secretgrants.io",
        "crd/secrettenants.secretgrants.io",
    )
    # Established is not yet served: for a moment a fresh CRD answers reads with 429
    # "storage is (re)initializing" and creates with 503 "Resource kind ... not found".
    # A server-side dry-run create of each kind goes the whole way a create goes.
    probes = [
        {
            "apiVersion": "secretgrants.io/v1alpha1",
            "kind": "SecretTenant",
            "metadata": {"name": "crd-probe"},
            "spec": {
                "tenantId": "probe",
                "namespaces": ["default"],
                "allowedMounts": ["vault+kv2://secret"],
            },
        },
        {
            "apiVersion": "secretgrants.io/v1alpha1",
            "kind": "SecretGrantRequest",
            "metadata": {"name": "crd-probe", "namespace": "default"},
            "spec": {
                "secretUri": "vault+kv2://secret/probe",
                "serviceAccountName": "default",
                "justification": "probe",
            },
        },
    ]

    def served() -> bool:
        return all(
            cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
            ).returncode
            == 0
            for probe in probes
        )

    wait_until(served, timeout=60, what="the CRDs to take creates")


@dataclass
class OperatorProcess:
    """The operator, run as users run it (``secretgrants run``), against the test cluster."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    health_url: str
    metrics_url: str = ""
    api_url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_events(self) -> list[dict[str, object]]:
        """The JSON-lines audit events the operator printed on stdout."""
        import json

        events = []
        for line in self.log().splitlines():
            if line.startswith('{"event_id"'):
                events.append(json.loads(line))
        return events

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.metrics_url, timeout=5).text


def start_operator(
    kubeconfig: Path, workdir: Path, *, namespace: str, env: dict[str, str] | None = None
) -> OperatorProcess:
    """``secretgrants run -n NAMESPACE``: one operator per test namespace, so tests with
    different PDPs or providers never handle each other's grants."""
    import sys

    import httpx

    from secretgrants.devenv import free_port

    port = free_port()
    log_path = workdir / f"operator-{namespace}-{port}.log"
    health = f"http://127.0.0.1:{port}/healthz"
    webhook_port = free_port()
    metrics_port = free_port()
    api_port = free_port()
    webhook = {  # one webhook per operator: its own port and configuration name
        "SECRETGRANTS_WEBHOOK_ADDRESS": "127.0.0.1",
        "SECRETGRANTS_WEBHOOK_PORT": str(webhook_port),
        "SECRETGRANTS_WEBHOOK_URL": f"https://127.0.0.1:{webhook_port}",
        "SECRETGRANTS_WEBHOOK_CONFIG_NAME": webhook_config_name(namespace),
        "SECRETGRANTS_RESERVATION_WINDOW": "5",
        "SECRETGRANTS_RECHECK_INTERVAL": "2",
        "SECRETGRANTS_METRICS_ADDRESS": "127.0.0.1",
        "SECRETGRANTS_METRICS_PORT": str(metrics_port),
        "SECRETGRANTS_API_PORT": str(api_port),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secretgrants",
            "run",
            f"--namespace={namespace}",
            f"--liveness={health}",
            "--verbose",
        ],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), **webhook, **(env or {})},
        start_new_session=True,
    )
    op = OperatorProcess(
        proc,
        log_path,
        health,
        f"http://127.0.0.1:{metrics_port}/metrics",
        f"https://127.0.0.1:{api_port}",
    )
    try:
        wait_until(
            lambda: proc.poll() is None and httpx.get(health, timeout=1).status_code == 200,
            timeout=60,
            what="the operator's liveness endpoint",
        )
    except TimeoutError as err:
        proc.kill()
        raise AssertionError(f"operator did not start:\n{op.log()[-3000:]}") from err
    return op


def webhook_config_name(namespace: str) -> str:
    return f"sg-{namespace}"


def stop_operator(op: OperatorProcess) -> None:
    import signal

    if op.proc.poll() is None:
        os.killpg(op.proc.pid, signal.SIGTERM)
        try:
            op.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(op.proc.pid, signal.SIGKILL)
            op.proc.wait()


SECRET_VALUE = "S3cr3t-e2e-VALUE-7f3a"  # searched for in logs, events and status by leak tests
TEST_SALT = "e2e-tenant-salt"
E2E_POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "e2e-app-read",
            "subjects": [{"service_account": "app"}],
            "resources": ["vault+kv2://secret/e2e/**", "yaml://dev/e2e/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 120, "max_uses": 5},
        },
        {
            "name": "e2e-other-read",
            "subjects": [{"service_account": "other"}],
            "resources": ["vault+kv2://secret/e2e-other/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 120},
        },
    ],
}


@pytest.fixture(scope="session")
def e2e_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(E2E_POLICY))
    return path


@pytest.fixture(scope="session")
def operator_env(vault: VaultDevServer, e2e_policy_file: Path) -> dict[str, str]:
    """The default operator configuration of the e2e tests: Vault, built-in PDP, a salt."""
    import hvac

    kv = hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2
    kv.create_or_update_secret(
        path="e2e/db", secret={"password": SECRET_VALUE, "username": "e2e"}, mount_point="secret"
    )
    kv.create_or_update_secret(
        path="e2e-other/db", secret={"password": "other-value"}, mount_point="secret"
    )
    return {
        "VAULT_URL": vault.addr,
        "VAULT_TOKEN": vault.root_token,
        "SECRETGRANTS_PDP": "builtin",
        "SECRETGRANTS_POLICY_FILE": str(e2e_policy_file),
        "TENANT_SALT": TEST_SALT,
    }


@pytest.fixture
def start_operator_for(
    cluster: Cluster, crds: None, namespace: str, tmp_path: Path, operator_env: dict[str, str]
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start (and at teardown stop) operators for this test's namespace, with env overrides."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        op = start_operator(
            cluster.kubeconfig, tmp_path, namespace=namespace, env={**operator_env, **env}
        )
        started.append(op)
        return op

    yield start
    for op in started:
        stop_operator(op)
    if started:  # the webhook configurations stay when an operator stops (fail closed)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.kubectl(
                "delete", kind, webhook_config_name(namespace), "--ignore-not-found", check=False
            )
        for kind in ("mutatingadmissionpolicybinding", "mutatingadmissionpolicy"):
            cluster.kubectl(
                "delete",
                kind,
                f"{webhook_config_name(namespace)}-finalizer",
                "--ignore-not-found",
                check=False,
            )


@pytest.fixture
def operator(start_operator_for: Callable[..., OperatorProcess]) -> OperatorProcess:
    """The operator with the default e2e configuration, watching this test's namespace."""
    return start_operator_for()
