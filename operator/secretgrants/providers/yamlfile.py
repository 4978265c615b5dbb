"""A YAML file as a secret store: the development provider for ``yaml://`` URIs.

``secretgrants dev`` and the examples need secrets without a Vault. This
provider reads them from one YAML file (``YAML_VAULT_PATH``) laid out like a
KV store::

    dev:                          # mount: a top-level key
      payments:                   # path segments: nested mappings
        db:                       # yaml://dev/payments/db
          username: payments      # key -> value (strings; other scalars
          password: s3cr3t        #   are delivered as JSON text)
          _metadata:              # optional, reserved: ownership, never data
            owner: team-payments
            created_by: system:serviceaccount:payments:deployer
            created_at: "2025-01-01T00:00:00Z"

A mapping is a *secret* when it holds at least one non-mapping value, a
``_metadata`` entry, or nothing at all; its mapping-valued entries are
children (so, as in KV, ``a/b`` can be a secret and a folder at once).
``_metadata`` is never part of the data, and ``read_metadata`` returns its
string entries as custom metadata (``owner``, ``created_by``, ``created_at``
in particular) with ``current_version`` None.

The file is read again whenever its mtime, size or inode change. It has no
versions: ``read(version=...)``, ``undelete`` and ``destroy_versions`` raise
``UnsupportedOperation``, and ``delete`` takes no versions. Changes (write,
rotate, delete, update_owner) are refused unless the provider was built with
``dev_mode=True``; then they rewrite the file atomically (a temporary file in
the same folder, fsync, rename), keeping its permissions, and stamp
``created_by``/``created_at`` into ``_metadata`` when a write creates a secret.
Comments and formatting of the file are not preserved by a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from secretgrants.errors import (
    KeyNotFound,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
    UnsupportedOperation,
)
from secretgrants.providers.base import (
    CREATED_AT_KEY,
    CREATED_BY_KEY,
    OWNER_KEY,
    SecretData,
    SecretMetadata,
    format_timestamp,
    to_text,
)
from secretgrants.uri import SecretURI

__all__ = ["METADATA_KEY", "YAMLFileProvider"]

log = logging.getLogger("secretgrants.providers.yaml")

METADATA_KEY: Final = "_metadata"
"""The reserved entry of a secret's mapping that holds its ownership metadata."""

_DEV_ONLY: Final = "writes are only allowed in dev mode (SECRETGRANTS_DEV_MODE=true)"
_NO_VERSIONS: Final = "the YAML provider does not support versions"

_Signature = tuple[int, int, int]


def _is_secret(node: Mapping[Any, Any]) -> bool:
    if not node or METADATA_KEY in node:
        return True
    return any(not isinstance(v, Mapping) for v in node.values())


def _has_children(node: Mapping[Any, Any]) -> bool:
    return any(isinstance(v, Mapping) and k != METADATA_KEY for k, v in node.items())


def _data_of(node: Mapping[Any, Any]) -> dict[str, str]:
    return {
        str(k): to_text(v)
        for k, v in node.items()
        if k != METADATA_KEY and not isinstance(v, Mapping)
    }


def _metadata_of(node: Mapping[Any, Any]) -> dict[str, str]:
    raw = node.get(METADATA_KEY)
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): to_text(v) for k, v in raw.items() if not isinstance(v, Mapping | list)}


