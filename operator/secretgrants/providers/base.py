"""The one interface every secret provider has, and the value types it returns.

The operator reads and writes secrets in more than one store (KV v2 on Vault
or OpenBao, a YAML file for development). The handlers should not care which:
they hold a :class:`~secretgrants.uri.SecretURI`, a purpose and an actor, and
call the :class:`Provider` method that the purpose maps to
(:data:`PURPOSE_OPERATIONS`). The shape follows External Secrets'
``SecretsClient``: read (latest or one version), metadata, write, delete and
the version operations, async at the surface.

Two rules hold for every implementation:

* Failures are :class:`~secretgrants.errors.ProviderError` subclasses with a
  message the provider built itself. No message, ``repr``, ``args`` or
  ``__cause__``/``__context__`` chain carries a secret value or a token, so
  errors can go into conditions, events and logs as they are.
* :class:`SecretData` never shows values in ``repr``/``str``: only key names
  and the version. Values are reached through ``.data`` on purpose.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, runtime_checkable

from secretgrants.reasons import Purpose
from secretgrants.uri import SecretURI

__all__ = [
    "CREATED_AT_KEY",
    "CREATED_BY_KEY",
    "OWNER_KEY",
    "PURPOSE_OPERATIONS",
    "Provider",
    "SecretData",
    "SecretMetadata",
    "VersionInfo",
    "format_timestamp",
    "parse_timestamp",
    "to_text",
]

OWNER_KEY: Final = "owner"
"""Custom metadata key holding the secret's owner (set by ``update_owner``)."""
CREATED_BY_KEY: Final = "created_by"
"""Custom metadata key holding the actor of the first write."""
CREATED_AT_KEY: Final = "created_at"
"""Custom metadata key holding when the first write happened (RFC 3339, UTC)."""

PURPOSE_OPERATIONS: Final[Mapping[Purpose, str]] = MappingProxyType(
    {
        Purpose.READ: "read",
        Purpose.READ_METADATA: "read_metadata",
        Purpose.WRITE: "write",
        Purpose.DELETE: "delete",
        Purpose.UNDELETE: "undelete",
        Purpose.DESTROY_VERSIONS: "destroy_versions",
        Purpose.ROTATE: "rotate",
        Purpose.OWNER_UPDATE: "update_owner",
    }
)
"""Each purpose and the name of the :class:`Provider` method that carries it out."""


def to_text(value: object) -> str:
    """A stored value as the string the operator delivers.

    Strings are kept; anything else a store may hold (numbers, booleans, null,
    lists, objects) is written as compact JSON, the way External Secrets does;
    dates and times (which YAML parses by itself) as ISO 8601.
    Never raises with the value in the message.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return format_timestamp(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def format_timestamp(when: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as custom metadata stores it."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_timestamp(raw: object) -> dt.datetime | None:
    """An aware datetime from an RFC 3339 string (Vault's nanosecond form too), or None."""
    if isinstance(raw, dt.datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=dt.UTC)
    if not isinstance(raw, str) or not raw:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Vault writes nanoseconds; Python takes at most microseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = ""
        for ch in rest:
            if not ch.isdigit():
                break
            digits += ch
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if parsed.year <= 1:  # Go's zero time: "not set"
        return None
    return parsed


@dataclass(frozen=True)
class VersionInfo:
    """One version of a secret: when it was made, soft-deleted or destroyed."""

    version: int
    created_time: dt.datetime | None = None
    deletion_time: dt.datetime | None = None
    destroyed: bool = False

    @property
    def deleted(self) -> bool:
        """Soft-deleted (and so recoverable with ``undelete``) but not destroyed."""
        return self.deletion_time is not None and not self.destroyed

    @property
    def readable(self) -> bool:
        return self.deletion_time is None and not self.destroyed


@dataclass(frozen=True, repr=False)
class SecretData:
    """What a read delivers: the values, the version read and its metadata.

    ``data`` is read-only. ``repr`` and ``str`` show key names and the version,
    never values: ``SecretData(keys=['password'], version=3)``.
    """

    data: Mapping[str, str]
    version: int | None = None
    metadata: VersionInfo | None = None
    custom_metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))
        object.__setattr__(self, "custom_metadata", MappingProxyType(dict(self.custom_metadata)))

    @property
    def keys(self) -> list[str]:
        """The key names, sorted."""
        return sorted(self.data)

    def __repr__(self) -> str:
        return f"SecretData(keys={self.keys!r}, version={self.version!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretData):
            return NotImplemented
        return (
            dict(self.data) == dict(other.data)
            and self.version == other.version
            and self.metadata == other.metadata
            and dict(self.custom_metadata) == dict(other.custom_metadata)
        )

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.data)), self.version))


