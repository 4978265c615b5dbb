"""The ``SecretGrantRequest`` kind: what a workload asks for, and what the operator decided.

These pydantic models are the single source of truth for the CRD schema
(``secretgrants crds`` generates ``crds/`` from them). Every field carries a
description so that ``kubectl explain sgr.spec`` reads like documentation.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from secretgrants.api.common import Condition, KubeModel, cel, preserve_unknown
from secretgrants.reasons import Phase, Purpose

__all__ = [
    "Binding",
    "DecisionStatus",
    "DeliveredStatus",
    "DeliveryItem",
    "DeliveryMode",
    "DeliverySpec",
    "Effect",
    "Obligations",
    "RenewalSpec",
    "SecretGrantRequest",
    "SecretGrantRequestSpec",
    "SecretGrantRequestStatus",
    "WorkloadRef",
]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KEY = r"^[-._a-zA-Z0-9]+$"
_FILE = r"^[-._a-zA-Z0-9]+(/[-._a-zA-Z0-9]+)*$"

MAX_TTL_SECONDS = 7 * 24 * 3600


class DeliveryMode(StrEnum):
    VOLUME = "Volume"
    API = "Api"


class Effect(StrEnum):
    PERMIT = "permit"
    DENY = "deny"
    ERROR = "error"


class DeliveryItem(KubeModel):
    """One key of the secret, delivered as one file."""

    key: Annotated[str, Field(max_length=253, pattern=_KEY)] = Field(
        description="The key inside the secret to deliver."
    )
    path: Annotated[str, Field(max_length=253, pattern=_FILE)] | None = Field(
        default=None,
        description="File name under the mount directory; defaults to the key. No '..'.",
        json_schema_extra=cel(
            (
                "!self.split('/').exists(s, s == '..' || s == '.')",
                "path must not contain '.' or '..' segments",
            )
        ),
    )
    mode: int | None = Field(
        default=None, ge=0, le=0o777, description="File mode bits (decimal), e.g. 256 for 0400."
    )


class DeliverySpec(KubeModel):
    """How the value reaches the workload."""

    mode: DeliveryMode = Field(
        default=DeliveryMode.VOLUME,
        description=(
            "Volume: a projected volume injected into admitted pods. "
            "Api: read through the secretgrants API with a sender-bound token."
        ),
    )
    items: list[DeliveryItem] | None = Field(
        default=None,
        max_length=64,
        description="Keys to deliver and their file names; all keys (or the URI's #fragment) when unset.",
    )
    default_mode: int = Field(
        default=0o400, ge=0, le=0o777, description="File mode bits for delivered files (decimal)."
    )
    containers: list[Annotated[str, Field(max_length=63, pattern=_DNS_LABEL)]] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Containers that get the mount; all containers when unset. When set, no other "
            "container of the pod (init and ephemeral containers included) may mount a volume "
            "that carries the delivery Secret or read it through env or envFrom: the "
            "validating webhook refuses such a pod (ContainerNotAllowed)."
        ),
    )
    audience_token: bool = Field(
        default=False,
        description="Also project a ServiceAccount token for the secrets audience next to the values.",
    )


class WorkloadRef(KubeModel):
    """A workload in the grant's namespace to restart after the value rotates."""

    kind: str = Field(
        description="Deployment, StatefulSet or DaemonSet.",
        json_schema_extra={"enum": ["Deployment", "StatefulSet", "DaemonSet"]},
    )
    name: Annotated[str, Field(max_length=253, pattern=_DNS_SUBDOMAIN)] = Field(
        description="Name of the workload."
    )


class RenewalSpec(KubeModel):
    """Whether the operator asks the PDP again when the grant expires or its uses run out."""

    enabled: bool = Field(default=False, description="Re-authorize on expiry or exhaustion.")
    before_expiry_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Re-authorize this many seconds before expiresAt.",
    )
    restart_workloads: list[WorkloadRef] | None = Field(
        default=None,
        max_length=16,
        description="Workloads to roll out (rate-limited) after a renewal delivered a new value.",
    )


