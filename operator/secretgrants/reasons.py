"""Phases, purposes and condition reasons: the words the operator writes.

Every status condition reason, event reason and phase the operator can write
is a constant here, so that the CRD schema, the handlers, the docs and the
tests all use one spelling (the habit of the peers' ``consts/reasons.go``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ConditionType", "Phase", "Purpose", "Reason"]


class Phase(StrEnum):
    """Where a grant stands. Only ``Granted`` delivers anything."""

    PENDING = "Pending"
    GRANTED = "Granted"
    DENIED = "Denied"
    REJECTED = "Rejected"
    EXPIRED = "Expired"
    EXHAUSTED = "Exhausted"
    REVOKED = "Revoked"
    ERROR = "Error"


class Purpose(StrEnum):
    """What the holder of a grant may do: the seed's purposes, one PDP action each."""

    READ = "read"
    READ_METADATA = "read_metadata"
    WRITE = "write"
    DELETE = "delete"
    UNDELETE = "undelete"
    DESTROY_VERSIONS = "destroy_versions"
    ROTATE = "rotate"
    OWNER_UPDATE = "owner_update"


class ConditionType(StrEnum):
    """Condition types on a grant's status."""

    READY = "Ready"
    GUARDED = "TenantGuardPassed"
    AUTHORIZED = "Authorized"
    DELIVERED = "Delivered"


class Reason(StrEnum):
    """Condition and event reasons. Each maps to one HTTP status in ``errors``."""

    # progress
    GRANTED = "Granted"
    PENDING = "Pending"
    GUARD_PASSED = "MountAllowed"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    # guard failures (the seed's 400)
    INVALID_SECRET_URI = "InvalidSecretURI"
    MOUNT_NOT_ALLOWED = "MountNotAllowed"
    TENANT_NOT_FOUND = "TenantNotFound"
    TENANT_CONFLICT = "TenantConflict"
    # decisions (the seed's 403)
    DENIED = "Denied"
    PDP_UNAVAILABLE = "PDPUnavailable"
    UNKNOWN_OBLIGATION = "UnknownObligation"
    # providers (the seed's 502 / 404 / 501)
    PROVIDER_UNAVAILABLE = "ProviderUnavailable"
    PROVIDER_DENIED = "ProviderDenied"
    SECRET_NOT_FOUND = "SecretNotFound"
    KEY_NOT_FOUND = "KeyNotFound"
    VERSION_DELETED = "VersionDeleted"
    VERSION_DESTROYED = "VersionDestroyed"
    UNSUPPORTED_OPERATION = "UnsupportedOperation"
    # delivery (the apiserver refused the delivery Secret)
    DELIVERY_FAILED = "DeliveryFailed"
    # lifecycle
    EXPIRED = "Expired"
    EXHAUSTED = "Exhausted"
    REVOKED = "Revoked"