@dataclass(frozen=True)
class SecretMetadata:
    """What ``read_metadata`` returns: versions and ownership, never values.

    ``current_version`` is None for providers without versions (YAML).
    ``owner``, ``created_by`` and ``created_at`` are read from the custom
    metadata keys :data:`OWNER_KEY`, :data:`CREATED_BY_KEY` and
    :data:`CREATED_AT_KEY`; ``custom_metadata`` holds all of it as stored.
    """

    current_version: int | None
    versions: Mapping[int, VersionInfo] = field(default_factory=dict)
    oldest_version: int | None = None
    created_time: dt.datetime | None = None
    updated_time: dt.datetime | None = None
    owner: str | None = None
    created_by: str | None = None
    created_at: dt.datetime | None = None
    custom_metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))
        object.__setattr__(self, "custom_metadata", MappingProxyType(dict(self.custom_metadata)))

    @classmethod
    def ownership(cls, custom: Mapping[str, str]) -> dict[str, object]:
        """The owner fields that ``custom`` holds, as keyword arguments."""
        return {
            "owner": custom.get(OWNER_KEY) or None,
            "created_by": custom.get(CREATED_BY_KEY) or None,
            "created_at": parse_timestamp(custom.get(CREATED_AT_KEY)),
        }


@runtime_checkable
class Provider(Protocol):
    """A secret store the operator can use. Every method may raise a ``ProviderError``.

    ``uri.fragment``, when set, selects one key: ``read`` returns only it
    (``KeyNotFound`` when absent) and ``write`` changes only it, keeping the
    other keys. ``actor`` names who acts (``system:serviceaccount:ns:name``).
    """

    @property
    def name(self) -> str:
        """The provider part of the URIs it serves: ``vault``, ``openbao`` or ``yaml``."""
        ...

    async def read(self, uri: SecretURI, version: int | None = None) -> SecretData:
        """The latest version, or ``version``.

        Raises ``SecretNotFound``, ``KeyNotFound``, ``VersionDeleted`` or
        ``VersionDestroyed``; never returns empty data for a deleted version.
        """
        ...

    async def read_metadata(self, uri: SecretURI) -> SecretMetadata:
        """Versions and ownership; ``SecretNotFound`` when the secret does not exist."""
        ...

    async def write(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> int | None:
        """Store ``data`` as a new version and return its number (None if unversioned).

        The first write of a secret stamps ``created_by``/``created_at`` into its
        custom metadata, best-effort (a failure to stamp is logged, not raised).
        """
        ...

    async def rotate(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> int | None:
        """Like ``write``, but the secret must exist already (``SecretNotFound`` if not)."""
        ...

    async def delete(self, uri: SecretURI, versions: Sequence[int] | None = None) -> None:
        """Soft-delete ``versions``, or the latest version when None."""
        ...

    async def undelete(self, uri: SecretURI, versions: Sequence[int]) -> None:
        """Restore soft-deleted ``versions``."""
        ...

    async def destroy_versions(self, uri: SecretURI, versions: Sequence[int]) -> None:
        """Remove the data of ``versions`` for good."""
        ...

    async def list_keys(self, uri: SecretURI) -> list[str]:
        """Names under ``uri``'s path, sorted; folders end with ``/`` (Vault's LIST)."""
        ...

    async def update_owner(self, uri: SecretURI, owner: str, *, actor: str) -> None:
        """Set the ``owner`` custom metadata of an existing secret."""
        ...

    async def close(self) -> None:
        """Release connections and threads. The provider is not used afterwards."""
        ...
