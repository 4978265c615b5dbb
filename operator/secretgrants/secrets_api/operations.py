"""What each endpoint of the Secrets API does: its PDP purpose and its OAuth scope.

One table (:data:`OPERATIONS`) answers, for every operation the API serves,
which purpose the PEP asks the PDP about (the seed's mapping: write ->
``write``, delete -> ``delete`` or ``destroy_versions`` with
``destroy=true``, metadata/keys/detail/versions -> ``read_metadata``, ...)
and which scope an access token must carry when SECRETS_ENFORCE_SCOPES is
on. Bulk requests map each of their operations through the same table.
Pure: no I/O.

Scopes that the seeds leave open are decided here: ``undelete`` needs
``secrets.delete`` (whoever may delete a version may take the delete back),
and a delete with ``destroy=true`` needs ``secrets.destroy``, like
destroy-versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from secretgrants.reasons import Purpose

__all__ = [
    "OPERATIONS",
    "SCOPES",
    "Operation",
    "OperationSpec",
    "Scope",
    "missing_scopes",
    "operation_for",
    "parse_scopes",
]


class Scope(StrEnum):
    """The OAuth scopes of the seeds, one per kind of access."""

    READ = "secrets.read"
    WRITE = "secrets.write"
    DELETE = "secrets.delete"
    DESTROY = "secrets.destroy"
    ROTATE = "secrets.rotate"
    READ_METADATA = "secrets.read_metadata"
    SET_OWNER = "secrets.set_owner"


SCOPES: Final = tuple(s.value for s in Scope)


class Operation(StrEnum):
    """Everything the API can be asked to do (also the ``op`` of a bulk item)."""

    READ = "read"  # a grant's values (GET .../grants/{name})
    WRITE = "write"
    ROTATE = "rotate"
    DELETE = "delete"
    DESTROY = "destroy"  # DELETE with destroy=true
    UNDELETE = "undelete"
    DESTROY_VERSIONS = "destroy_versions"
    METADATA = "metadata"
    METADATA_DETAIL = "metadata_detail"
    KEYS = "keys"
    VERSIONS = "versions"
    SET_OWNER = "set_owner"


@dataclass(frozen=True)
class OperationSpec:
    """The purpose the PDP is asked about and the scope a token needs."""

    purpose: Purpose
    scope: Scope
    changes: bool  # writes to the provider (never retried by clients on their own)


OPERATIONS: Final[Mapping[Operation, OperationSpec]] = MappingProxyType(
    {
        Operation.READ: OperationSpec(Purpose.READ, Scope.READ, changes=False),
        Operation.WRITE: OperationSpec(Purpose.WRITE, Scope.WRITE, changes=True),
        Operation.ROTATE: OperationSpec(Purpose.ROTATE, Scope.ROTATE, changes=True),
        Operation.DELETE: OperationSpec(Purpose.DELETE, Scope.DELETE, changes=True),
        Operation.DESTROY: OperationSpec(Purpose.DESTROY_VERSIONS, Scope.DESTROY, changes=True),
        Operation.UNDELETE: OperationSpec(Purpose.UNDELETE, Scope.DELETE, changes=True),
        Operation.DESTROY_VERSIONS: OperationSpec(
            Purpose.DESTROY_VERSIONS, Scope.DESTROY, changes=True
        ),
        Operation.METADATA: OperationSpec(
            Purpose.READ_METADATA, Scope.READ_METADATA, changes=False
        ),
        Operation.METADATA_DETAIL: OperationSpec(
            Purpose.READ_METADATA, Scope.READ_METADATA, changes=False
        ),
        Operation.KEYS: OperationSpec(Purpose.READ_METADATA, Scope.READ_METADATA, changes=False),
        Operation.VERSIONS: OperationSpec(
            Purpose.READ_METADATA, Scope.READ_METADATA, changes=False
        ),
        Operation.SET_OWNER: OperationSpec(Purpose.OWNER_UPDATE, Scope.SET_OWNER, changes=True),
    }
)


def operation_for(op: Operation, *, destroy: bool = False) -> Operation:
    """``delete`` with ``destroy=true`` is a destroy; every other operation is itself."""
    return Operation.DESTROY if op is Operation.DELETE and destroy else op


def parse_scopes(claims: Mapping[str, object]) -> frozenset[str]:
    """The scopes of an access token: ``scope`` (space separated) or ``scp`` (list or string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        raw = claims.get(name)
        if isinstance(raw, str):
            found.update(raw.split())
        elif isinstance(raw, list):
            found.update(s for s in raw if isinstance(s, str))
    return frozenset(found)


def missing_scopes(granted: Iterable[str], operations: Iterable[Operation]) -> list[str]:
    """The scopes ``operations`` need that ``granted`` lacks, sorted (empty: allowed)."""
    have = set(granted)
    return sorted({OPERATIONS[op].scope.value for op in operations} - have)
