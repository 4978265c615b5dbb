"""The exception tree of secretgrants.

Every failure the operator reports is one of these, carrying a condition
``reason`` (a :class:`~secretgrants.reasons.Reason`) and the HTTP status the
seeds give it. Messages name what failed and why, and never carry a secret
value, a token, or a provider path beyond what the caller already sent.

::

    SecretGrantsError
    ├── InvalidSecretURI ............ 400  InvalidSecretURI
    ├── GuardError .................. 400
    │   ├── MountNotAllowed ......... 400  MountNotAllowed
    │   ├── TenantNotFound .......... 400  TenantNotFound
    │   └── TenantConflict .......... 400  TenantConflict
    ├── PolicyError ................. 403
    │   ├── PDPUnavailable .......... 403  PDPUnavailable   (fail closed; retried)
    │   └── UnknownObligation ....... 403  UnknownObligation
    ├── ProviderError ............... 502
    │   ├── ProviderUnavailable ..... 502  ProviderUnavailable (retried)
    │   ├── ProviderDenied .......... 502  ProviderDenied
    │   ├── SecretNotFound .......... 404  SecretNotFound
    │   ├── KeyNotFound ............. 404  KeyNotFound
    │   ├── VersionDeleted .......... 410  VersionDeleted
    │   ├── VersionDestroyed ........ 410  VersionDestroyed
    │   └── UnsupportedOperation .... 501  UnsupportedOperation
    └── DeliveryFailed .............. 500  DeliveryFailed
        └── DeliveryUnavailable ..... 500  DeliveryFailed (retried)

``retryable`` tells the kopf handlers whether to raise ``TemporaryError``
(with backoff) or ``PermanentError``.
"""

from __future__ import annotations

from typing import ClassVar

from secretgrants.reasons import Reason

__all__ = [
    "DeliveryFailed",
    "DeliveryUnavailable",
    "GuardError",
    "InvalidSecretURI",
    "KeyNotFound",
    "MountNotAllowed",
    "PDPUnavailable",
    "PolicyError",
    "ProviderDenied",
    "ProviderError",
    "ProviderUnavailable",
    "SecretGrantsError",
    "SecretNotFound",
    "TenantConflict",
    "TenantNotFound",
    "UnknownObligation",
    "UnsupportedOperation",
    "VersionDeleted",
    "VersionDestroyed",
]


class SecretGrantsError(Exception):
    """Base of every error the product reports with a reason."""

    reason: ClassVar[Reason]
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidSecretURI(SecretGrantsError):
    reason = Reason.INVALID_SECRET_URI
    status = 400


class GuardError(SecretGrantsError):
    status = 400


class MountNotAllowed(GuardError):
    reason = Reason.MOUNT_NOT_ALLOWED


class TenantNotFound(GuardError):
    reason = Reason.TENANT_NOT_FOUND


class TenantConflict(GuardError):
    reason = Reason.TENANT_CONFLICT


class PolicyError(SecretGrantsError):
    status = 403


class PDPUnavailable(PolicyError):
    reason = Reason.PDP_UNAVAILABLE
    retryable = True


class UnknownObligation(PolicyError):
    reason = Reason.UNKNOWN_OBLIGATION


class ProviderError(SecretGrantsError):
    status = 502


class ProviderUnavailable(ProviderError):
    reason = Reason.PROVIDER_UNAVAILABLE
    retryable = True


class ProviderDenied(ProviderError):
    reason = Reason.PROVIDER_DENIED


class SecretNotFound(ProviderError):
    reason = Reason.SECRET_NOT_FOUND
    status = 404


class KeyNotFound(ProviderError):
    reason = Reason.KEY_NOT_FOUND
    status = 404


class VersionDeleted(ProviderError):
    reason = Reason.VERSION_DELETED
    status = 410


class VersionDestroyed(ProviderError):
    reason = Reason.VERSION_DESTROYED
    status = 410


class UnsupportedOperation(ProviderError):
    reason = Reason.UNSUPPORTED_OPERATION
    status = 501


class DeliveryFailed(SecretGrantsError):
    """The delivery Secret could not be written, and trying again will not help."""

    reason = Reason.DELIVERY_FAILED


class DeliveryUnavailable(DeliveryFailed):
    """The delivery Secret could not be written for now (the apiserver busy or failing)."""

    retryable = True
