"""The examples and the docs, run: what the docs show is what the operator does.

What goes in: every YAML file under examples/ (server-side dry run on the real
apiserver, CRDs applied first), and docs/walkthrough.md, whose shell blocks
are run in order, as a user would, against the operator with the example
policy (examples/policy/builtin-policy.yaml) and a real Vault. What is
asserted: each output block the docs mark with ``<!-- check: KEY -->``
equals what the commands print (after masking ids, times and ages), so the
docs and the behaviour cannot drift apart. The walk-through uses the fixed
names of the example (namespace ``payments``, tenant ``acme``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretgrants.devenv import VaultDevServer
from secretgrants.devenv.processes import binary
from secretgrants.policy.builtin import BuiltinPolicy
from tests.conftest import (
    REPO,
    SECRET_VALUE,
    Cluster,
    OperatorProcess,
    start_operator,
    stop_operator,
    webhook_config_name,
)
from tests.e2e.kube import eventually

EXAMPLES = REPO / "examples"
WALKTHROUGH = REPO / "docs" / "walkthrough.md"
OPERATIONS = REPO / "docs" / "operations.md"
POLICY = EXAMPLES / "policy" / "builtin-policy.yaml"
# Kinds whose CRDs the test cluster does not have: parsed, not dry-run.
THIRD_PARTY = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
}
MARKER = re.compile(r"<!-- check: ([a-z0-9-]+)( \(excerpt\))? -->")
SKIP = "<!-- not run:"


# --- every YAML file ---------------------------------------------------------------


def example_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml"))


def _all_example_text() -> str:
    return "\n".join(p.read_text() for p in example_files())


def test_every_example_yaml_is_accepted_by_the_apiserver(
    cluster: Cluster, crds: None, namespace: str
) -> None:
    """Each object of each file, in a fresh namespace (so nothing is created for real)."""
    checked, parsed_only = 0, set()
    # Pods are admitted only when their ServiceAccount exists: create those the examples name.
    accounts = set(re.findall(r"serviceAccountName: ([a-z0-9-]+)", _all_example_text()))
    for account in sorted(accounts):
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    for path in example_files():
        objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
        assert objects, path
        if "kind" not in objects[0]:  # not a Kubernetes object: a built-in PDP policy
            assert BuiltinPolicy.from_file(path).rules, path
            continue
        if objects[0].get("apiVersion", "").startswith("kustomize.config.k8s.io/"):
            cluster.kubectl("kustomize", str(path.parent))  # it builds
            continue
        to_check = []
        for obj in objects:
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key in THIRD_PARTY:
                parsed_only.add(key)
                continue
            if obj["kind"] != "Namespace" and "namespace" in obj.get("metadata", {}):
                obj["metadata"]["namespace"] = namespace
            to_check.append(obj)
        if not to_check:
            continue
        proc = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": to_check}),
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{path.relative_to(REPO)}:\n{proc.stderr}"
        checked += len(to_check)
    assert parsed_only == THIRD_PARTY  # the list above stays exact
    assert checked > 10  # the loop did run over the examples


# --- the walk-through, run from its page ----------------------------------------------


@dataclass
class Block:
    lang: str
    body: str
    check: str | None = None
    excerpt: bool = False
    skip: bool = False


def page_blocks(text: str) -> list[Block]:
    """The fenced blocks in order, with the check marker (or skip note) just above each."""
    out: list[Block] = []
    for match in re.finditer(r"^```(\S*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        out.append(
            Block(
                lang=match.group(1),
                body=match.group(2),
                check=marker.group(1) if marker else None,
                excerpt=bool(marker and marker.group(2)),
                skip=before.strip().startswith(SKIP),
            )
        )
    return out


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def normalise(text: str) -> list[str]:
    """Lines with ids, times, ages, durations, versions and ports masked, spaces collapsed."""
    lines = []
    for line in text.strip().splitlines():
        line = _UUID.sub("<uuid>", line)
        line = _TIME.sub("<time>", line)
        line = re.sub(r"\((in \d+s|\d+s ago)\)", "(<when>)", line)
        line = re.sub(r"\(version \d+\)", "(version <n>)", line)
        line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
        line = re.sub(r"\s+", " ", line).strip()
        line = re.sub(r" \d+[smhd](\d+[smh])?$", " <age>", line)  # the AGE column
        lines.append(line)
    return lines


def matches(expected: str, actual: str, *, excerpt: bool) -> bool:
    want, got = normalise(expected), normalise(actual)
    if not excerpt:
        return want == got
    position = 0  # every expected line, in order, somewhere in the output
    for line in want:
        try:
            position = got.index(line, position) + 1
        except ValueError:
            return False
    return True


READ_ONLY = ("kubectl get", "kubectl describe", "secretgrants explain")


@dataclass
class Shell:
    kubeconfig: Path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join(
            [str(binary("kubectl").parent), str(Path(sys.executable).parent), os.environ["PATH"]]
        )
        return subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path},
            capture_output=True,
            text=True,
            timeout=150,
        )


def injected_volume(shell: Shell, expected: str) -> None:
    """The pod spec excerpt of the page equals what the webhook added to the Deployment's pods."""
    want = yaml.safe_load(expected)["spec"]

    def two_pods() -> list[dict[str, Any]]:
        proc = shell.run(
            "kubectl get pods -n payments -l app.kubernetes.io/name=payments-api -o json"
        )
        pods = json.loads(proc.stdout)["items"]
        assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
        return pods  # type: ignore[no-any-return]

    for pod in eventually(two_pods, timeout=60):
        spec = pod["spec"]
        assert spec["volumes"] == want["volumes"]
        container = spec["containers"][0]
        assert container["name"] == want["containers"][0]["name"]
        assert container["volumeMounts"] == want["containers"][0]["volumeMounts"]
        reservation = pod["metadata"]["annotations"]["secretgrants.io/reservations"]
        assert reservation.startswith("payments-db=")


