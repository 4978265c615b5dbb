"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

pydantic emits JSON Schema with ``$ref``, ``anyOf [T, null]`` and titles;
Kubernetes wants a structural OpenAPI v3 schema: everything inlined, optional
fields simply not required, descriptions kept, and the ``x-kubernetes-*``
extensions passed through. That translation is the only logic here.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from secretgrants.api.common import GROUP, VERSION
from secretgrants.api.grant import SecretGrantRequestSpec, SecretGrantRequestStatus
from secretgrants.api.tenant import SecretTenantSpec, SecretTenantStatus

__all__ = ["all_crds", "crd_documents", "openapi_schema", "render"]

_DROP = {"title"}


def openapi_schema(model: type[BaseModel], description: str | None = None) -> dict[str, Any]:
    """A structural schema for ``model`` (by alias, as it appears on the wire)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    out = _convert(raw, defs)
    if description:
        out["description"] = description
    return out


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        rest.pop("default", None) if rest.get("default") is None else None
        return _convert({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            out["properties"] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "additionalProperties" and isinstance(value, dict):
            out["additionalProperties"] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "format" and value == "date-time":
            out["format"] = "date-time"
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "required" in out:
        out["required"] = sorted(out["required"])
    return out


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    scope: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec, (spec.__doc__ or "").strip()),
            "status": openapi_schema(status, (status.__doc__ or "").strip()),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "secretgrants"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["secretgrants"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [
        _crd(
            kind="SecretGrantRequest",
            plural="secretgrantrequests",
            short_names=["sgr"],
            scope="Namespaced",
            spec=SecretGrantRequestSpec,
            status=SecretGrantRequestStatus,
            description=(
                "A request for a purpose-bound, short-lived grant of one secret to one "
                "ServiceAccount, decided by a policy decision point."
            ),
            columns=[
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Purpose", "type": "string", "jsonPath": ".spec.purpose"},
                {
                    "name": "ServiceAccount",
                    "type": "string",
                    "jsonPath": ".spec.serviceAccountName",
                },
                {"name": "Uses-Left", "type": "integer", "jsonPath": ".status.usesRemaining"},
                {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
                {
                    "name": "Reason",
                    "type": "string",
                    "priority": 1,
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                },
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        ),
        _crd(
            kind="SecretTenant",
            plural="secrettenants",
            short_names=["sgt"],
            scope="Cluster",
            spec=SecretTenantSpec,
            status=SecretTenantStatus,
            description="Maps namespaces to a tenant id and the secret mounts the tenant may use.",
            columns=[
                {"name": "Tenant", "type": "string", "jsonPath": ".spec.tenantId"},
                {
                    "name": "Ready",
                    "type": "string",
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                },
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        ),
    ]


def crd_documents() -> dict[str, str]:
    """File name → YAML text, as committed under ``crds/``."""
    out: dict[str, str] = {}
    for crd in all_crds():
        out[f"{crd['metadata']['name']}.yaml"] = render([crd])
    return out


def render(docs: list[dict[str, Any]]) -> str:
    header = "# Generated by `secretgrants crds` from operator/secretgrants/api: do not edit.\n"
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)
