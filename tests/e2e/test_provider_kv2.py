"""The KV v2 provider against a real Vault dev server (secretgrants.providers.kv2).

Every test works under its own path (and its own auth mounts), so they share
the session's Vault. Tests that stop or seal a server start their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest

from secretgrants.devenv import VaultDevServer
from secretgrants.errors import (
    KeyNotFound,
    ProviderDenied,
    ProviderUnavailable,
    SecretGrantsError,
    SecretNotFound,
    UnsupportedOperation,
    VersionDeleted,
    VersionDestroyed,
)
from secretgrants.providers import (
    PURPOSE_OPERATIONS,
    AppRoleAuth,
    KubernetesAuth,
    KV2Provider,
    Provider,
    ProviderRegistry,
    TokenAuth,
    build_kv2_provider,
    build_providers,
)
from secretgrants.settings import Settings
from secretgrants.uri import SecretURI, parse_secret_uri

SECRET = "S3cr3t-VALUE-xyz"
ALICE = "system:serviceaccount:payments:alice"
BOB = "system:serviceaccount:payments:bob"

FULL_POLICY = """
path "secret/*" { capabilities = ["create", "read", "update", "patch", "delete", "list"] }
"""


# ---------------------------------------------------------------- fixtures and helpers


def root_client(vault: VaultDevServer) -> Any:
    return hvac.Client(url=vault.addr, token=vault.root_token)


@pytest.fixture
def root(vault: VaultDevServer) -> Iterator[Any]:
    client = root_client(vault)
    yield client
    client.adapter.close()


@pytest.fixture
def base() -> str:
    """A path prefix of this test's own."""
    return f"sgtest/{uuid.uuid4().hex[:10]}"


def kv(base: str, rest: str, provider: str = "vault") -> SecretURI:
    return parse_secret_uri(f"{provider}+kv2://secret/{base}/{rest}")


@pytest.fixture
async def provider(vault: VaultDevServer) -> AsyncIterator[KV2Provider]:
    p = KV2Provider(vault.addr, TokenAuth(vault.root_token), timeout=5.0)
    yield p
    await p.close()


@dataclass
class AppRole:
    mount: str
    role_id: str
    secret_id: str

    def auth(self) -> AppRoleAuth:
        return AppRoleAuth(self.role_id, self.secret_id, mount=self.mount)


def make_approle(root: Any, policy_hcl: str = FULL_POLICY, **role: Any) -> AppRole:
    """A fresh AppRole mount with one role bound to a fresh policy."""
    name = f"sg-{uuid.uuid4().hex[:8]}"
    root.sys.enable_auth_method("approle", path=name)
    root.sys.create_or_update_policy(name=name, policy=policy_hcl)
    root.auth.approle.create_or_update_approle(
        role_name="operator", token_policies=[name], mount_point=name, **role
    )
    role_id = root.auth.approle.read_role_id("operator", mount_point=name)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("operator", mount_point=name)["data"][
        "secret_id"
    ]
    return AppRole(name, role_id, secret_id)


def limited_token(root: Any, policy_hcl: str, **kwargs: Any) -> str:
    name = f"sg-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_policy(name=name, policy=policy_hcl)
    kwargs.setdefault("ttl", "1h")
    return str(root.auth.token.create(policies=[name], **kwargs)["auth"]["client_token"])


# ---------------------------------------------------------------- the operations


