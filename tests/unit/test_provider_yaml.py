"""Tests of the YAML dev provider (secretgrants.providers.yamlfile) on real files."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretgrants.errors import (
    KeyNotFound,
    ProviderUnavailable,
    SecretGrantsError,
    SecretNotFound,
    UnsupportedOperation,
)
from secretgrants.providers import (
    PURPOSE_OPERATIONS,
    Provider,
    ProviderRegistry,
    SecretData,
    YAMLFileProvider,
    build_providers,
)
from secretgrants.reasons import Purpose
from secretgrants.settings import Settings
from secretgrants.uri import parse_secret_uri

SECRET = "S3cr3t-VALUE-xyz"
ACTOR = "system:serviceaccount:payments:deployer"

DOC: dict[str, Any] = {
    "dev": {
        "payments": {
            "db": {
                "username": "payments",
                "password": SECRET,
                "port": 5432,
                "_metadata": {
                    "owner": "team-payments",
                    "created_by": "alice",
                    "created_at": "2025-01-02T03:04:05Z",
                    "ticket": "SEC-1",
                },
            },
            "api": {"token": "tok-1", "v2": {"token": "tok-2"}},
            "folder": {"child": {"k": "v"}},
        },
        "empty": {},
    },
    "other": {"app": {"k": "v"}},
}


def uri(text: str):  # type: ignore[no-untyped-def]
    return parse_secret_uri(text)


def write_doc(path: Path, doc: Any) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def bump_mtime(path: Path, seconds: int = 5) -> None:
    """Make sure a rewrite is seen even on filesystems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.yaml"
    write_doc(path, DOC)
    return path


@pytest.fixture
def ro(vault_file: Path) -> YAMLFileProvider:
    return YAMLFileProvider(vault_file)


@pytest.fixture
def dev(vault_file: Path) -> YAMLFileProvider:
    return YAMLFileProvider(vault_file, dev_mode=True)


# ---------------------------------------------------------------- reads


async def test_is_a_provider(ro: YAMLFileProvider) -> None:
    assert isinstance(ro, Provider)
    assert ro.name == "yaml"


async def test_read_whole_secret(ro: YAMLFileProvider) -> None:
    got = await ro.read(uri("yaml://dev/payments/db"))
    assert dict(got.data) == {"username": "payments", "password": SECRET, "port": "5432"}
    assert got.version is None
    assert got.custom_metadata["owner"] == "team-payments"
    assert "_metadata" not in got.data


async def test_read_fragment(ro: YAMLFileProvider) -> None:
    got = await ro.read(uri("yaml://dev/payments/db#password"))
    assert dict(got.data) == {"password": SECRET}


async def test_read_missing_key(ro: YAMLFileProvider) -> None:
    with pytest.raises(KeyNotFound, match="'nope'"):
        await ro.read(uri("yaml://dev/payments/db#nope"))


@pytest.mark.parametrize(
    "text",
    [
        "yaml://dev/payments/missing",
        "yaml://nomount/payments/db",
        "yaml://dev/payments/db/deeper",
        "yaml://dev/payments/db/password",  # a key, not a mapping
        "yaml://dev/payments/folder",  # only children: a folder, not a secret
    ],
)
async def test_read_not_found(ro: YAMLFileProvider, text: str) -> None:
    with pytest.raises(SecretNotFound):
        await ro.read(uri(text))


async def test_secret_and_folder_at_once(ro: YAMLFileProvider) -> None:
    assert dict((await ro.read(uri("yaml://dev/payments/api"))).data) == {"token": "tok-1"}
    assert dict((await ro.read(uri("yaml://dev/payments/api/v2"))).data) == {"token": "tok-2"}


async def test_empty_mapping_is_an_empty_secret(ro: YAMLFileProvider) -> None:
    assert dict((await ro.read(uri("yaml://dev/empty"))).data) == {}


