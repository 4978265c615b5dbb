"""The operator's in-pod login against a real apiserver: ServiceAccount token, CA and address.

In a pod the operator finds the API through ``KUBERNETES_SERVICE_HOST``/``PORT`` and
the files the kubelet mounts (``token``, ``ca.crt``, ``namespace``). No kubelet runs
here, so the test writes those files as the kubelet would (a TokenRequest token of a
ServiceAccount with a Role) and logs in the way the operator does (``kube.login``).
What is asserted: requests carry that ServiceAccount's identity (its RBAC, not more),
and a token file the kubelet rotates is read again, with no restart.
"""

from __future__ import annotations

import base64
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from secretgrants import kubeconfig
from secretgrants.kube import KubeAPIError, KubeClient, login
from tests.conftest import Cluster
from tests.e2e.kube import apply

ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "grant-reader"},
    "rules": [
        {
            "apiGroups": ["secretgrants.io"],
            "resources": ["secretgrantrequests"],
            "verbs": ["get", "list"],
        }
    ],
}


def _token(cluster: Cluster, namespace: str) -> str:
    return cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()


@pytest.fixture
def pod_files(
    cluster: Cluster,
    crds: None,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """A ServiceAccount `reader` that may list grants, and its files as a kubelet mounts them."""
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    apply(cluster, {**ROLE, "metadata": {**ROLE["metadata"], "namespace": namespace}})
    cluster.kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=grant-reader", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    if "certificate-authority-data" in server:
        ca = base64.b64decode(server["certificate-authority-data"])
    else:
        ca = (cluster.kubeconfig.parent / server["certificate-authority"]).read_bytes()
    (directory / "ca.crt").write_bytes(ca)
    (directory / "namespace").write_text(namespace)
    (directory / "token").write_text(_token(cluster, namespace))
    address = urlsplit(server["server"])
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(address.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(address.port or 443))
    monkeypatch.setattr(
        kubeconfig, "load", functools.partial(kubeconfig.load, service_account_dir=directory)
    )
    yield directory


def _rotate(token_file: Path, token: str) -> None:
    token_file.write_text(token)
    later = time.time_ns() + 2_000_000_000  # a new mtime even on a coarse clock
    os.utime(token_file, ns=(later, later))


async def test_the_pod_login_acts_as_its_service_account(
    cluster: Cluster, namespace: str, pod_files: Path
) -> None:
    creds = login()
    assert creds.info.server.startswith("https://")
    assert creds.token_file == pod_files / "token"
    assert creds.info.default_namespace == namespace
    client = KubeClient(login=login, name="in-cluster-test")
    try:
        assert await client.list_grants(namespace) == []  # its Role allows this
        with pytest.raises(KubeAPIError) as denied:  # and nothing else
            await client.read_secret_key(namespace, "anything", "key")
        assert denied.value.status == 403

        # The kubelet rotates the token: a dead one fails, a fresh one works, no restart.
        _rotate(pod_files / "token", "not-a-token")
        with pytest.raises(KubeAPIError) as refused:
            await client.list_grants(namespace)
        assert refused.value.status == 401
        _rotate(pod_files / "token", _token(cluster, namespace))
        assert await client.list_grants(namespace) == []
    finally:
        await client.aclose()
