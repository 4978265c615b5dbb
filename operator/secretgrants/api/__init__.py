"""The API kinds as pydantic models: the single source of truth of the CRDs."""

from __future__ import annotations

from secretgrants.api.common import API_VERSION, GROUP, VERSION, Condition, ConditionStatus
from secretgrants.api.grant import (
    DeliveryMode,
    Effect,
    SecretGrantRequest,
    SecretGrantRequestSpec,
    SecretGrantRequestStatus,
)
from secretgrants.api.tenant import SecretTenant, SecretTenantSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "DeliveryMode",
    "Effect",
    "SecretGrantRequest",
    "SecretGrantRequestSpec",
    "SecretGrantRequestStatus",
    "SecretTenant",
    "SecretTenantSpec",
]
