"""Where the API is and who the operator is to it, read without the ``kubernetes`` package.

In a pod: ``KUBERNETES_SERVICE_HOST``/``PORT``, the ServiceAccount token and CA.
Elsewhere: the kubeconfig's current context (``KUBECONFIG``, else ``~/.kube/config``),
several files merged as kubectl merges them (the first file to set a value wins),
relative paths read from the folder of the file that names them.

kopf's ``login_with_kubeconfig`` reads the same fields, but resolves no relative
path, reads no ``tokenFile`` and cannot tell whether the user runs a credential
plugin. That last answer decides whether the operator can do without the
``kubernetes`` package (``runner``), so the file is read here, once, and kopf is
handed the result (``kube.login``). This module imports neither kopf nor
``kubernetes``: the runner asks it before either is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ConfigError",
    "Connection",
    "PluginRequired",
    "client_library_needed",
    "load",
    "read_token",
]

log = logging.getLogger("secretgrants")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG: Final = "~/.kube/config"
# Users whose credentials a program computes: only the ``kubernetes`` package runs them.
PLUGINS: Final = ("exec", "auth-provider")


class ConfigError(Exception):
    """Neither in-cluster settings nor a usable kubeconfig context (the message says why)."""


class PluginRequired(ConfigError):
    """The kubeconfig's current user gets its credentials from a plugin (``exec``, ...)."""

    def __init__(self, plugin: str, user: str) -> None:
        super().__init__(f"the kubeconfig user {user!r} runs an {plugin!r} credential plugin")
        self.plugin = plugin


@dataclass(frozen=True, kw_only=True)
class Connection:
    """The fields of ``kopf.ConnectionInfo`` that a kubeconfig or a pod provides."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None  # base64 of PEM, as kubeconfig holds it (or PEM)
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: str | None = None
    private_key_path: str | None = None
    private_key_data: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None  # re-read when it changes: projected tokens rotate
    namespace: str | None = None
    proxy_url: str | None = None


def read_token(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def load(
    env: Mapping[str, str] = os.environ, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> Connection:
    """In a pod, the ServiceAccount; else the kubeconfig's current context.

    Raises :class:`PluginRequired` for a user that runs a credential plugin.
    """
    try:
        if _in_cluster(env, service_account_dir):
            return _service_account(env, service_account_dir)
        return _from_kubeconfig(_kubeconfig_paths(env))
    except OSError as err:  # a file named but unreadable
        raise ConfigError(f"cannot read {err.filename}: {err.strerror}") from None


def client_library_needed(
    env: Mapping[str, str] = os.environ, service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> str | None:
    """The plugin (``exec``, ``auth-provider``) that only the ``kubernetes`` package can run,
    if the connection :func:`load` would make needs one; None otherwise (including when
    there is no usable configuration: the login reports that)."""
    try:
        load(env, service_account_dir)
    except PluginRequired as err:
        return err.plugin
    except ConfigError:
        return None
    return None


def _in_cluster(env: Mapping[str, str], service_account_dir: Path) -> bool:
    # The official client's test: both variables and the token file.
    return (
        bool(env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"))
        and (service_account_dir / "token").is_file()
    )


def _service_account(env: Mapping[str, str], directory: Path) -> Connection:
    host = env["KUBERNETES_SERVICE_HOST"]
    if ":" in host:  # IPv6
        host = f"[{host}]"
    token_file = directory / "token"
    ca_file = directory / "ca.crt"
    ns_file = directory / "namespace"
    return Connection(
        server=f"https://{host}:{env['KUBERNETES_SERVICE_PORT']}",
        ca_path=str(ca_file) if ca_file.is_file() else None,
        token=read_token(token_file),
        token_file=str(token_file),
        namespace=(read_token(ns_file) or None) if ns_file.is_file() else None,
    )


def _kubeconfig_paths(env: Mapping[str, str]) -> list[Path]:
    value = env.get("KUBECONFIG") or ""
    paths = [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    return paths or [Path(DEFAULT_KUBECONFIG).expanduser()]


@dataclass(frozen=True)
class _Named:
    """One cluster or user entry, and the folder its relative paths are read from."""

    fields: Mapping[str, Any]
    folder: Path

    def path(self, key: str) -> str | None:
        value = self.fields.get(key)
        if not value:
            return None
        path = Path(str(value)).expanduser()
        return str(path if path.is_absolute() else self.folder / path)


def _from_kubeconfig(paths: list[Path]) -> Connection:
    current: str | None = None
    sections: dict[str, dict[str, _Named]] = {"contexts": {}, "clusters": {}, "users": {}}
    singular = {"contexts": "context", "clusters": "cluster", "users": "user"}
    found = [p for p in paths if p.is_file()]  # kubectl skips files that do not exist
    if not found:
        raise ConfigError(f"no kubeconfig at {os.pathsep.join(map(str, paths))}")
    for path in found:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path} is not a kubeconfig")
        current = current or doc.get("current-context") or None
        for section, entries in sections.items():
            for item in doc.get(section) or []:
                name = str(item.get("name", ""))
                if name not in entries:
                    entries[name] = _Named(item.get(singular[section]) or {}, path.parent)
    if not current:
        raise ConfigError(f"no current-context in {', '.join(map(str, found))}")
    context = _entry(sections["contexts"], current, "context")
    cluster = _entry(sections["clusters"], str(context.fields.get("cluster", "")), "cluster")
    user_name = str(context.fields.get("user", ""))
    user = sections["users"].get(user_name) or _Named({}, found[0].parent)  # none: anonymous
    for plugin in PLUGINS:
        if user.fields.get(plugin):
            raise PluginRequired(plugin, user_name)
    server = cluster.fields.get("server")
    if not server:
        raise ConfigError(f"the kubeconfig cluster {context.fields.get('cluster')!r} has no server")
    if cluster.fields.get("tls-server-name"):
        # kopf's connection settings have no field for it, so its client could not use it.
        log.warning(
            "the kubeconfig cluster %r sets tls-server-name, which the operator does not "
            "support: the apiserver's certificate must be valid for %s",
            context.fields.get("cluster"),
            server,
        )
    # kubectl: inline data wins over a path, a token over a tokenFile.
    ca_data = cluster.fields.get("certificate-authority-data")
    cert_data = user.fields.get("client-certificate-data")
    key_data = user.fields.get("client-key-data")
    token = user.fields.get("token")
    token_file = None if token else user.path("tokenFile")
    return Connection(
        server=str(server),
        ca_path=None if ca_data else cluster.path("certificate-authority"),
        ca_data=ca_data,
        insecure=bool(cluster.fields.get("insecure-skip-tls-verify")),
        certificate_path=None if cert_data else user.path("client-certificate"),
        certificate_data=cert_data,
        private_key_path=None if key_data else user.path("client-key"),
        private_key_data=key_data,
        username=user.fields.get("username"),
        password=user.fields.get("password"),
        token=token or (read_token(token_file) if token_file else None),
        token_file=token_file,
        namespace=context.fields.get("namespace"),
        proxy_url=cluster.fields.get("proxy-url"),
    )


def _entry(entries: dict[str, _Named], name: str, kind: str) -> _Named:
    try:
        return entries[name]
    except KeyError:
        raise ConfigError(f"the kubeconfig has no {kind} {name!r}") from None
