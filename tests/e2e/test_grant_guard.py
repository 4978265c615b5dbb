"""The tenant and mount guard, end to end: grants and tenants on the real apiserver.

What goes in: a SecretTenant per test namespace (cluster-scoped, deleted after
the test) and grants in that namespace. What is asserted: the status the
running operator writes: phase, Ready and TenantGuardPassed conditions with
their reasons, observedGeneration, and the tenant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster, OperatorProcess
from tests.e2e.kube import apply, condition, eventually, get, grant, tenant

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def tenants(cluster: Cluster) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def make_tenant(
    cluster: Cluster, tenants: list[str], namespaces: list[str], mounts: list[str], **spec: Any
) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, name, mounts, namespaces=namespaces, **spec))
    tenants.append(name)
    return name


def status_of(cluster: Cluster, name: str, namespace: str, phase: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        obj = get(cluster, "sgr", name, namespace)
        status = obj.get("status") or {}
        assert status.get("phase") == phase, status
        assert status.get("observedGeneration") == obj["metadata"]["generation"], status
        return obj

    return eventually(check)


def test_allowed_mount_passes_the_guard(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    tid = make_tenant(cluster, tenants, [namespace], ["secret"])
    apply(cluster, grant("db", namespace, "vault+kv2://secret/payments/db#password"))
    obj = status_of(cluster, "db", namespace, "Pending")
    guard = condition(obj, "TenantGuardPassed")
    assert guard and guard["status"] == "True" and guard["reason"] == "MountAllowed"
    assert obj["status"]["tenant"] == tid
    assert "payments" not in str(obj["status"])  # the status never repeats the path


def test_mount_not_allowed_is_rejected(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    apply(cluster, grant("other", namespace, "vault+kv2://finance/ledger#key"))
    obj = status_of(cluster, "other", namespace, "Rejected")
    ready = condition(obj, "Ready")
    assert ready and ready["status"] == "False" and ready["reason"] == "MountNotAllowed"
    assert "'vault+kv2://finance' is not allowed" in ready["message"]
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    guard = condition(obj, "TenantGuardPassed")
    assert guard and guard["status"] == "False"


def test_provider_qualified_mount_only_allows_that_provider(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, [namespace], ["vault+kv2://secret"])
    apply(cluster, grant("ok", namespace, "vault://secret/app"))
    apply(cluster, grant("bao", namespace, "openbao+kv2://secret/app"))
    status_of(cluster, "ok", namespace, "Pending")
    obj = status_of(cluster, "bao", namespace, "Rejected")
    assert condition(obj, "Ready")["reason"] == "MountNotAllowed"  # type: ignore[index]


def test_invalid_uri_is_rejected_with_its_reason(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    apply(cluster, grant("dots", namespace, "vault+kv2://secret/app/../admin#password"))
    obj = status_of(cluster, "dots", namespace, "Rejected")
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == "InvalidSecretURI"
    assert ".." in ready["message"]


def test_unsupported_purpose_for_volume_delivery(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    apply(cluster, grant("del", namespace, "vault+kv2://secret/app", purpose="delete"))
    obj = status_of(cluster, "del", namespace, "Rejected")
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == "UnsupportedOperation"
    assert "Volume" in ready["message"]


def test_namespace_claimed_by_two_tenants_is_a_conflict(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    cluster.kubectl("label", "namespace", namespace, "team=both")
    make_tenant(
        cluster, tenants, [], ["secret"], namespaceSelector={"matchLabels": {"team": "both"}}
    )
    apply(cluster, grant("x", namespace, "vault+kv2://secret/app"))
    obj = status_of(cluster, "x", namespace, "Rejected")
    ready = condition(obj, "Ready")
    assert ready and ready["reason"] == "TenantConflict"


def test_namespace_without_tenant_is_rejected(
    cluster: Cluster, namespace: str, tenants: list[str]
) -> None:
    make_tenant(cluster, tenants, ["some-other-namespace"], ["secret"])
    apply(cluster, grant("y", namespace, "vault+kv2://secret/app"))
    obj = status_of(cluster, "y", namespace, "Rejected")
    assert condition(obj, "Ready")["reason"] == "TenantNotFound"  # type: ignore[index]


def test_spec_change_re_decides(cluster: Cluster, namespace: str, tenants: list[str]) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    apply(cluster, grant("z", namespace, "vault+kv2://finance/app"))
    status_of(cluster, "z", namespace, "Rejected")
    apply(cluster, grant("z", namespace, "vault+kv2://secret/app"))
    obj = status_of(cluster, "z", namespace, "Pending")
    assert obj["metadata"]["generation"] == 2
    assert condition(obj, "Ready")["observedGeneration"] == 2  # type: ignore[index]


def test_tenant_status_reports_an_invalid_mount(cluster: Cluster, tenants: list[str]) -> None:
    good = make_tenant(cluster, tenants, ["a"], ["secret"])
    bad = make_tenant(cluster, tenants, ["b"], ["vault+nope://secret"])

    def ready(name: str, want: str) -> dict[str, Any]:
        obj = get(cluster, "secrettenant", name)
        cond = condition(obj, "Ready")
        assert cond and cond["status"] == want, obj.get("status")
        return cond

    eventually(lambda: ready(good, "True"))
    cond = eventually(lambda: ready(bad, "False"))
    assert cond["reason"] == "InvalidSpec"
    assert "engine" in cond["message"]


def test_operator_bookkeeping_is_in_the_status_not_in_kopf_annotations(
    cluster: Cluster, namespace: str, tenants: list[str], operator: OperatorProcess
) -> None:
    make_tenant(cluster, tenants, [namespace], ["secret"])
    body = json.dumps(grant("ann", namespace, "vault+kv2://secret/app"))

    def policy_in_force() -> None:  # the apiserver takes up a new policy a moment after
        probe = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=body)
        assert json.loads(probe.stdout)["metadata"].get("finalizers"), probe.stdout

    eventually(policy_in_force)
    created = json.loads(
        cluster.kubectl(
            "create", "-o", "json", "-f", "-", input=body,
        ).stdout
    )  # fmt: skip
    # the apiserver put the finalizer on in the create request (the operator's
    # MutatingAdmissionPolicy): kopf needs no write of its own before deciding
    assert created["metadata"].get("finalizers") == ["secretgrants.io/finalizer"], created
    obj = status_of(cluster, "ann", namespace, "Pending")
    keys = set(obj["metadata"].get("annotations", {}))
    assert not any("kopf.zalando.org" in k for k in keys), keys
    assert not any("last-handled-configuration" in k for k in keys), keys
    assert obj["metadata"]["finalizers"] == ["secretgrants.io/finalizer"]

    def retry_state_kept() -> None:  # the handler's retries, kept by the schema (not pruned)
        status = get(cluster, "sgr", "ann", namespace)["status"]
        assert (status.get("kopf") or {}).get("progress"), status

    eventually(retry_state_kept)
