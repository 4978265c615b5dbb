"""The README's first quick-start command, run as a user runs it: ``secretgrants dev``.

What goes in: ``python -m secretgrants dev`` in its own process group, with only the
metrics and diagnostics ports moved off their defaults (other operators run beside
it in this suite). What is asserted: it prints the KUBECONFIG and the next steps;
with that KUBECONFIG the quick start's grants reach the phases the README names
(``payments-db`` Granted, ``finance-ledger`` Rejected for MountNotAllowed); the
README's pod is admitted with its grant mounted; ``secretgrants explain`` says why;
the dev diagnostics serve the audit trail on 127.0.0.1; and Ctrl-C stops the
operator and every server it started.

This test always uses its own local control plane (that is what ``dev`` is), also
when the suite runs against a cluster given by ``--kubeconfig``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from secretgrants.devenv import free_port
from secretgrants.devenv.processes import binary
from tests.conftest import REPO
from tests.e2e.kube import eventually


def kubectl(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(binary("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_secretgrants_dev_runs_the_quick_start_and_stops_cleanly(tmp_path: Path) -> None:
    diagnostics = free_port()
    log_path = tmp_path / "dev.log"
    env = {
        **os.environ,
        "SECRETGRANTS_METRICS_PORT": str(free_port()),
        "SECRETGRANTS_DIAGNOSTICS_PORT": str(diagnostics),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "secretgrants", "dev", f"--workdir={tmp_path / 'state'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=REPO,
        )
    try:

        def ready() -> str:
            text = log_path.read_text(errors="replace")
            assert proc.poll() is None, text[-3000:]
            assert "running the operator" in text, text[-500:]
            found = re.search(r"export KUBECONFIG=(\S+)", text)
            assert found, text[-500:]
            return found.group(1)

        kubeconfig = eventually(ready, timeout=180, interval=0.5)
        out = log_path.read_text()
        for step in ("kubectl get secretgrants -A -o wide", "kubectl describe sgr -n demo"):
            assert step in out  # the next steps the README promises

        def phases() -> dict[str, dict[str, object]]:
            items = json.loads(kubectl(kubeconfig, "get", "sgr", "-n", "demo", "-o", "json").stdout)
            got = {i["metadata"]["name"]: i.get("status") or {} for i in items["items"]}
            assert got.get("payments-db", {}).get("phase") == "Granted", got
            assert got.get("finance-ledger", {}).get("phase") == "Rejected", got
            return got

        status = eventually(phases, timeout=60, interval=0.5)
        ready_reason = {c["type"]: c["reason"] for c in status["finance-ledger"]["conditions"]}  # type: ignore[union-attr]
        assert ready_reason["Ready"] == "MountNotAllowed"

        created = kubectl(kubeconfig, "apply", "-f", str(REPO / "examples/quickstart/pod.yaml"))
        assert "created" in created.stdout
        pod = json.loads(
            kubectl(kubeconfig, "get", "pod", "payments-api", "-n", "demo", "-o", "json").stdout
        )
        mounts = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
        assert "/var/run/secretgrants/payments-db" in mounts

        explain = subprocess.run(
            [sys.executable, "-m", "secretgrants", "explain", "finance-ledger", "-n", "demo"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KUBECONFIG": kubeconfig},
        )
        assert explain.returncode == 0, explain.stderr
        assert "MountNotAllowed" in explain.stdout or "not allowed" in explain.stdout

        audit = httpx.get(f"http://127.0.0.1:{diagnostics}/audit", timeout=5).json()
        types = {e["type"] for e in (audit if isinstance(audit, list) else audit["events"])}
        assert {"decision", "guard_rejected", "pod_admitted"} <= types, types
        apiserver = int(
            re.search(r"https://127\.0\.0\.1:(\d+)", Path(kubeconfig).read_text()).group(1)
        )  # type: ignore[union-attr]
        assert listening(apiserver)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    try:
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "[secretgrants dev] stopped" in log_path.read_text()
    deadline = time.monotonic() + 20
    while listening(apiserver) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(apiserver), "the dev control plane outlived Ctrl-C"