async def test_repr_never_shows_values(ro: YAMLFileProvider) -> None:
    got = await ro.read(uri("yaml://dev/payments/db"))
    assert repr(got) == "SecretData(keys=['password', 'port', 'username'], version=None)"
    assert str(got) == repr(got)
    assert SECRET not in repr(got) and SECRET not in str(got)
    assert SECRET not in repr([got]) and SECRET not in f"{got}"


async def test_secret_data_is_read_only(ro: YAMLFileProvider) -> None:
    got = await ro.read(uri("yaml://dev/payments/db"))
    with pytest.raises(TypeError):
        got.data["password"] = "x"  # type: ignore[index]


async def test_read_metadata(ro: YAMLFileProvider) -> None:
    meta = await ro.read_metadata(uri("yaml://dev/payments/db"))
    assert meta.current_version is None
    assert dict(meta.versions) == {}
    assert meta.owner == "team-payments"
    assert meta.created_by == "alice"
    assert meta.created_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert meta.custom_metadata["ticket"] == "SEC-1"


async def test_read_metadata_without_metadata(ro: YAMLFileProvider) -> None:
    meta = await ro.read_metadata(uri("yaml://other/app"))
    assert meta.current_version is None
    assert meta.owner is None and meta.created_by is None and meta.created_at is None
    with pytest.raises(SecretNotFound):
        await ro.read_metadata(uri("yaml://other/none"))


async def test_yaml_timestamps_become_text(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "m:\n  s:\n    when: 2025-01-02\n    flag: true\n    _metadata:\n"
        "      created_at: 2025-01-02T03:04:05Z\n"
    )
    p = YAMLFileProvider(path)
    got = await p.read(uri("yaml://m/s"))
    assert dict(got.data) == {"when": "2025-01-02", "flag": "true"}
    meta = await p.read_metadata(uri("yaml://m/s"))
    assert meta.created_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def test_list_keys(ro: YAMLFileProvider) -> None:
    assert await ro.list_keys(uri("yaml://dev/payments")) == [
        "api",
        "api/",
        "db",
        "folder/",
    ]
    assert await ro.list_keys(uri("yaml://dev/payments/folder")) == ["child"]
    assert await ro.list_keys(uri("yaml://dev/nothing")) == []


# ---------------------------------------------------------------- reload


async def test_reloads_when_the_file_changes(vault_file: Path, ro: YAMLFileProvider) -> None:
    assert (await ro.read(uri("yaml://other/app#k"))).data["k"] == "v"
    loads = ro.loads
    await ro.read(uri("yaml://other/app#k"))
    assert ro.loads == loads, "an unchanged file is not read again"

    write_doc(vault_file, {"other": {"app": {"k": "changed"}}})
    bump_mtime(vault_file)
    assert (await ro.read(uri("yaml://other/app#k"))).data["k"] == "changed"
    assert ro.loads == loads + 1
    with pytest.raises(SecretNotFound):
        await ro.read(uri("yaml://dev/payments/db"))


async def test_reloads_on_same_size_same_mtime_replacement(
    vault_file: Path, ro: YAMLFileProvider
) -> None:
    """An atomic replacement (new inode) is noticed even with the same size and mtime."""
    write_doc(vault_file, {"m": {"s": {"k": "aaaa"}}})
    assert (await ro.read(uri("yaml://m/s#k"))).data["k"] == "aaaa"
    st = vault_file.stat()
    replacement = vault_file.with_name("new.yaml")
    write_doc(replacement, {"m": {"s": {"k": "bbbb"}}})
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, vault_file)
    assert (await ro.read(uri("yaml://m/s#k"))).data["k"] == "bbbb"


async def test_missing_file_is_unavailable(tmp_path: Path) -> None:
    p = YAMLFileProvider(tmp_path / "absent.yaml")
    with pytest.raises(ProviderUnavailable, match="does not exist") as unavailable:
        await p.read(uri("yaml://m/s"))
    assert str(tmp_path) not in str(unavailable.value)  # the operator's path stays in its log