class YAMLFileProvider:
    """Secrets from a YAML file; read-only unless ``dev_mode``. See the module docstring."""

    name: Final = "yaml"

    def __init__(self, path: Path | str, *, dev_mode: bool = False) -> None:
        self.path = Path(path)
        self.dev_mode = dev_mode
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._doc: dict[Any, Any] = {}
        self.loads = 0
        """How many times the file was (re)loaded (for tests and diagnostics)."""
        self._missing_reported = False  # its absence is logged once, with the path

    def __repr__(self) -> str:
        return f"YAMLFileProvider(path={str(self.path)!r}, dev_mode={self.dev_mode})"

    # -- loading -------------------------------------------------------------------

    def _stat(self) -> _Signature | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            problem = type(exc).__name__
            error = ProviderUnavailable(f"cannot stat the YAML vault file ({problem})")
        else:
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        raise error

    def _parse(self, text: str) -> dict[Any, Any]:
        """The document, or ProviderUnavailable naming only where it is broken."""
        error: ProviderError
        try:
            doc = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            # The exception's text quotes the offending line, which may be a value.
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            error = ProviderUnavailable(f"the YAML vault file is not valid YAML{where}")
        except yaml.YAMLError:
            error = ProviderUnavailable("the YAML vault file is not valid YAML")
        else:
            if doc is None:
                return {}
            if isinstance(doc, dict):
                return doc
            error = ProviderUnavailable(
                "the YAML vault file must be a mapping of mounts at the top level"
            )
        raise error

    def _load_locked(self) -> dict[Any, Any]:
        """The current document, read again if the file changed since the last load."""
        signature = self._stat()
        if signature is None:
            if not self._missing_reported:
                # The path is the operator's configuration, not the tenant's: it goes to
                # the operator's log (once per absence), and the grant's status says only
                # which setting to look at.
                log.warning("the YAML vault file %s does not exist", self.path)
                self._missing_reported = True
            self._signature = None
            self._doc = {}
            raise ProviderUnavailable("the YAML vault file (YAML_VAULT_PATH) does not exist")
        if signature == self._signature:
            return self._doc
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = type(exc).__name__
            error = ProviderUnavailable(f"cannot read the YAML vault file ({problem})")
        else:
            self._doc = self._parse(text)
            self._signature = signature
            self._missing_reported = False
            self.loads += 1
            log.debug("loaded the YAML vault file %s", self.path)
            return self._doc
        raise error

    def _save_locked(self, doc: dict[Any, Any]) -> None:
        """Write ``doc`` atomically: temp file in the same folder, fsync, rename."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                yaml.safe_dump(doc, fh, sort_keys=False, allow_unicode=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._doc = doc
        self._signature = self._stat()
        self.loads += 1

    # -- navigation ------------------------------------------------------------------

    @staticmethod
    def _find(doc: Mapping[Any, Any], uri: SecretURI) -> Mapping[Any, Any] | None:
        """The mapping at ``mount/path``, or None."""
        node: Any = doc.get(uri.mount)
        for segment in uri.segments:
            if not isinstance(node, Mapping):
                return None
            node = node.get(segment)
        return node if isinstance(node, Mapping) else None

    def _secret(self, doc: Mapping[Any, Any], uri: SecretURI, op: str) -> Mapping[Any, Any]:
        node = self._find(doc, uri)
        if node is None or not _is_secret(node):
            raise SecretNotFound(f"{op}: secret not found")
        return node

    def _refuse_unless_dev(self, op: str) -> None:
        if not self.dev_mode:
            raise UnsupportedOperation(f"{op}: the YAML provider is read-only; {_DEV_ONLY}")

    # -- reads -----------------------------------------------------------------------

    async def read(self, uri: SecretURI, version: int | None = None) -> SecretData:
        if version is not None:
            raise UnsupportedOperation(f"read: {_NO_VERSIONS}; read without a version")
        return await asyncio.to_thread(self._read_sync, uri)

    def _read_sync(self, uri: SecretURI) -> SecretData:
        with self._lock:
            node = self._secret(self._load_locked(), uri, "read")
            data = _data_of(node)
            custom = _metadata_of(node)
        if uri.fragment is not None:
            if uri.fragment not in data:
                raise KeyNotFound(f"read: key {uri.fragment!r} is not in the secret")
            data = {uri.fragment: data[uri.fragment]}
        return SecretData(data=data, version=None, metadata=None, custom_metadata=custom)

    async def read_metadata(self, uri: SecretURI) -> SecretMetadata:
        return await asyncio.to_thread(self._read_metadata_sync, uri)

    def _read_metadata_sync(self, uri: SecretURI) -> SecretMetadata:
        with self._lock:
            node = self._secret(self._load_locked(), uri, "read_metadata")
            custom = _metadata_of(node)
        return SecretMetadata(
            current_version=None,
            custom_metadata=custom,
            **SecretMetadata.ownership(custom),  # type: ignore[arg-type]
        )

    async def list_keys(self, uri: SecretURI) -> list[str]:
        return await asyncio.to_thread(self._list_sync, uri)

    def _list_sync(self, uri: SecretURI) -> list[str]:
        with self._lock:
            node = self._find(self._load_locked(), uri)
            if node is None:
                return []
            names: list[str] = []
            for key, child in node.items():
                if key == METADATA_KEY or not isinstance(child, Mapping):
                    continue
                if _is_secret(child):
                    names.append(str(key))
                if _has_children(child):
                    names.append(f"{key}/")
        return sorted(names)

    # -- changes (dev mode) ----------------------------------------------------------

    async def write(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> None:
        self._refuse_unless_dev("write")
        clean = _check_data(uri, data)
        await asyncio.to_thread(self._write_sync, uri, clean, actor, False)

    async def rotate(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> None:
        self._refuse_unless_dev("rotate")
        clean = _check_data(uri, data)
        await asyncio.to_thread(self._write_sync, uri, clean, actor, True)

    def _write_sync(
        self, uri: SecretURI, data: dict[str, str], actor: str, require_existing: bool
    ) -> None:
        op = "rotate" if require_existing else "write"
        with self._lock:
            doc = _copy(self._load_or_empty_locked())
            existing = self._find(doc, uri)
            existed = existing is not None and _is_secret(existing)
            if require_existing and not existed:
                raise SecretNotFound(f"{op}: secret not found")
            node = _make_path(doc, uri, op)
            if uri.fragment is None:
                for key in [
                    k for k, v in node.items() if k != METADATA_KEY and not isinstance(v, Mapping)
                ]:
                    del node[key]
            node.update(data)
            if not existed:
                meta = node.setdefault(METADATA_KEY, {})
                if not isinstance(meta, dict):
                    raise UnsupportedOperation(
                        f"{op}: the secret's {METADATA_KEY} is not a mapping"
                    )
                meta[CREATED_BY_KEY] = actor
                meta[CREATED_AT_KEY] = format_timestamp(dt.datetime.now(dt.UTC))
            self._save_locked(doc)

    def _load_or_empty_locked(self) -> dict[Any, Any]:
        if self._stat() is None:
            return {}
        return self._load_locked()

    async def delete(self, uri: SecretURI, versions: Sequence[int] | None = None) -> None:
        if versions is not None:
            raise UnsupportedOperation(f"delete: {_NO_VERSIONS}; delete without versions")
        self._refuse_unless_dev("delete")
        await asyncio.to_thread(self._delete_sync, uri)

    def _delete_sync(self, uri: SecretURI) -> None:
        with self._lock:
            doc = _copy(self._load_locked())
            node = self._secret(doc, uri, "delete")
            assert isinstance(node, dict)
            for key in [
                k for k, v in node.items() if k == METADATA_KEY or not isinstance(v, Mapping)
            ]:
                del node[key]
            _prune(doc, uri)
            self._save_locked(doc)

    async def undelete(self, uri: SecretURI, versions: Sequence[int]) -> None:
        raise UnsupportedOperation(f"undelete: {_NO_VERSIONS}, so nothing can be undeleted")

    async def destroy_versions(self, uri: SecretURI, versions: Sequence[int]) -> None:
        raise UnsupportedOperation(f"destroy_versions: {_NO_VERSIONS}")

    async def update_owner(self, uri: SecretURI, owner: str, *, actor: str) -> None:
        self._refuse_unless_dev("update_owner")
        if not isinstance(owner, str) or not owner:
            raise ValueError("owner must be a non-empty string")
        await asyncio.to_thread(self._update_owner_sync, uri, owner, actor)

    def _update_owner_sync(self, uri: SecretURI, owner: str, actor: str) -> None:
        with self._lock:
            doc = _copy(self._load_locked())
            node = self._secret(doc, uri, "update_owner")
            assert isinstance(node, dict)
            meta = node.setdefault(METADATA_KEY, {})
            if not isinstance(meta, dict):
                raise UnsupportedOperation(
                    f"update_owner: the secret's {METADATA_KEY} is not a mapping"
                )
            meta[OWNER_KEY] = owner
            meta["owner_updated_by"] = actor
            meta["owner_updated_at"] = format_timestamp(dt.datetime.now(dt.UTC))
            self._save_locked(doc)

    async def close(self) -> None:
        return None


def _check_data(uri: SecretURI, data: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise TypeError("secret keys must be non-empty strings")
        if key == METADATA_KEY:
            raise UnsupportedOperation(f"write: {METADATA_KEY!r} is reserved and cannot be a key")
        if not isinstance(value, str):
            raise TypeError(f"the value of key {key!r} is a {type(value).__name__}, not a string")
        out[key] = value
    if uri.fragment is not None and set(out) != {uri.fragment}:
        raise UnsupportedOperation(
            f"a write to '#{uri.fragment}' changes that one key: give exactly that key"
        )
    return out


def _copy(node: Any) -> Any:
    """A deep copy of the mappings (values are immutable scalars or lists)."""
    if isinstance(node, Mapping):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _make_path(doc: dict[Any, Any], uri: SecretURI, op: str) -> dict[Any, Any]:
    """The mapping at ``mount/path``, creating mappings on the way."""
    node = doc
    for depth, segment in enumerate((uri.mount, *uri.segments)):
        child = node.get(segment)
        if child is None:
            child = node[segment] = {}
        elif not isinstance(child, dict):
            what = "mount" if depth == 0 else f"path segment {depth}"
            raise UnsupportedOperation(
                f"{op}: {what} {segment!r} is a key holding a value in the YAML file, not a mapping"
            )
        node = child
    return node


def _prune(doc: dict[Any, Any], uri: SecretURI) -> None:
    """Drop mappings left empty along ``path`` (the mount itself stays)."""
    chain: list[dict[Any, Any]] = [doc[uri.mount]]
    for segment in uri.segments[:-1]:
        chain.append(chain[-1][segment])
    for parent, segment in zip(reversed(chain), reversed(uri.segments), strict=True):
        if parent.get(segment) == {}:
            del parent[segment]
        else:
            break
