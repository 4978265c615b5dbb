"""Bodies of the management endpoints: what callers send and what they get back.

The same pydantic models validate requests, shape responses and give the
OpenAPI document its schemas, so the document cannot drift from the code.
Responses never hold a secret value (only a grant read does, and it is
not here); requests that carry values (write, rotate) are never logged.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from secretgrants.providers.base import SecretMetadata, VersionInfo

__all__ = [
    "EXAMPLE_URI",
    "MAX_BULK_OPERATIONS",
    "BulkItem",
    "BulkItemResult",
    "BulkRequest",
    "BulkResult",
    "Done",
    "Keys",
    "Metadata",
    "MetadataDetail",
    "OwnerUpdate",
    "SecretWrite",
    "VersionItem",
    "Versions",
    "VersionsRequest",
    "Written",
]

MAX_BULK_OPERATIONS = 50
MAX_KEYS = 256
MAX_VERSIONS = 100

EXAMPLE_URI = "vault+kv2://secret/payments/db"
URIText = Annotated[
    str, StringConstraints(min_length=1, max_length=2048), Field(examples=[EXAMPLE_URI])
]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Value = Annotated[str, StringConstraints(max_length=65536)]
VersionNumber = Annotated[int, Field(ge=1, le=2**31 - 1)]
SecretValues = Annotated[dict[KeyName, Value], Field(min_length=1, max_length=MAX_KEYS)]
VersionList = Annotated[list[VersionNumber], Field(min_length=1, max_length=MAX_VERSIONS)]
# An identifier (team, e-mail, ServiceAccount): printable ASCII, which every store keeps as
# custom metadata (Vault refuses unprintable characters and values over 512 bytes).
Owner = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^[\x20-\x7e]+$"),
    Field(examples=["team-payments"]),
]


class _Body(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class SecretWrite(_Body):
    """POST /secrets and /secrets/rotate: the secret and its new values."""

    uri: URIText = Field(description="Canonical secret URI; '#key' writes only that key.")
    data: SecretValues = Field(
        description="Key -> value. Never logged.", examples=[{"password": "example"}]
    )


class VersionsRequest(_Body):
    """POST /secrets/undelete and /secrets/destroy-versions."""

    uri: URIText
    versions: VersionList


class OwnerUpdate(_Body):
    """POST /metadata/owner."""

    uri: URIText
    owner: Owner


BulkOp = Literal[
    "write",
    "rotate",
    "delete",
    "undelete",
    "destroy_versions",
    "metadata",
    "metadata_detail",
    "keys",
    "versions",
    "set_owner",
]


class BulkItem(_Body):
    """One operation of a bulk request; the fields it needs depend on ``op``."""

    op: BulkOp
    uri: URIText
    data: SecretValues | None = None
    versions: VersionList | None = None
    destroy: bool = False
    owner: Owner | None = None

    @model_validator(mode="after")
    def _fields_for_op(self) -> BulkItem:
        needs = {
            "write": "data",
            "rotate": "data",
            "undelete": "versions",
            "destroy_versions": "versions",
            "set_owner": "owner",
        }.get(self.op)
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"op {self.op!r} needs {needs!r}")
        if self.destroy and self.op != "delete":
            raise ValueError("destroy applies to op 'delete' only")
        if self.op == "delete" and self.destroy and self.versions is None:
            raise ValueError("delete with destroy needs 'versions'")
        return self


class BulkRequest(_Body):
    """POST /bulk: up to 50 operations, each guarded, decided and carried out on its own."""

    operations: Annotated[list[BulkItem], Field(min_length=1, max_length=MAX_BULK_OPERATIONS)]


# -- responses -------------------------------------------------------------------------


class Done(_Body):
    """An operation carried out; the PDP decision that permitted it."""

    decision_id: str


class Written(Done):
    version: int | None = Field(default=None, description="The new version (None: unversioned).")


class VersionItem(_Body):
    version: int
    created_time: dt.datetime | None = None
    deletion_time: dt.datetime | None = None
    destroyed: bool = False

    @classmethod
    def of(cls, info: VersionInfo) -> VersionItem:
        return cls(
            version=info.version,
            created_time=info.created_time,
            deletion_time=info.deletion_time,
            destroyed=info.destroyed,
        )


class Metadata(Done):
    """Ownership and versions of a secret; never values or key names."""

    current_version: int | None = None
    oldest_version: int | None = None
    created_time: dt.datetime | None = None
    updated_time: dt.datetime | None = None
    owner: str | None = None
    created_by: str | None = None
    created_at: dt.datetime | None = None

    @classmethod
    def fields_of(cls, meta: SecretMetadata) -> dict[str, Any]:
        return {
            "current_version": meta.current_version,
            "oldest_version": meta.oldest_version,
            "created_time": meta.created_time,
            "updated_time": meta.updated_time,
            "owner": meta.owner,
            "created_by": meta.created_by,
            "created_at": meta.created_at,
        }


class MetadataDetail(Metadata):
    custom_metadata: dict[str, str] = Field(default_factory=dict)
    versions: list[VersionItem] = Field(default_factory=list)


class Versions(Done):
    current_version: int | None = None
    versions: list[VersionItem]


class Keys(Done):
    keys: list[str] = Field(description="Names under the path; folders end with '/'.")


class BulkItemResult(_Body):
    """The outcome of one bulk operation: its HTTP status, and a problem code when refused."""

    index: int
    op: str
    status: int
    code: str | None = None
    detail: str | None = None
    decision_id: str | None = None
    result: dict[str, Any] | None = None


class BulkResult(_Body):
    results: list[BulkItemResult]