async def test_broken_file_is_unavailable_and_recovers(
    vault_file: Path, ro: YAMLFileProvider
) -> None:
    vault_file.write_text(f"m:\n  s:\n    k: {SECRET}\n    bad: [unclosed\n")
    bump_mtime(vault_file)
    with pytest.raises(ProviderUnavailable, match="not valid YAML") as err:
        await ro.read(uri("yaml://m/s"))
    assert_clean(err.value)
    write_doc(vault_file, {"m": {"s": {"k": "ok"}}})
    bump_mtime(vault_file, 10)
    assert (await ro.read(uri("yaml://m/s#k"))).data["k"] == "ok"


async def test_top_level_must_be_a_mapping(vault_file: Path, ro: YAMLFileProvider) -> None:
    vault_file.write_text("- a\n- b\n")
    bump_mtime(vault_file)
    with pytest.raises(ProviderUnavailable, match="mapping of mounts"):
        await ro.read(uri("yaml://m/s"))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("operation", "kwargs"),
    [
        ("write", {"data": {"k": "v"}, "actor": ACTOR}),
        ("rotate", {"data": {"k": "v"}, "actor": ACTOR}),
        ("delete", {}),
        ("update_owner", {"owner": "me", "actor": ACTOR}),
    ],
)
async def test_changes_refused_outside_dev_mode(
    vault_file: Path, ro: YAMLFileProvider, operation: str, kwargs: dict[str, Any]
) -> None:
    before = vault_file.read_bytes()
    with pytest.raises(UnsupportedOperation, match="writes are only allowed in dev mode"):
        await getattr(ro, operation)(uri("yaml://dev/payments/db"), **kwargs)
    assert vault_file.read_bytes() == before


@pytest.mark.parametrize("provider", ["ro", "dev"])
async def test_versions_unsupported(request: pytest.FixtureRequest, provider: str) -> None:
    p: YAMLFileProvider = request.getfixturevalue(provider)
    target = uri("yaml://dev/payments/db")
    with pytest.raises(UnsupportedOperation, match="does not support versions"):
        await p.read(target, version=1)
    with pytest.raises(UnsupportedOperation, match="does not support versions"):
        await p.undelete(target, [1])
    with pytest.raises(UnsupportedOperation, match="does not support versions"):
        await p.destroy_versions(target, [1])
    with pytest.raises(UnsupportedOperation, match="does not support versions"):
        await p.delete(target, [1])


# ---------------------------------------------------------------- dev mode writes


async def test_dev_write_creates_and_stamps(vault_file: Path, dev: YAMLFileProvider) -> None:
    target = uri("yaml://dev/new/app/creds")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert await dev.write(target, {"user": "u", "pass": "p"}, actor=ACTOR) is None
    got = await dev.read(target)
    assert dict(got.data) == {"user": "u", "pass": "p"}
    meta = await dev.read_metadata(target)
    assert meta.created_by == ACTOR
    assert meta.created_at is not None and meta.created_at >= before
    on_disk = yaml.safe_load(vault_file.read_text())
    assert on_disk["dev"]["new"]["app"]["creds"]["pass"] == "p"
    assert on_disk["dev"]["payments"]["db"]["password"] == SECRET, "the rest is kept"
    # A fresh provider (another process) sees the same.
    assert dict((await YAMLFileProvider(vault_file).read(target)).data) == dict(got.data)


async def test_dev_write_replaces_data_keeps_stamp(dev: YAMLFileProvider) -> None:
    target = uri("yaml://dev/payments/db")
    await dev.write(target, {"password": "new"}, actor="bob")
    got = await dev.read(target)
    assert dict(got.data) == {"password": "new"}
    meta = await dev.read_metadata(target)
    assert meta.created_by == "alice", "created_by is stamped on the first write only"
    assert meta.owner == "team-payments"
    # Children of a secret that is also a folder survive a write of the secret.
    await dev.write(uri("yaml://dev/payments/api"), {"token": "tok-9"}, actor="bob")
    assert dict((await dev.read(uri("yaml://dev/payments/api/v2"))).data) == {"token": "tok-2"}


