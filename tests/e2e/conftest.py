"""Fixtures shared by the e2e tests (the cluster, servers and operator are in tests/conftest.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Cluster, webhook_config_name
from tests.e2e.kube import apply, eventually, grant, tenant

OPERATOR_NS = "secretgrants-system"
OPERATOR_SA = "secretgrants-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
RBAC_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
}
POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def base_objects(cluster: Cluster, kinds: set[str]) -> list[dict[str, Any]]:
    """The objects of these kinds that ``kubectl kustomize manifests/base`` renders."""
    rendered = cluster.kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]


@pytest.fixture
def ready_namespace(cluster: Cluster, crds: None, namespace: str) -> Iterator[str]:
    """The test namespace with a tenant allowing the `secret` mount and ServiceAccounts
    `app` and `other`."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[namespace]))
    cluster.kubectl("create", "serviceaccount", "app", "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "other", "-n", namespace)
    yield namespace
    cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_rbac(cluster: Cluster, crds: None) -> None:
    """The base's namespace, ServiceAccount and RBAC, applied for real."""
    docs = base_objects(cluster, RBAC_KINDS)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


@pytest.fixture
def enforce_policies(
    cluster: Cluster, operator_rbac: None, namespace: str
) -> Iterator[Callable[[], None]]:
    """``enforce()`` applies the base's ValidatingAdmissionPolicies and returns once the
    apiserver enforces both in this test's namespace; they are deleted afterwards.

    Their bindings are narrowed to this namespace: the operators of other tests run as the
    admin user, whose status writes the shipped (cluster-wide) binding would refuse. (Webhook
    configurations are cluster-scoped: a namespaceSelector never skips them.) The test's
    operator keeps webhook configurations named after its namespace, so that is the name
    secretgrants-operator-writes lets it write, instead of the shipped ``secretgrants``.
    """
    docs = base_objects(cluster, POLICY_KINDS)
    assert sorted(d["kind"] for d in docs) == sorted([*POLICY_KINDS] * 2)
    for doc in docs:
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            assert "matchResources" not in doc["spec"], "the shipped binding is cluster-wide"
            doc["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }
        for variable in doc["spec"].get("variables", []):
            if variable["name"] == "webhookConfigurations":
                assert variable["expression"] == "['secretgrants']", variable
                variable["expression"] = f"['{webhook_config_name(namespace)}']"
    probe = f"policy-probe-{uuid.uuid4().hex[:6]}"

    def refused(args: list[str], policy: str) -> None:
        out = cluster.kubectl(*args, "-n", namespace, "--dry-run=server", check=False)
        assert out.returncode != 0 and f"denied request: {policy}:" in out.stderr, out.stderr

    def enforce() -> None:
        apply(cluster, grant(probe, namespace, "vault+kv2://secret/probe"))
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        # The apiserver's policy informers take a moment: dry runs until both refuse.
        status = json.dumps({"status": {"phase": "Granted"}})
        status_patch = ["patch", "sgr", probe, "--subresource=status", "--type=merge", "-p", status]
        eventually(lambda: refused(status_patch, "secretgrants-grant-status"), timeout=30)
        opaque = ["create", "secret", "generic", probe, f"--as={OPERATOR_USER}"]
        eventually(lambda: refused(opaque, "secretgrants-operator-writes"), timeout=30)
        cluster.kubectl("delete", "sgr", probe, "-n", namespace, "--wait=false")

    yield enforce
    for doc in docs:
        cluster.kubectl(
            "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found",
            check=False,
        )  # fmt: skip
