"""The install's ValidatingAdmissionPolicies, enforced by the real apiserver.

What goes in: the base's RBAC and its two policies (``manifests/base/admission-policies.yaml``),
bound to the test's namespace only (see ``enforce_policies``). Other users act through
``kubectl --as``; the operator acts through its own client (``KubeClient``: the requests its
code sends) logged in with a token of its ServiceAccount. What is asserted: only the
operator writes a grant's status (a tenant's wildcard role could before); the operator
writes only delivery Secrets, changes a workload only in its restart annotation, and
writes only its own webhook configurations. Each refusal carries the policy's message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest

from secretgrants import kubeconfig
from secretgrants.delivery import delivery_secret, delivery_secret_name
from secretgrants.finalizer_policy import policy as finalizer_policy
from secretgrants.kube import KubeAPIError, KubeClient, Login
from secretgrants.pki import new_ca
from secretgrants.restarts import ANNOTATION_RESTARTED_AT, restart_patch
from secretgrants.webhook_config import configurations
from tests.conftest import Cluster, webhook_config_name
from tests.e2e.conftest import OPERATOR_NS, OPERATOR_SA, OPERATOR_USER
from tests.e2e.kube import apply, get, grant

STATUS_POLICY = "secretgrants-grant-status"
WRITES_POLICY = "secretgrants-operator-writes"
# What a tenant forges: a live grant, far from expiry, with uses to spare.
FORGED = {"status": {"phase": "Granted", "expiresAt": "2099-01-01T00:00:00Z", "usesRemaining": 99}}


@pytest.fixture
async def as_operator(cluster: Cluster, operator_rbac: None) -> AsyncIterator[KubeClient]:
    """The operator's client, logged in as the operator's ServiceAccount (a TokenRequest)."""
    token = cluster.kubectl(
        "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=10m"
    ).stdout.strip()
    admin = kubeconfig.load(env={"KUBECONFIG": str(cluster.kubeconfig)})
    info = kopf.ConnectionInfo(
        server=admin.server,
        ca_path=admin.ca_path,
        ca_data=admin.ca_data,
        insecure=admin.insecure,
        token=token,
    )
    client = KubeClient(login=lambda: Login(info), name="as-operator")
    try:
        yield client
    finally:
        await client.aclose()


async def refused(write: Any) -> str:
    """The message of the policy that refused ``write`` (an awaitable KubeClient call)."""
    with pytest.raises(KubeAPIError) as err:
        await write
    assert err.value.status == 403, err.value
    assert f"denied request: {WRITES_POLICY}:" in err.value.message, err.value.message
    return err.value.message


def status_patch(cluster: Cluster, namespace: str, name: str, user: str | None) -> Any:
    args = ["patch", "sgr", name, "-n", namespace, "--subresource=status", "--type=merge"]
    args += ["-p", json.dumps(FORGED)]
    return cluster.kubectl(*args, *([f"--as={user}"] if user else []), check=False)


def test_only_the_operator_writes_a_grants_status(
    cluster: Cluster, crds: None, namespace: str, enforce_policies: Callable[[], None]
) -> None:
    ns = namespace
    # A tenant whose namespace role covers every secretgrants.io resource (a common "*").
    cluster.kubectl("create", "serviceaccount", "tenant", "-n", ns)
    cluster.kubectl(
        "create", "role", "grants-all", "-n", ns, "--verb=*", "--resource=*.secretgrants.io"
    )
    cluster.kubectl(
        "create", "rolebinding", "tenant", "-n", ns,
        "--role=grants-all", f"--serviceaccount={ns}:tenant",
    )  # fmt: skip
    tenant = f"system:serviceaccount:{ns}:tenant"
    apply(cluster, grant("db", ns, "vault+kv2://secret/e2e/db#password"))

    # The gap: RBAC alone lets the tenant forge a live grant.
    forged = status_patch(cluster, ns, "db", tenant)
    assert forged.returncode == 0, forged.stderr
    assert get(cluster, "sgr", "db", ns)["status"] == FORGED["status"]
    cluster.kubectl(
        "patch", "sgr", "db", "-n", ns, "--subresource=status", "--type=json",
        "-p", '[{"op": "remove", "path": "/status"}]',
    )  # fmt: skip

    enforce_policies()
    refusal = status_patch(cluster, ns, "db", tenant)
    assert refusal.returncode != 0
    assert (
        f"{STATUS_POLICY}: only the operator ({OPERATOR_USER}) writes the status of a"
        f" SecretGrantRequest, not {tenant}"
    ) in refusal.stderr, refusal.stderr
    # Cluster administrators too (the documented way around it: delete the binding).
    admin = status_patch(cluster, ns, "db", None)
    assert admin.returncode != 0 and f"{STATUS_POLICY}:" in admin.stderr, admin.stderr
    assert "status" not in get(cluster, "sgr", "db", ns)

    # Status sent with the grant itself is dropped (the status subresource), not refused.
    body = {**FORGED, "metadata": {"labels": {"team": "a"}}}
    labelled = cluster.kubectl(
        "patch", "sgr", "db", "-n", ns, "--type=merge", "-p", json.dumps(body), f"--as={tenant}"
    )
    assert labelled.returncode == 0
    obj = get(cluster, "sgr", "db", ns)
    assert obj["metadata"]["labels"] == {"team": "a"} and "status" not in obj

    operator = status_patch(cluster, ns, "db", OPERATOR_USER)
    assert operator.returncode == 0, operator.stderr
    assert get(cluster, "sgr", "db", ns)["status"] == FORGED["status"]


async def test_the_operator_writes_only_delivery_secrets(
    cluster: Cluster,
    crds: None,
    namespace: str,
    enforce_policies: Callable[[], None],
    as_operator: KubeClient,
) -> None:
    ns = namespace
    apply(cluster, grant("db", ns, "vault+kv2://secret/e2e/db#password"))
    uid = get(cluster, "sgr", "db", ns)["metadata"]["uid"]
    cluster.kubectl("create", "secret", "generic", "app-config", "-n", ns, "--from-literal=k=v")
    # Named like a delivery Secret, but an ordinary one.
    cluster.kubectl("create", "secret", "generic", "sg-lookalike", "-n", ns, "--from-literal=k=v")
    enforce_policies()

    def secret(**changes: Any) -> dict[str, Any]:
        body = delivery_secret(
            grant_name="db",
            grant_uid=uid,
            service_account="app",
            values={"password": "v1"},
            expires_at=None,
        )
        body["metadata"].update(changes.pop("metadata", {}))
        return {**body, **changes}

    # What the operator's code writes: create, replace (upsert again), blank.
    name = delivery_secret_name("db")
    await as_operator.upsert_secret(ns, secret())
    await as_operator.upsert_secret(ns, secret(data={"password": "djI="}))
    assert await as_operator.blank_secret(ns, name, {"secretgrants.io/state": "revoked"})
    assert "data" not in get(cluster, "secret", name, ns)

    opaque = await refused(
        as_operator.upsert_secret(ns, secret(type="Opaque", metadata={"name": "sg-opaque"}))
    )
    assert "writes only delivery Secrets (type secretgrants.io/grant, named sg-*)" in opaque
    misnamed = await refused(as_operator.upsert_secret(ns, secret(metadata={"name": "db-creds"})))
    assert "not db-creds" in misnamed
    for other in ("app-config", "sg-lookalike"):
        message = await refused(as_operator.blank_secret(ns, other, {"x": "y"}))
        assert f"changes only delivery Secrets, and {other} is not one" in message
        assert get(cluster, "secret", other, ns)["data"] == {"k": "dg=="}


WORKLOADS = {
    "Deployment": "deployment",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
}


def workload(kind: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"team": "a"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
async def test_the_operator_may_restart_a_workload(
    cluster: Cluster,
    namespace: str,
    enforce_policies: Callable[[], None],
    as_operator: KubeClient,
    kind: str,
) -> None:
    """The rollout restart the operator sends after a rotation passes, and passes again."""
    ns = namespace
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(workload(kind, "web")))
    enforce_policies()
    now = dt.datetime.now(dt.UTC)
    for at in (now, now + dt.timedelta(minutes=5)):
        assert await as_operator.patch_workload(ns, kind, "web", restart_patch(at))
        template = get(cluster, WORKLOADS[kind], "web", ns)["spec"]["template"]
        stamp = restart_patch(at)["spec"]["template"]["metadata"]["annotations"]
        assert template["metadata"]["annotations"] == {"team": "a", **stamp}


async def test_the_operator_may_change_nothing_else_in_a_workload(
    cluster: Cluster,
    namespace: str,
    enforce_policies: Callable[[], None],
    as_operator: KubeClient,
) -> None:
    ns = namespace
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(workload("Deployment", "web")))
    before = get(cluster, "deployment", "web", ns)
    # Had its RBAC been widened to create workloads, the policy would still refuse it.
    cluster.kubectl(
        "create", "role", "create-deployments", "-n", ns,
        "--verb=create", "--resource=deployments.apps",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "operator-creates", "-n", ns, "--role=create-deployments",
        f"--serviceaccount={OPERATOR_NS}:{OPERATOR_SA}",
    )  # fmt: skip
    enforce_policies()

    def pod(**spec: Any) -> dict[str, Any]:
        return {"spec": {"template": {"spec": spec}}}

    def pod_meta(**meta: Any) -> dict[str, Any]:
        return {"spec": {"template": {"metadata": meta}}}

    restart_template = restart_patch(dt.datetime.now(dt.UTC))["spec"]["template"]
    spec = "may not change a workload's spec or pod spec"
    pod_template = f"may change only the annotation {ANNOTATION_RESTARTED_AT}"
    workload_meta = "may not change a workload's labels, annotations, owners or finalizers"
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "0" * 8}
    attempts: list[tuple[str, dict[str, Any], str]] = [
        ("image", pod(containers=[{"name": "app", "image": "registry.invalid/evil:1"}]), spec),
        ("serviceAccountName", pod(serviceAccountName="admin"), spec),
        ("replicas", {"spec": {"replicas": 0}}, spec),
        ("another pod annotation", pod_meta(annotations={"team": "b"}), pod_template),
        ("a pod label", pod_meta(labels={"app": "web", "tier": "x"}), pod_template),
        ("a workload label", {"metadata": {"labels": {"tier": "x"}}}, workload_meta),
        ("an owner", {"metadata": {"ownerReferences": [owner]}}, workload_meta),
        ("the restart and hostNetwork", {"spec": {"template": {**restart_template, "spec": {"hostNetwork": True}}}}, spec),
    ]  # fmt: skip
    for what, body, expected in attempts:
        message = await refused(as_operator.patch_workload(ns, "Deployment", "web", body))
        assert expected in message, (what, message)
    after = get(cluster, "deployment", "web", ns)
    assert after["spec"] == before["spec"] and after["metadata"]["labels"] == {"app": "web"}

    created = cluster.kubectl(
        "create", "deployment", "other", "-n", ns, "--image=registry.invalid/app:1",
        f"--as={OPERATOR_USER}", check=False,
    )  # fmt: skip
    assert created.returncode != 0
    assert f"{WRITES_POLICY}: the operator never creates workloads" in created.stderr


async def test_the_operator_writes_only_its_own_webhook_configurations(
    cluster: Cluster,
    namespace: str,
    enforce_policies: Callable[[], None],
    as_operator: KubeClient,
) -> None:
    """RBAC cannot narrow ``create`` by name; the policy narrows the operator's webhook
    configurations to its own name (here the test's), with webhooks on pods only.

    The apiserver (1.36) runs no ValidatingAdmissionPolicy on MutatingAdmissionPolicies
    (nor on ValidatingAdmissionPolicies and bindings): a policy of any name is created.
    """
    ns = namespace
    own = webhook_config_name(ns)
    probe = f"{ns}-probe"
    enforce_policies()
    ca = new_ca("probe").cert_pem
    # What the operator applies at start (never called: url port 1, this namespace only).
    bodies = configurations(
        own,
        ca,
        url="https://127.0.0.1:1",
        service="unused",
        operator_namespace=OPERATOR_NS,
        namespaces=[ns],
    )
    try:
        for body in bodies:
            wider = json.loads(json.dumps(body).replace('["pods"]', '["pods", "secrets"]'))
            assert wider != body
            message = await refused(as_operator.apply_webhook_configuration(wider))
            assert "the operator's webhooks see pods only" in message
            await as_operator.apply_webhook_configuration(body)
            other = {**body, "metadata": {**body["metadata"], "name": probe}}
            message = await refused(as_operator.apply_webhook_configuration(other))
            assert f"writes only its own webhook configurations ([{own}]), not {probe}" in message
        # No admission policy stops this create: only RBAC (and the chart's default, which
        # gives the operator none).
        policy = finalizer_policy(probe)
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] = ["configmaps"]
        policy["spec"]["matchConstraints"]["resourceRules"][0]["apiGroups"] = [""]
        assert await as_operator.apply_cluster_object("mutatingadmissionpolicies", policy)
    finally:
        for kind in (
            "mutatingwebhookconfiguration",
            "validatingwebhookconfiguration",
            "mutatingadmissionpolicy",
        ):
            for name in (own, probe, f"{probe}-finalizer"):
                cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