async def test_dev_write_fragment_changes_one_key(dev: YAMLFileProvider) -> None:
    await dev.write(uri("yaml://dev/payments/db#password"), {"password": "rotated"}, actor="b")
    got = await dev.read(uri("yaml://dev/payments/db"))
    assert dict(got.data) == {"username": "payments", "password": "rotated", "port": "5432"}
    with pytest.raises(UnsupportedOperation, match="exactly that key"):
        await dev.write(uri("yaml://dev/payments/db#password"), {"other": "x"}, actor="b")


async def test_dev_write_refuses_bad_input(dev: YAMLFileProvider) -> None:
    with pytest.raises(TypeError, match="'k' is a int") as err:
        await dev.write(uri("yaml://dev/x"), {"k": 12345}, actor="b")  # type: ignore[dict-item]
    assert "12345" not in str(err.value)
    with pytest.raises(UnsupportedOperation, match="reserved"):
        await dev.write(uri("yaml://dev/x"), {"_metadata": "x"}, actor="b")
    with pytest.raises(UnsupportedOperation, match="holding a value"):
        await dev.write(uri("yaml://dev/payments/db/password/deeper"), {"k": "v"}, actor="b")


async def test_dev_write_is_atomic_and_keeps_mode(vault_file: Path, dev: YAMLFileProvider) -> None:
    vault_file.chmod(0o640)
    inode = vault_file.stat().st_ino
    await dev.write(uri("yaml://dev/a"), {"k": "v"}, actor="b")
    st = vault_file.stat()
    assert st.st_ino != inode, "replaced by rename, not rewritten in place"
    assert st.st_mode & 0o777 == 0o640
    assert [p.name for p in vault_file.parent.iterdir()] == [vault_file.name], "no temp file left"


async def test_dev_write_creates_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.yaml"
    p = YAMLFileProvider(path, dev_mode=True)
    await p.write(uri("yaml://m/s"), {"k": "v"}, actor="b")
    assert yaml.safe_load(path.read_text())["m"]["s"]["k"] == "v"
    assert path.stat().st_mode & 0o777 == 0o600


async def test_dev_rotate_requires_existing(dev: YAMLFileProvider) -> None:
    with pytest.raises(SecretNotFound):
        await dev.rotate(uri("yaml://dev/payments/absent"), {"k": "v"}, actor="b")
    await dev.rotate(uri("yaml://other/app"), {"k": "v2"}, actor="b")
    assert dict((await dev.read(uri("yaml://other/app"))).data) == {"k": "v2"}
    assert (await dev.read_metadata(uri("yaml://other/app"))).created_by is None


async def test_dev_delete(vault_file: Path, dev: YAMLFileProvider) -> None:
    await dev.delete(uri("yaml://dev/payments/folder/child"))
    with pytest.raises(SecretNotFound):
        await dev.read(uri("yaml://dev/payments/folder/child"))
    on_disk = yaml.safe_load(vault_file.read_text())
    assert "folder" not in on_disk["dev"]["payments"], "empty parents are pruned"
    # A secret that is also a folder keeps its children.
    await dev.delete(uri("yaml://dev/payments/api"))
    with pytest.raises(SecretNotFound):
        await dev.read(uri("yaml://dev/payments/api"))
    assert dict((await dev.read(uri("yaml://dev/payments/api/v2"))).data) == {"token": "tok-2"}
    with pytest.raises(SecretNotFound):
        await dev.delete(uri("yaml://dev/payments/absent"))
    # The mount itself stays, even when empty.
    await dev.delete(uri("yaml://other/app"))
    assert yaml.safe_load(vault_file.read_text())["other"] == {}


