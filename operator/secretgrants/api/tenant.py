"""The ``SecretTenant`` kind (cluster-scoped): which namespaces form a tenant, and its mounts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from secretgrants.api.common import Condition, KubeModel, cel, preserve_unknown

__all__ = [
    "LabelSelector",
    "LabelSelectorRequirement",
    "SaltSecretRef",
    "SecretTenant",
    "SecretTenantSpec",
    "SecretTenantStatus",
    "SelectorOperator",
]

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(KubeModel):
    """One label requirement, as in metav1.LabelSelectorRequirement."""

    key: str = Field(description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(default=None, description="Values for In and NotIn.")


class LabelSelector(KubeModel):
    """A namespace label selector, as in metav1.LabelSelector."""

    match_labels: dict[str, str] | None = Field(default=None, description="Labels that must match.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Requirements that must all hold."
    )


class SaltSecretRef(KubeModel):
    """Where the tenant's audit salt lives."""

    namespace: str = Field(description="Namespace of the Secret: the operator's own namespace.")
    name: str = Field(description="Name of the Secret.")
    key: str = Field(default="salt", description="Key in the Secret holding the salt.")


class SecretTenantSpec(KubeModel):
    """Namespaces that form one tenant, and the secret mounts that tenant may use."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": cel(
            (
                "has(self.namespaces) || has(self.namespaceSelector)",
                "a tenant needs namespaces, a namespaceSelector, or both",
            )
        )
    }

    tenant_id: Annotated[str, Field(min_length=1, max_length=63, pattern=_NAME)] = Field(
        description="The tenant id sent to the PDP and used in audit records."
    )
    namespaces: list[Annotated[str, Field(max_length=63, pattern=_NAME)]] | None = Field(
        default=None, max_length=1024, description="Namespaces of the tenant, by name."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of the tenant, by label."
    )
    allowed_mounts: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        min_length=1,
        max_length=256,
        description=(
            "Mounts this tenant may use: a mount name (any provider) like 'secret', "
            "or provider-qualified like 'vault+kv2://secret'."
        ),
    )
    salt_secret_ref: SaltSecretRef | None = Field(
        default=None,
        description=(
            "Secret holding the tenant's audit salt for resource_ref (HMAC of the URI). "
            "It must live in the operator's namespace, the only one where the operator reads Secrets."
        ),
    )


class SecretTenantStatus(KubeModel):
    """Whether the tenant's spec was accepted."""

    observed_generation: int | None = Field(default=None, description="Generation observed.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, or why the tenant is not usable.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The operator framework's (kopf) bookkeeping: handler progress and the last "
            "handled spec (a digest)."
        ),
        json_schema_extra=preserve_unknown,
    )


class SecretTenant(KubeModel):
    """Maps namespaces to a tenant id and its allowed mounts."""

    api_version: str = Field(default="secretgrants.io/v1alpha1")
    kind: str = Field(default="SecretTenant")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SecretTenantSpec
    status: SecretTenantStatus | None = None