async def test_is_a_provider(provider: KV2Provider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "vault"
    for operation in PURPOSE_OPERATIONS.values():
        assert callable(getattr(provider, operation))
    assert "sg-dev-root" not in repr(provider)


async def test_write_and_read_latest_and_pinned(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "db")
    assert await provider.write(uri, {"user": "u", "password": "one"}, actor=ALICE) == 1
    assert await provider.write(uri, {"user": "u", "password": "two"}, actor=ALICE) == 2

    latest = await provider.read(uri)
    assert dict(latest.data) == {"user": "u", "password": "two"}
    assert latest.version == 2
    assert latest.metadata is not None and latest.metadata.version == 2
    assert latest.metadata.created_time is not None and latest.metadata.readable
    assert repr(latest) == "SecretData(keys=['password', 'user'], version=2)"

    first = await provider.read(uri, version=1)
    assert dict(first.data) == {"user": "u", "password": "one"} and first.version == 1

    one_key = await provider.read(kv(base, "db#password"), version=1)
    assert dict(one_key.data) == {"password": "one"} and one_key.version == 1

    with pytest.raises(KeyNotFound, match="'nope'"):
        await provider.read(kv(base, "db#nope"))


async def test_non_string_values_are_delivered_as_json(
    provider: KV2Provider, root: Any, base: str
) -> None:
    root.secrets.kv.v2.create_or_update_secret(
        path=f"{base}/mixed", secret={"port": 5432, "on": True, "list": [1, "a"], "s": "x"}
    )
    got = await provider.read(kv(base, "mixed"))
    assert dict(got.data) == {"port": "5432", "on": "true", "list": '[1,"a"]', "s": "x"}


async def test_not_found(provider: KV2Provider, base: str) -> None:
    with pytest.raises(SecretNotFound):
        await provider.read(kv(base, "absent"))
    with pytest.raises(SecretNotFound):
        await provider.read_metadata(kv(base, "absent"))
    await provider.write(kv(base, "one"), {"k": "v"}, actor=ALICE)
    with pytest.raises(SecretNotFound, match="version 9"):
        await provider.read(kv(base, "one"), version=9)


async def test_deleted_and_destroyed_versions(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "versions")
    for n in (1, 2, 3, 4):
        assert await provider.write(uri, {"n": str(n)}, actor=ALICE) == n

    await provider.delete(uri, [1])
    await provider.destroy_versions(uri, [2])
    await provider.delete(uri)  # the latest: 4

    with pytest.raises(VersionDeleted, match="version 1"):
        await provider.read(uri, version=1)
    with pytest.raises(VersionDestroyed, match="version 2"):
        await provider.read(uri, version=2)
    with pytest.raises(VersionDeleted, match=r"latest version \(4\)"):
        await provider.read(uri)
    assert dict((await provider.read(uri, version=3)).data) == {"n": "3"}

    meta = await provider.read_metadata(uri)
    assert meta.current_version == 4
    assert sorted(meta.versions) == [1, 2, 3, 4]
    assert meta.versions[1].deleted and not meta.versions[1].destroyed
    assert meta.versions[2].destroyed and not meta.versions[2].deleted
    assert meta.versions[3].readable
    assert meta.versions[4].deleted
    assert meta.created_time is not None and meta.updated_time is not None

    await provider.undelete(uri, [1, 4])
    assert dict((await provider.read(uri, version=1)).data) == {"n": "1"}
    latest = await provider.read(uri)
    assert latest.version == 4 and dict(latest.data) == {"n": "4"}
    # Destroyed is for good.
    await provider.undelete(uri, [2])
    with pytest.raises(VersionDestroyed):
        await provider.read(uri, version=2)

    # Destroying the latest version: reads of it say destroyed, never empty data.
    await provider.destroy_versions(uri, [4])
    with pytest.raises(VersionDestroyed, match=r"latest version \(4\)"):
        await provider.read(uri)


async def test_version_arguments_are_checked(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "v")
    with pytest.raises(ValueError, match="positive"):
        await provider.read(uri, version=0)
    with pytest.raises(ValueError, match="at least one"):
        await provider.delete(uri, [])
    with pytest.raises(ValueError, match="positive"):
        await provider.destroy_versions(uri, [-1])
    with pytest.raises(ValueError, match="at least one"):
        await provider.undelete(uri, [])


async def test_creation_is_stamped_on_first_write_only(
    provider: KV2Provider, root: Any, base: str
) -> None:
    uri = kv(base, "stamped")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    await provider.write(uri, {"k": "1"}, actor=ALICE)
    meta = await provider.read_metadata(uri)
    assert meta.created_by == ALICE
    assert meta.created_at is not None and before <= meta.created_at <= dt.datetime.now(dt.UTC)
    assert meta.owner is None
    assert meta.custom_metadata["created_by"] == ALICE

    await provider.write(uri, {"k": "2"}, actor=BOB)
    await provider.rotate(uri, {"k": "3"}, actor=BOB)
    again = await provider.read_metadata(uri)
    assert again.created_by == ALICE and again.created_at == meta.created_at
    assert again.current_version == 3

    # Custom metadata set by others is kept by our changes.
    root.adapter.request(
        "patch",
        f"/v1/secret/metadata/{base}/stamped",
        headers={"Content-Type": "application/merge-patch+json"},
        json={"custom_metadata": {"ticket": "SEC-1"}},
    )
    await provider.update_owner(uri, "team-payments", actor=BOB)
    owned = await provider.read_metadata(uri)
    assert owned.owner == "team-payments"
    assert owned.created_by == ALICE
    assert owned.custom_metadata["owner_updated_by"] == BOB
    assert owned.custom_metadata["ticket"] == "SEC-1"
    assert (await provider.read(uri)).custom_metadata["owner"] == "team-payments"

    with pytest.raises(SecretNotFound):
        await provider.update_owner(kv(base, "absent"), "x", actor=BOB)


async def test_rotate_requires_an_existing_secret(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "rot")
    with pytest.raises(SecretNotFound):
        await provider.rotate(uri, {"k": "v"}, actor=ALICE)
    with pytest.raises(SecretNotFound):
        await provider.read_metadata(uri)  # nothing was created
    await provider.write(uri, {"k": "v1", "other": "o"}, actor=ALICE)
    assert await provider.rotate(uri, {"k": "v2"}, actor=BOB) == 2
    got = await provider.read(uri)
    assert dict(got.data) == {"k": "v2"} and got.version == 2


async def test_write_one_key_keeps_the_others(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "frag")
    assert await provider.write(kv(base, "frag#a"), {"a": "1"}, actor=ALICE) == 1
    assert await provider.write(kv(base, "frag#b"), {"b": "2"}, actor=ALICE) == 2
    assert dict((await provider.read(uri)).data) == {"a": "1", "b": "2"}
    assert (await provider.read_metadata(uri)).created_by == ALICE
    with pytest.raises(UnsupportedOperation, match="exactly that key"):
        await provider.write(kv(base, "frag#a"), {"a": "1", "b": "x"}, actor=ALICE)
    # Concurrent one-key writes: check-and-set makes none of them lost.
    await asyncio.gather(
        *(provider.write(kv(base, f"frag#c{i}"), {f"c{i}": str(i)}, actor=BOB) for i in range(3))
    )
    data = dict((await provider.read(uri)).data)
    assert data == {"a": "1", "b": "2", "c0": "0", "c1": "1", "c2": "2"}


async def test_write_refuses_non_string_values(provider: KV2Provider, base: str) -> None:
    with pytest.raises(TypeError, match="'k' is a int") as err:
        await provider.write(kv(base, "x"), {"k": 424242}, actor=ALICE)  # type: ignore[dict-item]
    assert "424242" not in str(err.value)


async def test_list_keys(provider: KV2Provider, base: str) -> None:
    for rest in ("app/a", "app/b", "app/sub/c"):
        await provider.write(kv(base, rest), {"k": "v"}, actor=ALICE)
    assert await provider.list_keys(kv(base, "app")) == ["a", "b", "sub/"]
    assert await provider.list_keys(kv(base, "app/sub")) == ["c"]
    assert await provider.list_keys(kv(base, "nothing")) == []


async def test_concurrent_reads_share_one_client(provider: KV2Provider, base: str) -> None:
    uri = kv(base, "conc")
    await provider.write(uri, {"k": "v"}, actor=ALICE)
    results = await asyncio.gather(*(provider.read(uri) for _ in range(20)))
    assert {r.data["k"] for r in results} == {"v"}
    assert provider.logins == 1


async def test_closed_provider_refuses(vault: VaultDevServer, base: str) -> None:
    p = KV2Provider(vault.addr, TokenAuth(vault.root_token))
    await p.close()
    await p.close()  # idempotent
    with pytest.raises(ProviderUnavailable, match="closed"):
        await p.read(kv(base, "x"))


# ---------------------------------------------------------------- authentication


async def test_token_auth_with_a_renewable_token(
    vault: VaultDevServer, root: Any, base: str
) -> None:
    token = limited_token(root, FULL_POLICY)
    p = KV2Provider(vault.addr, TokenAuth(token))
    try:
        await p.write(kv(base, "t"), {"k": "v"}, actor=ALICE)
        assert dict((await p.read(kv(base, "t"))).data) == {"k": "v"}
        assert p.logins == 1
    finally:
        await p.close()


async def test_token_auth_renews_before_expiry(vault: VaultDevServer, root: Any, base: str) -> None:
    token = limited_token(root, FULL_POLICY, ttl="3s")  # renewable, 3 s at a time
    p = KV2Provider(vault.addr, TokenAuth(token))
    try:
        await p.write(kv(base, "t"), {"k": "v"}, actor=ALICE)
        await asyncio.sleep(2.3)  # past 2/3 of the TTL
        await p.read(kv(base, "t"))
        assert p.renewals == 1 and p.logins == 1
        await asyncio.sleep(2.0)  # past the original 3 s: alive thanks to the renewal
        assert dict((await p.read(kv(base, "t"))).data) == {"k": "v"}
        assert p.logins == 1
    finally:
        await p.close()


async def test_static_token_revoked_is_denied(vault: VaultDevServer, root: Any, base: str) -> None:
    token = limited_token(root, FULL_POLICY)
    p = KV2Provider(vault.addr, TokenAuth(token))
    try:
        await p.write(kv(base, "t"), {"k": "v"}, actor=ALICE)
        root.auth.token.revoke(token)
        with pytest.raises(ProviderDenied, match="permission denied"):
            await p.read(kv(base, "t"))
        assert p.logins == 1, "a static token cannot be replaced by logging in again"
    finally:
        await p.close()


async def test_approle_auth(vault: VaultDevServer, root: Any, base: str) -> None:
    role = make_approle(root, token_ttl="1h", token_max_ttl="2h")
    p = KV2Provider(vault.addr, role.auth())
    try:
        assert await p.write(kv(base, "ar"), {"k": "v"}, actor=ALICE) == 1
        assert dict((await p.read(kv(base, "ar"))).data) == {"k": "v"}
        assert (await p.read_metadata(kv(base, "ar"))).created_by == ALICE
        assert p.logins == 1 and p.renewals == 0
        assert role.secret_id not in repr(p) and role.secret_id not in repr(role.auth())
    finally:
        await p.close()


async def test_approle_logs_in_again_after_the_ttl_lapses(
    vault: VaultDevServer, root: Any, base: str
) -> None:
    role = make_approle(root, token_ttl="2s", token_max_ttl="2s")
    p = KV2Provider(vault.addr, role.auth())
    try:
        await p.write(kv(base, "ttl"), {"k": "v"}, actor=ALICE)
        assert p.logins == 1
        await asyncio.sleep(2.5)  # the token has expired
        assert dict((await p.read(kv(base, "ttl"))).data) == {"k": "v"}
        assert p.logins == 2
    finally:
        await p.close()


async def test_approle_renews_before_expiry(vault: VaultDevServer, root: Any, base: str) -> None:
    role = make_approle(root, token_ttl="3s", token_max_ttl="1h")
    p = KV2Provider(vault.addr, role.auth())
    try:
        await p.write(kv(base, "renew"), {"k": "v"}, actor=ALICE)
        await asyncio.sleep(2.2)
        await p.read(kv(base, "renew"))
        assert (p.logins, p.renewals) == (1, 1)
    finally:
        await p.close()


async def test_revoked_approle_token_is_replaced_once(
    vault: VaultDevServer, root: Any, base: str
) -> None:
    """A 403 from a dead token: log in again and retry, once."""
    role = make_approle(root, token_ttl="1h")
    p = KV2Provider(vault.addr, role.auth())
    try:
        await p.write(kv(base, "rev"), {"k": "v"}, actor=ALICE)
        root.auth.token.revoke(p._client.token)
        assert dict((await p.read(kv(base, "rev"))).data) == {"k": "v"}
        assert p.logins == 2
        # Writes take the same path.
        root.auth.token.revoke(p._client.token)
        assert await p.write(kv(base, "rev"), {"k": "w"}, actor=ALICE) == 2
        assert p.logins == 3
    finally:
        await p.close()


async def test_revoked_secret_id_fails_denied_after_one_retry(
    vault: VaultDevServer, root: Any, base: str
) -> None:
    role = make_approle(root, token_ttl="1h")
    p = KV2Provider(vault.addr, role.auth())
    try:
        await p.write(kv(base, "rev"), {"k": "v"}, actor=ALICE)
        root.auth.approle.destroy_secret_id("operator", role.secret_id, mount_point=role.mount)
        root.auth.token.revoke(p._client.token)
        with pytest.raises(ProviderDenied, match="refused the approle login"):
            await p.read(kv(base, "rev"))
        assert p.logins == 1
    finally:
        await p.close()


async def test_approle_bad_credentials(vault: VaultDevServer, root: Any, base: str) -> None:
    role = make_approle(root)
    p = KV2Provider(vault.addr, AppRoleAuth(role.role_id, "not-the-secret-id", mount=role.mount))
    try:
        with pytest.raises(ProviderDenied, match="refused the approle login"):
            await p.read(kv(base, "x"))
    finally:
        await p.close()
    p = KV2Provider(vault.addr, AppRoleAuth("r", "s", mount="no-such-mount"))
    try:
        with pytest.raises(ProviderDenied, match="refused the approle login"):
            await p.read(kv(base, "x"))
    finally:
        await p.close()


async def test_kubernetes_auth_login_is_attempted_at_the_mount(
    vault: VaultDevServer, root: Any, tmp_path: Path, base: str
) -> None:
    """The request reaches Vault's kubernetes auth method (which cannot verify it here)."""
    mount = f"sg-k8s-{uuid.uuid4().hex[:6]}"
    root.sys.enable_auth_method("kubernetes", path=mount)
    root.auth.kubernetes.configure(
        kubernetes_host="https://127.0.0.1:1", disable_local_ca_jwt=True, mount_point=mount
    )
    root.auth.kubernetes.create_role(
        "operator",
        bound_service_account_names=["secretgrants"],
        bound_service_account_namespaces=["secretgrants"],
        mount_point=mount,
    )
    jwt = tmp_path / "token"
    jwt.write_text("not-a-real.jwt.token\n")
    p = KV2Provider(vault.addr, KubernetesAuth("operator", mount=mount, token_path=jwt))
    try:
        with pytest.raises(ProviderDenied, match="refused the kubernetes login") as err:
            await p.read(kv(base, "x"))
        assert "not-a-real" not in str(err.value)
    finally:
        await p.close()


# ---------------------------------------------------------------- policy denial


async def test_policy_limited_token_is_denied(vault: VaultDevServer, root: Any, base: str) -> None:
    policy = f"""
path "secret/data/{base}/readable" {{ capabilities = ["read"] }}
path "secret/data/{base}/writable" {{ capabilities = ["create", "update"] }}
"""
    root.secrets.kv.v2.create_or_update_secret(path=f"{base}/readable", secret={"k": "r"})
    root.secrets.kv.v2.create_or_update_secret(path=f"{base}/hidden", secret={"k": "h"})
    p = KV2Provider(vault.addr, TokenAuth(limited_token(root, policy)))
    try:
        assert dict((await p.read(kv(base, "readable"))).data) == {"k": "r"}
        with pytest.raises(ProviderDenied):
            await p.read(kv(base, "hidden"))
        with pytest.raises(ProviderDenied):
            await p.write(kv(base, "readable"), {"k": "x"}, actor=ALICE)
        with pytest.raises(ProviderDenied):
            await p.read_metadata(kv(base, "readable"))
        with pytest.raises(ProviderDenied):
            await p.delete(kv(base, "readable"))
        with pytest.raises(ProviderDenied):
            await p.list_keys(kv(base, "readable"))
    finally:
        await p.close()


async def test_policy_denial_does_not_trigger_a_new_login(
    vault: VaultDevServer, root: Any, base: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = f"""
path "secret/data/{base}/writable" {{ capabilities = ["create", "update", "read"] }}
"""
    role = make_approle(root, policy, token_ttl="1h")
    p = KV2Provider(vault.addr, role.auth())
    caplog.set_level(logging.WARNING, logger="secretgrants.providers.kv2")
    try:
        # Writing works; stamping the metadata is refused, and only logged.
        assert await p.write(kv(base, "writable"), {"k": "v"}, actor=ALICE) == 1
        assert any("could not stamp" in r.getMessage() for r in caplog.records)
        with pytest.raises(ProviderDenied):
            await p.read(kv(base, "other"))
        assert p.logins == 1, "a valid token refused by policy is not replaced"
    finally:
        await p.close()
    meta = (root.secrets.kv.v2.read_secret_metadata(path=f"{base}/writable"))["data"]
    assert not meta.get("custom_metadata")


# ---------------------------------------------------------------- unavailability


async def test_unavailable_when_stopped_or_sealed(tmp_path: Path, base: str) -> None:
    server = VaultDevServer(tmp_path).start()
    try:
        p = KV2Provider(server.addr, TokenAuth(server.root_token), timeout=2.0)
        await p.write(kv(base, "u"), {"k": "v"}, actor=ALICE)
        client = root_client(server)
        client.sys.seal()
        client.adapter.close()
        with pytest.raises(ProviderUnavailable, match="sealed"):
            await p.read(kv(base, "u"))
        server.stop()
        with pytest.raises(ProviderUnavailable, match="unreachable"):
            await p.read(kv(base, "u"))
        with pytest.raises(ProviderUnavailable, match="unreachable"):
            await p.write(kv(base, "u"), {"k": "w"}, actor=ALICE)
        await p.close()
    finally:
        server.stop()


async def test_unreachable_at_login(base: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = KV2Provider(f"http://127.0.0.1:{port}", AppRoleAuth("r", "s"), timeout=1.0)
    try:
        with pytest.raises(ProviderUnavailable, match="unreachable"):
            await p.read(kv(base, "x"))
    finally:
        await p.close()


async def test_timeout_is_unavailable(base: str) -> None:
    """A server that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        p = KV2Provider(f"http://127.0.0.1:{port}", TokenAuth("t"), timeout=0.5)
        started = time.monotonic()
        try:
            with pytest.raises(ProviderUnavailable, match=r"did not answer .* within 0.5s"):
                await p.read(kv(base, "x"))
        finally:
            await p.close()
        assert time.monotonic() - started < 10


# ---------------------------------------------------------------- TLS


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    """A Vault whose certificate a private CA signs: VAULT_CACERT, on every code path."""
    server = VaultDevServer(tmp_path, tls=True).start()
    uri = parse_secret_uri("vault+kv2://secret/tls/db")
    try:
        trusted = build_kv2_provider(
            Settings(
                vault_url=server.addr,
                vault_token=server.root_token,
                vault_ca_cert=server.ca_cert,
            )
        )
        try:
            await trusted.write(uri, {"password": SECRET}, actor=ALICE)  # hvac, in the pool
            data = await trusted.read(uri)  # aiohttp, on the loop
            meta = await trusted.read_metadata(uri)
        finally:
            await trusted.close()
        assert dict(data.data) == {"password": SECRET} and meta.current_version == 1

        # Without the CA: refused, named as a certificate problem, for both paths.
        untrusted = build_kv2_provider(
            Settings(vault_url=server.addr, vault_token=server.root_token)
        )
        try:
            for call in (untrusted.read(uri), untrusted.write(uri, {"k": "v"}, actor=ALICE)):
                with pytest.raises(ProviderUnavailable, match="TLS certificate was not accepted"):
                    await call
        finally:
            await untrusted.close()
    finally:
        server.stop()
    with pytest.raises(ValueError, match="VAULT_CACERT names"):
        build_kv2_provider(
            Settings(vault_url=server.addr, vault_token="t", vault_ca_cert=tmp_path / "nope.pem")
        )


# ---------------------------------------------------------------- settings and registry


async def test_build_from_settings(vault: VaultDevServer, root: Any, base: str) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=f"{base}/s", secret={"k": "v"})

    p = build_kv2_provider(Settings(vault_url=vault.addr, vault_token=vault.root_token))
    assert isinstance(p.auth, TokenAuth)
    assert dict((await p.read(kv(base, "s"))).data) == {"k": "v"}
    await p.close()

    role = make_approle(root)
    p = build_kv2_provider(
        Settings(
            vault_url=vault.addr,
            vault_auth_method="approle",
            vault_role_id=role.role_id,
            vault_secret_id=role.secret_id,
        ),
        approle_mount=role.mount,
    )
    assert isinstance(p.auth, AppRoleAuth)
    assert dict((await p.read(kv(base, "s"))).data) == {"k": "v"}
    await p.close()

    p = build_kv2_provider(
        Settings(
            vault_url=vault.addr,
            vault_auth_method="kubernetes",
            vault_kubernetes_role="operator",
            vault_kubernetes_mount="k8s",
        )
    )
    assert isinstance(p.auth, KubernetesAuth)
    assert p.auth.mount == "k8s" and p.auth.role == "operator"
    await p.close()

    for incomplete in (
        Settings(vault_url=vault.addr),
        Settings(vault_url=vault.addr, vault_auth_method="approle", vault_role_id="r"),
        Settings(vault_url=vault.addr, vault_auth_method="kubernetes"),
    ):
        with pytest.raises(ValueError, match="VAULT_"):
            build_kv2_provider(incomplete)
    with pytest.raises(ValueError, match="VAULT_URL"):
        build_kv2_provider(Settings(vault_token="t"))


async def test_registry_serves_vault_and_openbao(
    vault: VaultDevServer, root: Any, base: str, tmp_path: Path
) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=f"{base}/s", secret={"k": "v"})
    settings = Settings(
        vault_url=vault.addr,
        vault_token=vault.root_token,
        # The Vault dev server stands in for OpenBao: the KV v2 API is the same.
        openbao_url=vault.addr,
        openbao_token=vault.root_token,
        yaml_vault_path=tmp_path / "s.yaml",
    )
    assert set(build_providers(settings)) == {"vault", "openbao", "yaml"}
    registry = ProviderRegistry.from_settings(settings)
    try:
        for name in ("vault", "openbao"):
            uri = kv(base, "s", provider=name)
            p = registry.provider_for(uri)
            assert p.name == name
            assert dict((await p.read(uri)).data) == {"k": "v"}
    finally:
        await registry.close()
    only_vault = ProviderRegistry.from_settings(
        Settings(vault_url=vault.addr, vault_token=vault.root_token)
    )
    with pytest.raises(UnsupportedOperation, match="'openbao' is not configured"):
        only_vault.provider_for(kv(base, "s", provider="openbao"))
    await only_vault.close()


# ---------------------------------------------------------------- redaction


def assert_clean(exc: BaseException, *needles: str) -> None:
    """None of ``needles`` in the exception, its args, attributes, or its chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = [str(current), repr(current), repr(current.args), repr(vars(current))]
        if isinstance(current, SecretGrantsError):
            texts.append(current.message)
        for text in texts:
            for needle in needles:
                assert needle not in text, f"{type(current).__name__} leaks: {text}"
        current = current.__cause__ or current.__context__


async def test_no_error_path_leaks_the_value_or_the_token(
    vault: VaultDevServer, root: Any, base: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("hvac", "urllib3", "requests", "secretgrants"):
        caplog.set_level(logging.DEBUG, logger=name)

    token = limited_token(root, FULL_POLICY)
    role = make_approle(root, token_ttl="1h")
    needles = (SECRET, token, role.secret_id, vault.root_token)
    p = KV2Provider(vault.addr, TokenAuth(token))
    ar = KV2Provider(vault.addr, role.auth())
    uri = kv(base, "leak")
    await p.write(uri, {"password": SECRET}, actor=ALICE)  # v1
    await p.write(uri, {"password": SECRET, "x": SECRET}, actor=ALICE)  # v2
    await p.write(uri, {"password": SECRET}, actor=ALICE)  # v3
    await p.delete(uri, [1])
    await p.destroy_versions(uri, [2])
    denied_token = limited_token(root, 'path "secret/data/nothing" { capabilities = ["read"] }')
    denied = KV2Provider(vault.addr, TokenAuth(denied_token))
    bad_login = KV2Provider(vault.addr, AppRoleAuth(role.role_id, SECRET, mount=role.mount))

    server = VaultDevServer(tmp_path).start()
    gone = KV2Provider(server.addr, TokenAuth(server.root_token), timeout=1.0)
    await gone.write(uri, {"password": SECRET}, actor=ALICE)
    server.stop()

    calls = [
        p.read(kv(base, "leak#nope")),
        p.read(uri, version=1),
        p.read(uri, version=2),
        p.read(uri, version=7),
        p.read(kv(base, "absent")),
        p.rotate(kv(base, "absent"), {"password": SECRET}, actor=ALICE),
        p.write(kv(base, "leak#password"), {"other": SECRET}, actor=ALICE),
        p.write(uri, {"password": SECRET, "n": 1}, actor=ALICE),  # type: ignore[dict-item]
        denied.read(uri),
        denied.read_metadata(uri),
        denied.write(uri, {"password": SECRET}, actor=ALICE),
        denied.rotate(uri, {"password": SECRET}, actor=ALICE),
        denied.delete(uri, [3]),
        denied.destroy_versions(uri, [3]),
        denied.undelete(uri, [1]),
        denied.list_keys(uri),
        denied.update_owner(uri, SECRET, actor=ALICE),
        bad_login.read(uri),
        bad_login.write(uri, {"password": SECRET}, actor=ALICE),
        gone.read(uri),
        gone.write(uri, {"password": SECRET}, actor=ALICE),
    ]
    try:
        for call in calls:
            with pytest.raises((SecretGrantsError, TypeError)) as err:
                await call
            assert_clean(err.value, *needles)
        # Successful reads around a revoked token: the re-login path, logged.
        assert (await ar.read(uri)).data["password"] == SECRET
        root.auth.token.revoke(ar._client.token)
        assert (await ar.read(uri)).data["password"] == SECRET
        assert ar.logins == 2
    finally:
        for provider in (p, ar, denied, bad_login, gone):
            await provider.close()
        server.stop()

    assert caplog.records, "debug logging was captured"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for needle in needles:
            assert needle not in text, f"log record of {record.name} leaks: {text}"
