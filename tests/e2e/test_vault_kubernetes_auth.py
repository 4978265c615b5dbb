"""Vault's Kubernetes auth method end to end: Vault calls the real apiserver's TokenReview.

What goes in: a reviewer ServiceAccount bound to ``system:auth-delegator``, a
fresh ``kubernetes`` auth mount configured with the apiserver's URL and CA
(read from the kubeconfig, so a given cluster works too), a role for the
ServiceAccount ``operator`` with a policy that reads one KV v2 path, and
ServiceAccount tokens minted by ``kubectl create token``. What comes out: the
provider (built directly or from the settings) logs in and reads; another
account's token, a deleted account's token and a token for the wrong audience
are refused with ``ProviderDenied``, and no token appears in the error.

The ``operator`` role sets no audience: Vault then sends a TokenReview without
audiences, which the apiserver checks against its own (``--api-audiences``),
as for the pod's default ServiceAccount token the operator reads. The
``operator-aud`` role requires the audience ``vault``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import yaml

from secretgrants.devenv import VaultDevServer
from secretgrants.errors import ProviderDenied, ProviderError
from secretgrants.providers import KubernetesAuth, KV2Provider
from secretgrants.providers.kv2 import build_kv2_provider
from secretgrants.reasons import Reason
from secretgrants.settings import Settings, VaultAuthMethod
from secretgrants.uri import SecretURI, parse_secret_uri
from tests.conftest import Cluster
from tests.e2e.kube import eventually

ROLE = "operator"
AUDIENCE_ROLE = "operator-aud"
AUDIENCE = "vault"
VALUE = "k8s-auth-value"


@dataclass(frozen=True)
class Mount:
    mount: str
    namespace: str
    uri: SecretURI
    """The one secret the role's policy may read."""
    other: SecretURI
    """A secret next to it that the policy does not cover."""


def _server_and_ca(cluster: Cluster) -> tuple[str, str]:
    """The apiserver URL and CA PEM of the kubeconfig's current context."""
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
    assert "BEGIN CERTIFICATE" in ca
    return str(server["server"]), ca


@pytest.fixture
def kubernetes_mount(cluster: Cluster, namespace: str, vault: VaultDevServer) -> Iterator[Mount]:
    ns = namespace
    binding = f"sg-{uuid.uuid4().hex[:8]}-reviewer"
    mount = f"k8s-{uuid.uuid4().hex[:8]}"
    base = f"sgk8s/{uuid.uuid4().hex[:8]}"
    root = hvac.Client(url=vault.addr, token=vault.root_token)
    try:
        cluster.kubectl("create", "serviceaccount", "vault-reviewer", "-n", ns)
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
            name=mount, policy=f'path "secret/data/{base}/db" {{ capabilities = ["read"] }}'
        )
        for role, audience in ((ROLE, None), (AUDIENCE_ROLE, AUDIENCE)):
            root.auth.kubernetes.create_role(
                role,
                bound_service_account_names=["operator"],
                bound_service_account_namespaces=[ns],
                policies=[mount],
                ttl="5m",
                audience=audience,
                mount_point=mount,
            )
        for name in ("db", "other"):
            root.secrets.kv.v2.create_or_update_secret(
                path=f"{base}/{name}", secret={"password": VALUE}, mount_point="secret"
            )
        yield Mount(
            mount=mount,
            namespace=ns,
            uri=parse_secret_uri(f"vault+kv2://secret/{base}/db#password"),
            other=parse_secret_uri(f"vault+kv2://secret/{base}/other"),
        )
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, check=False)
        root.sys.disable_auth_method(mount)
        root.sys.delete_policy(mount)
        root.adapter.close()


def _jwt(
    cluster: Cluster,
    ns: str,
    sa: str,
    tmp_path: Path,
    audience: str | None = None,
    label: str = "token",
) -> Path:
    """A fresh token for ``sa`` in its own file, as the kubelet would project it."""
    args = ["create", "token", sa, "-n", ns, "--duration=10m"]
    if audience:
        args.append(f"--audience={audience}")
    token = cluster.kubectl(*args).stdout.strip()
    assert token.count(".") == 2
    path = tmp_path / f"{sa}-{audience or 'default'}-{label}.jwt"
    assert not path.exists()
    path.write_text(token + "\n")
    return path


def _token_review(cluster: Cluster, jwt: Path) -> dict[str, object]:
    """What the apiserver itself says about the token (the same review Vault asks for)."""
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": jwt.read_text().strip()},
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout
    status: dict[str, object] = json.loads(out)["status"]
    return status


