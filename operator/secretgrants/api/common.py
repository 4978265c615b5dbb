"""Pieces shared by every kind: the camelCase base model and Kubernetes conditions."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "KubeModel",
    "cel",
    "now",
    "preserve_unknown",
    "set_condition",
]

GROUP = "secretgrants.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` for CEL validation rules: (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class KubeModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are ignored (the schema prunes them)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
    )

    def to_kube(self) -> dict[str, Any]:
        """The wire form: aliases, no unset optional fields, enums and times as strings."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A Kubernetes condition (the shape of metav1.Condition)."""

    type: str = Field(description="Type of condition, e.g. Ready.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set for."
    )
    last_transition_time: dt.datetime = Field(description="When the condition last changed status.")
    reason: str = Field(
        description="A CamelCase reason for the condition's last transition.", max_length=1024
    )
    message: str = Field(
        default="", description="A human-readable message with details.", max_length=32768
    )


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    at: dt.datetime | None = None,
) -> list[Condition]:
    """Return conditions with ``type_`` set; the transition time moves only when the status does."""
    at = at or now()
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type == type_:
            found = True
            moved = cond.status != status
            out.append(
                Condition(
                    type=type_,
                    status=status,
                    observed_generation=generation,
                    last_transition_time=at if moved else cond.last_transition_time,
                    reason=reason,
                    message=message,
                )
            )
        else:
            out.append(cond)
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                observed_generation=generation,
                last_transition_time=at,
                reason=reason,
                message=message,
            )
        )
    return out


def preserve_unknown(schema: dict[str, Any]) -> None:
    """An object the apiserver keeps as written (no pruning), for kopf's bookkeeping."""
    description = schema.get("description")
    schema.clear()
    schema.update({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    if description:
        schema["description"] = description