async def test_dev_update_owner(dev: YAMLFileProvider) -> None:
    target = uri("yaml://other/app")
    await dev.update_owner(target, "team-x", actor=ACTOR)
    meta = await dev.read_metadata(target)
    assert meta.owner == "team-x"
    assert meta.custom_metadata["owner_updated_by"] == ACTOR
    assert dict((await dev.read(target)).data) == {"k": "v"}
    with pytest.raises(SecretNotFound):
        await dev.update_owner(uri("yaml://other/absent"), "team-x", actor=ACTOR)


async def test_concurrent_dev_writes_lose_nothing(dev: YAMLFileProvider) -> None:
    await asyncio.gather(
        *(dev.write(uri(f"yaml://dev/many/s{i}"), {"k": str(i)}, actor="b") for i in range(20))
    )
    assert await dev.list_keys(uri("yaml://dev/many")) == sorted(f"s{i}" for i in range(20))


# ---------------------------------------------------------------- registry


async def test_registry_from_settings(vault_file: Path) -> None:
    registry = ProviderRegistry.from_settings(Settings(yaml_vault_path=vault_file))
    assert list(registry) == ["yaml"]
    p = registry.provider_for(uri("yaml://dev/payments/db"))
    assert isinstance(p, YAMLFileProvider) and not p.dev_mode
    with pytest.raises(UnsupportedOperation, match="'vault' is not configured"):
        registry.provider_for(uri("vault+kv2://secret/a"))
    await registry.close()


async def test_build_providers_dev_mode(vault_file: Path) -> None:
    providers = build_providers(Settings(yaml_vault_path=vault_file, dev_mode=True))
    assert set(providers) == {"yaml"}
    p = providers["yaml"]
    assert isinstance(p, YAMLFileProvider) and p.dev_mode
    assert build_providers(Settings()) == {}


def test_purpose_operations_cover_every_purpose() -> None:
    assert set(PURPOSE_OPERATIONS) == set(Purpose)
    for operation in PURPOSE_OPERATIONS.values():
        assert callable(getattr(YAMLFileProvider, operation))


def test_secret_data_equality_and_hash() -> None:
    a = SecretData(data={"k": SECRET}, version=2)
    b = SecretData(data={"k": SECRET}, version=2)
    assert a == b and hash(a) == hash(b)
    assert a != SecretData(data={"k": "other"}, version=2)
    assert repr(a) == "SecretData(keys=['k'], version=2)"


# ---------------------------------------------------------------- redaction


def assert_clean(exc: BaseException) -> None:
    """No trace of the secret in the exception, its args, or anything it chains to."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (str(current), repr(current), repr(current.args)):
            assert SECRET not in text, f"{type(current).__name__} leaks the value: {text}"
        if isinstance(current, SecretGrantsError):
            assert SECRET not in current.message
        current = current.__cause__ or current.__context__


async def test_no_error_path_leaks_the_value(
    vault_file: Path, dev: YAMLFileProvider, ro: YAMLFileProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = uri("yaml://dev/payments/db")
    calls = [
        ro.read(uri("yaml://dev/payments/db#nope")),
        ro.read(uri("yaml://dev/payments/db/password")),
        ro.read(target, version=3),
        ro.write(target, {"password": SECRET}, actor="b"),
        ro.rotate(target, {"password": SECRET}, actor="b"),
        dev.rotate(uri("yaml://dev/none"), {"password": SECRET}, actor="b"),
        dev.write(uri("yaml://dev/payments/db#password"), {"x": SECRET}, actor="b"),
        dev.write(uri("yaml://dev/payments/db/password/x"), {"k": SECRET}, actor="b"),
        dev.undelete(target, [1]),
        dev.destroy_versions(target, [1]),
    ]
    for call in calls:
        with pytest.raises((SecretGrantsError, TypeError)) as err:
            await call
        assert_clean(err.value)
    # A broken file whose error would quote the line with the value.
    vault_file.write_text(f"dev:\n  s:\n    k: {SECRET}\n    j: {SECRET}: x: [\n")
    bump_mtime(vault_file)
    with pytest.raises(ProviderUnavailable) as err:
        await ro.read(uri("yaml://dev/s"))
    assert_clean(err.value)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)