SPECIAL: dict[str, Callable[[Shell, str], None]] = {"injected-volume": injected_volume}


def expect_output(
    shell: Shell, key: str, command: str, output: str, expected: str, excerpt: bool
) -> None:
    """``output`` matches ``expected``, or a read-only ``command`` re-run soon prints it."""
    seen = [output]

    def compare() -> None:
        if matches(expected, seen[-1], excerpt=excerpt):
            return
        if command.startswith(READ_ONLY):
            again = shell.run(command)
            seen.append(again.stdout + again.stderr)
            if matches(expected, seen[-1], excerpt=excerpt):
                return
        raise AssertionError(f"{key}: `{command}` printed\n{seen[-1]}")

    eventually(compare, timeout=60, interval=0.5)


def run_walkthrough(shell: Shell, text: str) -> set[str]:
    """Run the page's shell blocks from "Step 1" on, in order; compare each checked output.

    A command whose output the page shows (the last one of a block followed by a
    check) may fail, as denials do; every other command must succeed. Read-only
    commands are re-run until their output matches, because the operator works
    asynchronously. Returns the keys checked.
    """
    checked: set[str] = set()
    pending: tuple[str, subprocess.CompletedProcess[str]] | None = None

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            command, proc = pending
            assert proc.returncode == 0, f"{command}\n{proc.stdout}{proc.stderr}"
        pending = None

    for block in page_blocks(text[text.index("## Step 1") :]):
        if block.skip:
            continue
        if block.lang == "sh":
            settle()
            lines = [ln for ln in block.body.splitlines() if ln.strip()]
            for line in lines[:-1]:
                proc = shell.run(line)
                assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
            pending = (lines[-1], shell.run(lines[-1]))
            continue
        if block.check is None:
            settle()
            continue
        key, body, excerpt = block.check, block.body, block.excerpt
        if key in SPECIAL:
            settle()
            SPECIAL[key](shell, body)
        else:
            assert pending is not None, f"check {key} follows no command"
            command, first = pending
            expect_output(shell, key, command, first.stdout + first.stderr, body, excerpt)
            pending = None
        checked.add(key)
    settle()
    return checked


