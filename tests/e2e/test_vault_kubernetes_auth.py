"""Vault's Kubernetes auth method end to end: Vault calls the real apiserver's TokenReview.

What goes in: a reviewer ServiceAccount bound to ``system:auth-delegator``, a
fresh ``kubernetes`` auth mount configured with the apiserver's URL and CA, a
role for the ServiceAccount ``operator`` with a policy that reads one path,
and ServiceAccount tokens minted by ``kubectl create token``. What comes out:
the provider logs in and reads; another account's token and a deleted
account's token are refused, and no token appears in the error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from secretgrants.devenv import VaultDevServer
from secretgrants.errors import ProviderDenied
from secretgrants.providers import KubernetesAuth, KV2Provider
from secretgrants.uri import parse_secret_uri
from tests.conftest import Cluster

ROLE = "operator"


def _server_and_ca(cluster: Cluster) -> tuple[str, str]:
    """The apiserver URL and CA the kubeconfig uses (local control plane or a given cluster)."""
    import base64

    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    entry = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    server = entry["cluster"]
    if "certificate-authority-data" in server:
        ca = base64.b64decode(server["certificate-authority-data"]).decode()
    else:
        ca_path = Path(server["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = cluster.kubeconfig.parent / ca_path
        ca = ca_path.read_text()
    return str(server["server"]), ca


@pytest.fixture
def kubernetes_mount(
    cluster: Cluster, namespace: str, vault: VaultDevServer
) -> Iterator[dict[str, Any]]:
    ns = namespace
    cluster.kubectl("create", "serviceaccount", "vault-reviewer", "-n", ns)
    binding = f"sg-{uuid.uuid4().hex[:8]}-reviewer"
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={ns}:vault-reviewer",
    )
    reviewer = cluster.kubectl(
        "create", "token", "vault-reviewer", "-n", ns, "--duration=1h"
    ).stdout.strip()
    for sa in ("operator", "intruder"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
    root = hvac.Client(url=vault.addr, token=vault.root_token)
    mount = f"k8s-{uuid.uuid4().hex[:8]}"
    path = f"sgk8s/{uuid.uuid4().hex[:8]}/db"
    root.sys.enable_auth_method("kubernetes", path=mount)
    host, ca = _server_and_ca(cluster)
    root.auth.kubernetes.configure(
        kubernetes_host=host,
        kubernetes_ca_cert=ca,
        token_reviewer_jwt=reviewer,
        disable_local_ca_jwt=True,
        mount_point=mount,
    )
    root.sys.create_or_update_policy(
        name=mount, policy=f'path "secret/data/{path}" {{ capabilities = ["read"] }}'
    )
    root.auth.kubernetes.create_role(
        ROLE,
        bound_service_account_names=["operator"],
        bound_service_account_namespaces=[ns],
        policies=[mount],
        ttl="5m",
        mount_point=mount,
    )
    root.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"password": "k8s-auth-value"}, mount_point="secret"
    )
    yield {"mount": mount, "path": path, "namespace": ns}
    cluster.kubectl("delete", "clusterrolebinding", binding, check=False)
    root.sys.disable_auth_method(mount)
    root.adapter.close()


def _jwt(cluster: Cluster, ns: str, sa: str, tmp_path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", ns, "--duration=10m").stdout.strip()
    path = tmp_path / f"{sa}.jwt"
    path.write_text(token + "\n")
    return path


async def test_login_with_the_operators_service_account_token_and_read(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: dict[str, Any], tmp_path: Path
) -> None:
    m = kubernetes_mount
    uri = parse_secret_uri(f"vault+kv2://secret/{m['path']}#password")
    jwt = _jwt(cluster, m["namespace"], "operator", tmp_path)
    provider = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m["mount"], token_path=jwt))
    try:
        data = await provider.read(uri.without_fragment())
        assert data.data == {"password": "k8s-auth-value"}
    finally:
        await provider.close()


async def test_another_accounts_token_is_refused(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: dict[str, Any], tmp_path: Path
) -> None:
    m = kubernetes_mount
    uri = parse_secret_uri(f"vault+kv2://secret/{m['path']}")
    jwt = _jwt(cluster, m["namespace"], "intruder", tmp_path)
    provider = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m["mount"], token_path=jwt))
    try:
        with pytest.raises(ProviderDenied) as err:
            await provider.read(uri)
        assert jwt.read_text().strip() not in str(err.value)
    finally:
        await provider.close()


async def test_a_deleted_accounts_token_is_refused_by_token_review(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: dict[str, Any], tmp_path: Path
) -> None:
    m = kubernetes_mount
    uri = parse_secret_uri(f"vault+kv2://secret/{m['path']}")
    jwt = _jwt(cluster, m["namespace"], "operator", tmp_path)
    cluster.kubectl("delete", "serviceaccount", "operator", "-n", m["namespace"])
    provider = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m["mount"], token_path=jwt))
    try:
        with pytest.raises(ProviderDenied) as err:
            await provider.read(uri)
        assert jwt.read_text().strip() not in str(err.value)
    finally:
        await provider.close()
