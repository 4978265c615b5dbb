"""``helm template`` of the chart, read back as objects (the helm binary from hack/tools.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from secretgrants.devenv.processes import binary
from tests.conftest import REPO

CHART = REPO / "charts" / "secretgrants"
KUBE_VERSION = "1.36.0"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("helm")), *args], capture_output=True, text=True, timeout=120, check=False
    )


def rendered(
    *values: str,
    namespace: str = "default",
    kube_version: str = KUBE_VERSION,
    kubeconfig: Path | None = None,
) -> list[dict[str, Any]]:
    """What ``helm template`` renders with ``values`` (``--set``) for a release in ``namespace``.

    With ``kubeconfig``, ``--dry-run=server``: ``lookup`` reads that cluster, as it does in
    ``helm install`` and ``helm upgrade``; without it, ``lookup`` finds nothing.
    """
    sets = [arg for value in values for arg in ("--set", value)]
    server = ["--dry-run=server", f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    out = helm(
        "template", "sg", str(CHART), "-n", namespace, "--kube-version", kube_version,
        *server, *sets,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of ``kind`` (and ``name``)."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}