def _assert_login_refused(err: pytest.ExceptionInfo[ProviderError], jwt: Path) -> None:
    error = err.value
    assert type(error) is ProviderDenied
    assert error.reason == Reason.PROVIDER_DENIED
    assert "refused the kubernetes login" in error.message
    token = jwt.read_text().strip()
    for shown in (str(error), repr(error), error.message):
        assert token not in shown
        assert token.split(".")[1] not in shown  # not even the claims
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_login_with_the_operators_service_account_token_and_read(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: Mount, tmp_path: Path
) -> None:
    m = kubernetes_mount
    jwt = _jwt(cluster, m.namespace, "operator", tmp_path)
    provider = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m.mount, token_path=jwt))
    try:
        data = await provider.read(m.uri)
        assert dict(data.data) == {"password": VALUE}
        assert provider.logins == 1
        # The Vault token carries the role's policy and nothing more.
        with pytest.raises(ProviderDenied) as err:
            await provider.read(m.other)
        assert "denied read" in err.value.message
        assert provider.logins == 1  # the token was fine: no second login
    finally:
        await provider.close()


async def test_the_provider_built_from_settings_uses_kubernetes_auth(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: Mount, tmp_path: Path
) -> None:
    m = kubernetes_mount
    jwt = _jwt(cluster, m.namespace, "operator", tmp_path)
    settings = Settings(
        vault_url=vault.addr,
        vault_auth_method=VaultAuthMethod.KUBERNETES,
        vault_kubernetes_role=ROLE,
        vault_kubernetes_mount=m.mount,
    )
    provider = build_kv2_provider(settings, kubernetes_token_path=jwt)
    try:
        assert isinstance(provider.auth, KubernetesAuth)
        assert dict((await provider.read(m.uri)).data) == {"password": VALUE}
        assert provider.logins == 1
    finally:
        await provider.close()


async def test_another_accounts_token_is_refused(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: Mount, tmp_path: Path
) -> None:
    m = kubernetes_mount
    jwt = _jwt(cluster, m.namespace, "intruder", tmp_path)
    # A valid token, for an account the role is not bound to.
    assert _token_review(cluster, jwt).get("authenticated") is True
    provider = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m.mount, token_path=jwt))
    try:
        with pytest.raises(ProviderDenied) as err:
            await provider.read(m.uri)
        _assert_login_refused(err, jwt)
        assert provider.logins == 0
    finally:
        await provider.close()


async def test_a_deleted_accounts_token_is_refused_by_token_review(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: Mount, tmp_path: Path
) -> None:
    """A fresh login with a token of a deleted account fails; a Vault token already issued does not.

    The apiserver caches a successful token authentication for 10 s, so the
    token that logged in before the deletion would pass TokenReview for a few
    more seconds; the old token tried after the deletion is a second one,
    minted at the same time for the same account and not reviewed before.
    """
    m = kubernetes_mount
    used = _jwt(cluster, m.namespace, "operator", tmp_path)
    old = _jwt(cluster, m.namespace, "operator", tmp_path, label="old")
    assert old.read_text() != used.read_text()
    before = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m.mount, token_path=used))
    try:
        assert dict((await before.read(m.uri)).data) == {"password": VALUE}

        cluster.kubectl("delete", "serviceaccount", "operator", "-n", m.namespace)

        def rejected() -> None:
            assert _token_review(cluster, old).get("authenticated") is not True

        eventually(rejected, timeout=10)
        after = KV2Provider(vault.addr, KubernetesAuth(ROLE, mount=m.mount, token_path=old))
        try:
            with pytest.raises(ProviderDenied) as err:
                await after.read(m.uri)
            _assert_login_refused(err, old)
            assert after.logins == 0
        finally:
            await after.close()

        # Vault does not revoke what it issued: the Vault token lives out its TTL
        # (the role's 5m), which is why the role's ttl should be short.
        assert dict((await before.read(m.uri)).data) == {"password": VALUE}
        assert before.logins == 1
    finally:
        await before.close()


async def test_a_role_with_an_audience_wants_a_token_for_it(
    cluster: Cluster, vault: VaultDevServer, kubernetes_mount: Mount, tmp_path: Path
) -> None:
    m = kubernetes_mount
    for_vault = _jwt(cluster, m.namespace, "operator", tmp_path, audience=AUDIENCE)
    provider = KV2Provider(
        vault.addr, KubernetesAuth(AUDIENCE_ROLE, mount=m.mount, token_path=for_vault)
    )
    try:
        assert dict((await provider.read(m.uri)).data) == {"password": VALUE}
    finally:
        await provider.close()

    # The pod's default token (the apiserver's audience) does not do for this role.
    default = _jwt(cluster, m.namespace, "operator", tmp_path)
    provider = KV2Provider(
        vault.addr, KubernetesAuth(AUDIENCE_ROLE, mount=m.mount, token_path=default)
    )
    try:
        with pytest.raises(ProviderDenied) as err:
            await provider.read(m.uri)
        _assert_login_refused(err, default)
    finally:
        await provider.close()