class SecretGrantRequestSpec(KubeModel):
    """What a workload asks for: one secret, for one purpose, bound to one ServiceAccount."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": cel(
            (
                "!has(self.version) || self.secretUri.startsWith('vault') || "
                "self.secretUri.startsWith('openbao')",
                "version pins are only supported by KV v2 providers (vault+kv2, openbao+kv2)",
            ),
            (
                "!self.secretUri.contains('#') || self.purpose in ['read', 'write']",
                "a #fragment selects one key and is only allowed for the read and write purposes",
            ),
        )
    }

    secret_uri: Annotated[str, Field(min_length=8, max_length=1024)] = Field(
        description=(
            "Canonical secret URI provider[+engine]://<mount>/<path>#<fragment>, e.g. "
            "vault+kv2://secret/payments/db#password or yaml://dev/app#token."
        ),
        json_schema_extra={"pattern": r"^[a-zA-Z0-9]+(\+[a-zA-Z0-9]+)?://[^\s]+$"},
    )
    purpose: Purpose = Field(
        default=Purpose.READ,
        description="What the grant is for; the PDP decides per purpose. Volume delivery carries out read.",
    )
    service_account_name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)
    ] = Field(description="The ServiceAccount in this namespace that the grant is bound to.")
    version: int | None = Field(
        default=None, ge=1, description="KV v2 version to deliver; the latest when unset."
    )
    ttl_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TTL_SECONDS,
        description="Requested lifetime. The PDP may lower it, never raise it.",
    )
    max_uses: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Requested number of uses (admitted pods, or API reads). The PDP may lower it.",
    )
    justification: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Free text passed to the PDP as context."
    )
    renewal: RenewalSpec | None = Field(
        default=None, description="Renewal on expiry or exhaustion."
    )
    delivery: DeliverySpec = Field(
        default_factory=DeliverySpec, description="How the value is delivered."
    )


class Obligations(KubeModel):
    """What the PDP obliged, and so what the operator enforces."""

    ttl_seconds: int | None = Field(default=None, description="Effective lifetime in seconds.")
    max_uses: int | None = Field(default=None, description="Effective number of uses.")
    extra: dict[str, str] | None = Field(
        default=None, description="Other obligations the PDP returned, shown as given."
    )


class DecisionStatus(KubeModel):
    """The last PDP decision for this grant."""

    id: str = Field(description="Decision id (the PDP's, or one the operator made).")
    effect: Effect = Field(description="permit, deny or error.")
    reason: str | None = Field(default=None, description="Why, in the PDP's words.")
    pdp: str = Field(description="Which PDP decided: builtin, authzen, opa or disabled.")
    decided_at: dt.datetime = Field(description="When the decision was made.")


class Binding(KubeModel):
    """Who may use the grant."""

    service_account_name: str = Field(description="The bound ServiceAccount.")
    service_account_uid: str = Field(
        alias="serviceAccountUID",
        description="Its UID; a recreated ServiceAccount revokes the grant.",
    )
    jkt: str | None = Field(default=None, description="DPoP key thumbprint (RFC 7638), once bound.")
    x5t_s256: str | None = Field(
        default=None,
        alias="x5tS256",
        description="mTLS client certificate SHA-256 thumbprint, once bound.",
    )


class DeliveredStatus(KubeModel):
    """What was delivered (names only, never values)."""

    mode: DeliveryMode | None = Field(default=None, description="Volume or Api.")
    secret_name: str | None = Field(
        default=None, description="The delivery Secret (Volume delivery only)."
    )
    keys: list[str] | None = Field(default=None, description="Keys delivered.")
    version: int | None = Field(default=None, description="Provider version delivered.")


class UseReservation(KubeModel):
    """A use the admission webhook counted for a pod not yet seen created."""

    id: str = Field(description="Reservation id; the admitted pod carries it in an annotation.")
    reserved_at: dt.datetime = Field(description="When the use was reserved.")


class SecretGrantRequestStatus(KubeModel):
    """What the operator decided and delivered. Never holds a secret value or the URI."""

    phase: Phase | None = Field(default=None, description="Where the grant stands.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status was written for."
    )
    tenant: str | None = Field(default=None, description="The tenant of the grant's namespace.")
    decision: DecisionStatus | None = Field(default=None, description="The last PDP decision.")
    obligations: Obligations | None = Field(default=None, description="Obligations in force.")
    granted_at: dt.datetime | None = Field(
        default=None, description="When the grant was permitted."
    )
    expires_at: dt.datetime | None = Field(default=None, description="When the grant expires.")
    uses_consumed: int | None = Field(default=None, description="Uses consumed so far.")
    uses_remaining: int | None = Field(default=None, description="Uses left; unlimited when unset.")
    reservations: list[UseReservation] | None = Field(
        default=None,
        description=(
            "Uses counted for admitted pods not yet confirmed; released when no created pod "
            "carries them within the reservation window."
        ),
    )
    binding: Binding | None = Field(default=None, description="What the grant is bound to.")
    delivery: DeliveredStatus | None = Field(default=None, description="What was delivered.")
    resource_ref: str | None = Field(
        default=None,
        description="HMAC-SHA256(tenant salt, canonical URI): audit id, never the URI.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready and the reason of the latest failure.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The operator framework's (kopf) bookkeeping: handler progress and the last "
            "handled spec. Kept in the status so that one status write records a decision."
        ),
        json_schema_extra=preserve_unknown,
    )


class SecretGrantRequest(KubeModel):
    """A request for a purpose-bound, short-lived grant of one secret to one ServiceAccount."""

    api_version: str = Field(default="secretgrants.io/v1alpha1")
    kind: str = Field(default="SecretGrantRequest")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SecretGrantRequestSpec
    status: SecretGrantRequestStatus | None = None