@pytest.fixture
def walkthrough_operator(
    cluster: Cluster,
    crds: None,
    tmp_path: Path,
    operator_env: dict[str, str],
    vault: VaultDevServer,
) -> Iterator[OperatorProcess]:
    """The operator for namespace ``payments`` with the example policy, and the secret."""
    import hvac

    hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2.create_or_update_secret(
        path="payments/db",
        secret={"password": SECRET_VALUE, "username": "payments"},
        mount_point="secret",
    )

    def no_payments_namespace() -> None:  # another test may have just deleted it
        proc = cluster.kubectl("get", "namespace", "payments", check=False)
        assert proc.returncode != 0, "namespace payments still exists"

    eventually(no_payments_namespace, timeout=120, interval=1)
    op = start_operator(
        cluster.kubeconfig,
        tmp_path,
        namespace="payments",
        env={**operator_env, "SECRETGRANTS_POLICY_FILE": str(POLICY)},
    )
    try:
        yield op
    finally:
        cluster.kubectl("delete", "namespace", "payments", "--wait=false", check=False)
        cluster.kubectl("delete", "secrettenant", "acme", "--ignore-not-found", check=False)
        deadline = time.monotonic() + 60  # let the operator release the grants' finalizers
        while time.monotonic() < deadline and op.proc.poll() is None:
            if cluster.kubectl("get", "namespace", "payments", check=False).returncode != 0:
                break
            time.sleep(0.5)
        stop_operator(op)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            cluster.kubectl(
                "delete", kind, webhook_config_name("payments"), "--ignore-not-found", check=False
            )


def test_the_walkthrough_runs_as_written(
    cluster: Cluster, walkthrough_operator: OperatorProcess
) -> None:
    text = WALKTHROUGH.read_text()
    checked = run_walkthrough(Shell(cluster.kubeconfig), text)
    assert checked == {key for key, _ in MARKER.findall(text)}
    # The page's clean-up ran: the namespace and the tenant are gone.
    assert cluster.kubectl("get", "namespace", "payments", check=False).returncode != 0
    log = walkthrough_operator.log()
    assert SECRET_VALUE not in log
    assert SECRET_VALUE not in text


# --- operations.md: what users see when the operator is down ---------------------------


def _pod(name: str, spec: dict[str, Any]) -> str:
    container = {"name": "app", "image": "registry.invalid/app:1"}
    containers = spec.pop("containers", [container])
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": containers, **spec},
        }
    )


_SG = "sg-db-1234abcd"  # named like a delivery Secret; it need not exist for admission
_C = {"name": "app", "image": "registry.invalid/app:1"}
# Every place a pod can use a Secret (secret_use.direct_secret_mounts): each must still
# reach the validating webhook through its matchConditions, and so be refused while the
# operator is down.
_USES_DELIVERY_SECRET = {
    "secret-volume": {"volumes": [{"name": "v", "secret": {"secretName": _SG}}]},
    "projected-volume": {
        "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": _SG}}]}}]
    },
    "env": {
        "containers": [
            {**_C, "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": _SG, "key": "k"}}}]}
        ]
    },
    "env-from": {"containers": [{**_C, "envFrom": [{"secretRef": {"name": _SG}}]}]},
    "init-container-env": {
        "initContainers": [{**_C, "name": "init", "envFrom": [{"secretRef": {"name": _SG}}]}]
    },
}


def test_operator_down_refuses_only_pods_that_use_a_delivery_secret(
    cluster: Cluster, namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    expected = next(
        b.body for b in page_blocks(OPERATIONS.read_text()) if b.check == "operator-down"
    )
    op = start_operator_for()
    stop_operator(op)
    # Pods that use no delivery Secret never call the operator (matchConditions).
    for name, spec in {
        "plain": {},
        "other-secret": {"volumes": [{"name": "v", "secret": {"secretName": "app-config"}}]},
    }.items():
        proc = cluster.kubectl("create", "-n", namespace, "-f", "-", input=_pod(name, spec))
        assert proc.returncode == 0
    for name, spec in _USES_DELIVERY_SECRET.items():
        proc = cluster.kubectl(
            "create", "-n", namespace, "-f", "-", input=_pod(name, dict(spec)), check=False
        )
        assert proc.returncode != 0, f"{name}: created without the webhook"
        assert matches(expected, proc.stderr, excerpt=False), (name, proc.stderr)
