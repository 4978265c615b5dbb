"""The MutatingAdmissionPolicy that puts the operator's finalizer on a grant as it is created.

A live grant is blanked before it is deleted, so every grant carries the
operator's finalizer from its creation. kopf adds it itself, in a write of its
own before the grant is first handled: a write, a watch event and a handling
cycle per grant. This policy has the apiserver add it in the create request
(CEL, no webhook call, no network), so the first thing the operator sees is a
grant it can decide at once.

The policy is an optimisation, never a condition: where it is absent (a cluster
older than Kubernetes 1.36, no RBAC for it, or removed), and for the moment after
the operator creates it before the apiserver takes it up, kopf adds the finalizer
as before. It matches only the namespaces the operator watches: a finalizer on a
grant no operator handles would keep that grant from being deleted. Pure builders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["FINALIZER", "binding", "policy", "policy_name"]

FINALIZER = "secretgrants.io/finalizer"
API_VERSION = "admissionregistration.k8s.io/v1"


def policy_name(config_name: str) -> str:
    return f"{config_name}-finalizer"


def _labels(config_name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "secretgrants", "app.kubernetes.io/managed-by": config_name}


def policy(config_name: str, finalizer: str = FINALIZER) -> dict[str, Any]:
    quoted = json.dumps(finalizer)
    has_it = f"object.metadata.finalizers.exists(f, f == {quoted})"
    return {
        "apiVersion": API_VERSION,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": policy_name(config_name), "labels": _labels(config_name)},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["secretgrants.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": ["secretgrantrequests"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "finalizer-missing",
                    "expression": f"!has(object.metadata.finalizers) || !{has_it}",
                }
            ],
            "failurePolicy": "Ignore",  # kopf adds it when the policy cannot
            "reinvocationPolicy": "Never",
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {
                        "expression": (
                            "has(object.metadata.finalizers) ? "
                            f'[JSONPatch{{op: "add", path: "/metadata/finalizers/-", value: {quoted}}}] : '
                            f'[JSONPatch{{op: "add", path: "/metadata/finalizers", value: [{quoted}]}}]'
                        )
                    },
                }
            ],
        },
    }


def binding(config_name: str, namespaces: Sequence[str] = ()) -> dict[str, Any]:
    """Binds the policy to the watched namespaces (every namespace when ``namespaces`` is empty)."""
    spec: dict[str, Any] = {"policyName": policy_name(config_name)}
    if namespaces:
        spec["matchResources"] = {
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": sorted(namespaces),
                    }
                ]
            }
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name(config_name), "labels": _labels(config_name)},
        "spec": spec,
    }
