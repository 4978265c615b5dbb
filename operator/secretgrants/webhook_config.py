"""The Mutating- and ValidatingWebhookConfiguration the operator keeps in place. Pure builders.

Choices (explained in the README):
- failurePolicy Fail for both: a pod that asks for a grant must not start
  without the check, and a pod must not mount a delivery Secret unchecked.
  The cost is that such pods cannot be created while the webhook is down.
- The mutating webhook sees only pods that opt in (objectSelector on the
  inject label); the validating webhook sees only pods that reference a
  Secret named like a delivery Secret (``sg-*``) in a volume, a projected
  source, ``env`` or ``envFrom`` of any container (a CEL matchCondition the
  apiserver evaluates), in every namespace but the operator's own and
  kube-system. So pods that use no delivery Secret never call the operator,
  and keep being created while it is down.
- The mutating webhook sees pod CREATE; the validating one also sees the
  UPDATE of ``pods/ephemeralcontainers`` (``kubectl debug``), whose object is
  the whole pod: an ephemeral container is the one way to add ``env`` to a
  pod after its creation. The same CEL condition selects those updates.
- A second validating webhook sees pod UPDATE, but the apiserver calls it only
  for an update that changes or removes the ``secretgrants.io/reservations``
  annotation of a pod that has one (a CEL matchCondition), which it refuses:
  counted uses are confirmed by finding that annotation on pods.
- sideEffects NoneOnDryRun: a dry-run admission counts no use.

The operator applies these at start (``SECRETGRANTS_WEBHOOK_MANAGE``, the default);
the Helm chart renders the same configurations instead, so that the operator needs
no rights on admission configuration (``webhook.manageConfiguration``, off by
default). A test compares the chart's rendering with ``configurations`` below.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from secretgrants.admission import ANNOTATION_RESERVATIONS, LABEL_INJECT
from secretgrants.delivery import DELIVERY_PREFIX

if TYPE_CHECKING:
    from secretgrants.settings import Settings

__all__ = [
    "MUTATE_PATH",
    "VALIDATE_PATH",
    "client_config",
    "configurations",
    "configurations_for",
    "mutating",
    "validating",
]

MUTATE_PATH = "/mutate-pods"
VALIDATE_PATH = "/validate-pods"
_POD_RULE = {
    "apiGroups": [""],
    "apiVersions": ["v1"],
    "resources": ["pods"],
    "operations": ["CREATE"],
    "scope": "Namespaced",
}
_EPHEMERAL_CONTAINERS_RULE = {
    **_POD_RULE,
    "resources": ["pods/ephemeralcontainers"],
    "operations": ["UPDATE"],
}
_POD_UPDATE_RULE = {**_POD_RULE, "operations": ["UPDATE"]}


def client_config(
    ca_pem: bytes,
    path: str,
    *,
    url: str | None,
    service: str,
    namespace: str,
    port: int,
) -> dict[str, Any]:
    """Where the apiserver calls: a URL outside a cluster, else the operator's Service."""
    bundle = base64.b64encode(ca_pem).decode()
    if url:
        return {"url": url.rstrip("/") + path, "caBundle": bundle}
    return {
        "service": {"name": service, "namespace": namespace, "path": path, "port": port},
        "caBundle": bundle,
    }


def _namespace_selector(namespaces: Sequence[str], operator_namespace: str) -> dict[str, Any]:
    key = "kubernetes.io/metadata.name"
    if namespaces:
        return {"matchExpressions": [{"key": key, "operator": "In", "values": sorted(namespaces)}]}
    return {
        "matchExpressions": [
            {"key": key, "operator": "NotIn", "values": [operator_namespace, "kube-system"]}
        ]
    }


def _common(
    rules: Sequence[dict[str, Any]],
    failure_policy: str,
    timeout_seconds: int,
    namespaces: Sequence[str],
    operator_namespace: str,
) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "NoneOnDryRun",
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout_seconds,
        "rules": [dict(rule) for rule in rules],
        "namespaceSelector": _namespace_selector(namespaces, operator_namespace),
    }


def _meta(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"app.kubernetes.io/name": "secretgrants", "app.kubernetes.io/managed-by": name},
    }


def mutating(
    name: str,
    client: dict[str, Any],
    *,
    failure_policy: str = "Fail",
    timeout_seconds: int = 5,
    namespaces: Sequence[str] = (),
    operator_namespace: str = "secretgrants-system",
) -> dict[str, Any]:
    webhook = {
        "name": "pods.mutate.secretgrants.io",
        "clientConfig": client,
        "objectSelector": {"matchLabels": {LABEL_INJECT: "true"}},
        # Run once: a second pass would count a second use for the same pod.
        "reinvocationPolicy": "Never",
        **_common([_POD_RULE], failure_policy, timeout_seconds, namespaces, operator_namespace),
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": _meta(name),
        "webhooks": [webhook],
    }


