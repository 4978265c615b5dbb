"""Small helpers for e2e tests: apply objects, read them, poll with deadlines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.conftest import Cluster

T = TypeVar("T")


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def get(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    return json.loads(cluster.kubectl(*args).stdout)  # type: ignore[no-any-return]


def eventually(fn: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2) -> T:
    """Call ``fn`` until it stops raising AssertionError; re-raise its last error at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond  # type: ignore[no-any-return]
    return None


def grant(name: str, namespace: str, uri: str, sa: str = "app", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretGrantRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"secretUri": uri, "serviceAccountName": sa, **spec},
    }


def tenant(name: str, tenant_id: str, mounts: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretTenant",
        "metadata": {"name": name},
        "spec": {"tenantId": tenant_id, "allowedMounts": mounts, **spec},
    }


def kubeconfig_for(cluster: Cluster, name: str, user: dict[str, Any], path: Path) -> Path:
    """A kubeconfig at ``path`` for the cluster's server, as ``user`` (e.g. ``{"token": ...}``)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == current["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": server["name"], "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    return path
