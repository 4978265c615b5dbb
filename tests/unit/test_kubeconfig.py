"""kubeconfig and in-cluster settings -> the operator's connection, without a server.

What goes in: kubeconfig files and ServiceAccount folders written to tmp_path.
What is asserted: the fields kopf and KubeClient get (server, CA, client
certificate, token, namespace), kubectl's merge and path rules, and which
users need the ``kubernetes`` package (credential plugins).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretgrants.kubeconfig import (
    ConfigError,
    Connection,
    PluginRequired,
    client_library_needed,
    load,
)

NO_POD = Path("/nonexistent/serviceaccount")


def write(path: Path, *, current: str | None = "ctx", **sections: Any) -> Path:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    if current:
        doc["current-context"] = current
    for section, entries in sections.items():
        key = section[:-1]  # clusters -> cluster
        doc[section] = [{"name": name, key: value} for name, value in entries.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def simple(path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    return write(
        path,
        contexts={"ctx": {"cluster": "c", "user": "u", "namespace": "team"}},
        clusters={"c": cluster or {"server": "https://api.example:6443"}},
        users={"u": user},
    )


def env_for(*paths: Path) -> dict[str, str]:
    return {"KUBECONFIG": os.pathsep.join(map(str, paths))}


def test_client_certificate_with_relative_paths_read_from_the_files_folder(
    tmp_path: Path,
) -> None:
    config = simple(
        tmp_path / "conf" / "kubeconfig",
        {"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"},
        {"server": "https://api.example:6443", "certificate-authority": "pki/ca.crt"},
    )
    conn = load(env_for(config), NO_POD)
    assert conn == Connection(
        server="https://api.example:6443",
        ca_path=str(tmp_path / "conf" / "pki" / "ca.crt"),
        certificate_path=str(tmp_path / "conf" / "pki" / "admin.crt"),
        private_key_path="/abs/admin.key",
        namespace="team",
    )


def test_inline_data_wins_over_paths(tmp_path: Path) -> None:
    config = simple(
        tmp_path / "kubeconfig",
        {
            "client-certificate": "a.crt",
            "client-certificate-data": "Q0VSVA==",
            "client-key": "a.key",
            "client-key-data": "S0VZ",
        },
        {
            "server": "https://x",
            "certificate-authority": "ca.crt",
            "certificate-authority-data": "Q0E=",
            "insecure-skip-tls-verify": True,
            "proxy-url": "http://proxy:3128",
        },
    )
    conn = load(env_for(config), NO_POD)
    assert (conn.ca_path, conn.ca_data) == (None, "Q0E=")
    assert (conn.certificate_path, conn.certificate_data) == (None, "Q0VSVA==")
    assert (conn.private_key_path, conn.private_key_data) == (None, "S0VZ")
    assert conn.insecure is True
    assert conn.proxy_url == "http://proxy:3128"


def test_token_file_is_read_and_kept_for_rereading(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")
    config = simple(tmp_path / "kubeconfig", {"tokenFile": "token"})
    conn = load(env_for(config), NO_POD)
    assert conn.token == "tok-1"
    assert conn.token_file == str(tmp_path / "token")


def test_a_token_wins_over_a_token_file(tmp_path: Path) -> None:
    config = simple(tmp_path / "kubeconfig", {"token": "inline", "tokenFile": "missing"})
    conn = load(env_for(config), NO_POD)
    assert (conn.token, conn.token_file) == ("inline", None)


def test_basic_auth(tmp_path: Path) -> None:
    config = simple(tmp_path / "kubeconfig", {"username": "admin", "password": "pw"})
    conn = load(env_for(config), NO_POD)
    assert (conn.username, conn.password) == ("admin", "pw")


def test_credentials_stay_out_of_the_repr(tmp_path: Path) -> None:
    config = simple(
        tmp_path / "kubeconfig",
        {"token": "tok-SECRET", "password": "pw-SECRET", "client-key-data": "key-SECRET"},
    )
    assert "SECRET" not in repr(load(env_for(config), NO_POD))


def test_files_merge_as_kubectl_merges_them(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a",
        current="second",
        clusters={"c": {"server": "https://first"}},
        users={"u": {"token": "first"}},
    )
    second = write(
        tmp_path / "b",
        current="ignored",
        contexts={"second": {"cluster": "c", "user": "u"}},
        clusters={"c": {"server": "https://second"}},
        users={"u": {"token": "second"}},
    )
    conn = load(env_for(tmp_path / "missing", first, second), NO_POD)
    assert (conn.server, conn.token) == ("https://first", "first")


def test_a_context_without_a_user_is_anonymous(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kubeconfig",
        contexts={"ctx": {"cluster": "c"}},
        clusters={"c": {"server": "https://x"}},
    )
    conn = load(env_for(config), NO_POD)
    assert (conn.token, conn.certificate_path, conn.username) == (None, None, None)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (None, "no kubeconfig"),
        ({"current": None}, "no current-context"),
        ({"current": "other"}, "no context 'other'"),
        ({"clusters": {}}, "no cluster 'c'"),
        ({"clusters": {"c": {}}}, "has no server"),
    ],
)
def test_unusable_kubeconfigs_say_why(
    tmp_path: Path, doc: dict[str, Any] | None, says: str
) -> None:
    path = tmp_path / "kubeconfig"
    if doc is not None:
        write(
            path,
            current=doc.get("current", "ctx"),
            contexts={"ctx": {"cluster": "c", "user": "u"}},
            clusters=doc.get("clusters", {"c": {"server": "https://x"}}),
            users={"u": {"token": "t"}},
        )
    with pytest.raises(ConfigError, match=says):
        load(env_for(path), NO_POD)
    assert client_library_needed(env_for(path), NO_POD) is None  # the login says what is wrong


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("{not: [yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(env_for(path), NO_POD)


def test_home_kubeconfig_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    simple(tmp_path / ".kube" / "config", {"token": "home"})
    assert load({}, NO_POD).token == "home"


@pytest.mark.parametrize(
    ("user", "plugin"),
    [
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}, "exec"),
        ({"auth-provider": {"name": "oidc", "config": {"access-token": "x"}}}, "auth-provider"),
    ],
)
def test_credential_plugins_need_the_client_library(
    tmp_path: Path, user: dict[str, Any], plugin: str
) -> None:
    config = simple(tmp_path / "kubeconfig", user)
    with pytest.raises(PluginRequired) as err:
        load(env_for(config), NO_POD)
    assert err.value.plugin == plugin
    assert client_library_needed(env_for(config), NO_POD) == plugin


def test_plain_users_do_not_need_the_client_library(tmp_path: Path) -> None:
    config = simple(tmp_path / "kubeconfig", {"token": "t"})
    assert client_library_needed(env_for(config), NO_POD) is None


def service_account_dir(tmp_path: Path, *, ca: bool = True) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "namespace").write_text("secretgrants-system")
    if ca:
        (directory / "ca.crt").write_text("PEM")
    return directory


def test_in_a_pod_the_service_account_wins_over_any_kubeconfig(tmp_path: Path) -> None:
    directory = service_account_dir(tmp_path)
    exec_user = simple(tmp_path / "kubeconfig", {"exec": {"command": "x"}})
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        **env_for(exec_user),
    }
    conn = load(env, directory)
    assert conn == Connection(
        server="https://10.0.0.1:443",
        ca_path=str(directory / "ca.crt"),
        token="sa-token",
        token_file=str(directory / "token"),
        namespace="secretgrants-system",
    )
    assert client_library_needed(env, directory) is None


def test_in_a_pod_ipv6(tmp_path: Path) -> None:
    directory = service_account_dir(tmp_path, ca=False)
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    conn = load(env, directory)
    assert (conn.server, conn.ca_path) == ("https://[fd00::1]:443", None)


def test_a_token_file_without_the_variables_is_not_a_pod(tmp_path: Path) -> None:
    directory = service_account_dir(tmp_path)
    config = simple(tmp_path / "kubeconfig", {"token": "kubeconfig"})
    assert load(env_for(config), directory).token == "kubeconfig"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    config = simple(tmp_path / "kubeconfig", {"tokenFile": "absent"})
    with pytest.raises(ConfigError, match=r"cannot read .*absent"):
        load(env_for(config), NO_POD)


def test_tls_server_name_is_not_silently_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = simple(
        tmp_path / "kubeconfig",
        {"token": "t"},
        {"server": "https://10.0.0.1:6443", "tls-server-name": "api.internal"},
    )
    with caplog.at_level("WARNING", logger="secretgrants"):
        conn = load(env_for(config), NO_POD)
    assert conn.server == "https://10.0.0.1:6443"
    (record,) = [r for r in caplog.records if "tls-server-name" in r.getMessage()]
    assert "https://10.0.0.1:6443" in record.getMessage()