def _references(item: str, has: str, name: str) -> str:
    return f"has({item}.{has}) && has({item}.{has}.{name}) && {item}.{has}.{name}.startsWith('{DELIVERY_PREFIX}')"


def _container_refs(kind: str) -> str:
    env_from = _references("e", "secretRef", "name")
    env = f"has(e.valueFrom) && {_references('e.valueFrom', 'secretKeyRef', 'name')}"
    return (
        f"(has(object.spec.{kind}) && object.spec.{kind}.exists(c, "
        f"(has(c.envFrom) && c.envFrom.exists(e, {env_from})) || "
        f"(has(c.env) && c.env.exists(e, {env}))))"
    )


# The pods whose validation matters: every place ``admission.direct_secret_mounts`` reads
# (for an UPDATE of pods/ephemeralcontainers, ``object`` is the pod with its new containers).
USES_DELIVERY_SECRET: Final = " || ".join(
    [
        "(has(object.spec.volumes) && object.spec.volumes.exists(v, "
        f"({_references('v', 'secret', 'secretName')}) || "
        "(has(v.projected) && has(v.projected.sources) && v.projected.sources.exists(s, "
        f"{_references('s', 'secret', 'name')}))))",
        *(
            _container_refs(kind)
            for kind in ("containers", "initContainers", "ephemeralContainers")
        ),
    ]
)


def _annotation(obj: str) -> str:
    return f"{obj}.metadata.annotations['{ANNOTATION_RESERVATIONS}']"


# The pod updates to refuse: the reservations annotation of a created pod changed or removed.
RESERVATIONS_CHANGED: Final = (
    f"has(oldObject.metadata.annotations) && "
    f"'{ANNOTATION_RESERVATIONS}' in oldObject.metadata.annotations && "
    f"!(has(object.metadata.annotations) && "
    f"'{ANNOTATION_RESERVATIONS}' in object.metadata.annotations && "
    f"{_annotation('object')} == {_annotation('oldObject')})"
)


def validating(
    name: str,
    client: dict[str, Any],
    *,
    failure_policy: str = "Fail",
    timeout_seconds: int = 5,
    namespaces: Sequence[str] = (),
    operator_namespace: str = "secretgrants-system",
) -> dict[str, Any]:
    common = (failure_policy, timeout_seconds, namespaces, operator_namespace)
    uses = {
        "name": "pods.validate.secretgrants.io",
        "clientConfig": client,
        "matchConditions": [{"name": "uses-delivery-secret", "expression": USES_DELIVERY_SECRET}],
        **_common([_POD_RULE, _EPHEMERAL_CONTAINERS_RULE], *common),
    }
    reservations = {
        "name": "pods-reservations.validate.secretgrants.io",
        "clientConfig": client,
        "matchConditions": [{"name": "reservations-changed", "expression": RESERVATIONS_CHANGED}],
        **_common([_POD_UPDATE_RULE], *common),
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _meta(name),
        "webhooks": [uses, reservations],
    }


def configurations(
    name: str,
    ca_pem: bytes,
    *,
    url: str | None,
    service: str,
    operator_namespace: str,
    port: int = 443,
    failure_policy: str = "Fail",
    timeout_seconds: int = 5,
    namespaces: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Both configurations, as the operator applies them and the chart renders them."""
    return [
        build(
            name,
            client_config(
                ca_pem, path, url=url, service=service, namespace=operator_namespace, port=port
            ),
            failure_policy=failure_policy,
            timeout_seconds=timeout_seconds,
            namespaces=namespaces,
            operator_namespace=operator_namespace,
        )
        for build, path in ((mutating, MUTATE_PATH), (validating, VALIDATE_PATH))
    ]


def configurations_for(cfg: Settings, ca_pem: bytes) -> list[dict[str, Any]]:
    """What the operator applies at start with these settings."""
    return configurations(
        cfg.webhook_config_name,
        ca_pem,
        url=cfg.webhook_url,
        service=cfg.webhook_service,
        operator_namespace=cfg.operator_namespace,
        failure_policy=cfg.webhook_failure_policy,
        timeout_seconds=cfg.webhook_timeout_seconds,
        namespaces=[cfg.namespace] if cfg.namespace else [],
    )
