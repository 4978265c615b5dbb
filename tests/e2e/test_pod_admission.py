"""The grant lifecycle at the point of use: the pod admission webhook, uses, revocation, renewal.

What goes in: a namespace with a tenant, ServiceAccounts ``app`` and
``other``, the operator (built-in PDP, real Vault) serving its webhook on
127.0.0.1 and registering it with the real apiserver, and pods that ask for
grants. There is no kubelet, so pods stay Pending: admission, the injected
volumes, the Secrets and the grant status are what is checked.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import pytest

from secretgrants.devenv import VaultDevServer
from tests.conftest import SECRET_VALUE, Cluster, OperatorProcess
from tests.e2e.kube import apply, condition, eventually, get, grant, tenant

URI = "vault+kv2://secret/e2e/db#password"


@pytest.fixture
def core(cluster: Cluster) -> Any:
    import kubernetes

    api = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
    yield kubernetes.client.CoreV1Api(api)
    api.close()


def pod(
    name: str,
    *,
    sa: str = "app",
    grants: str | None = "db",
    inject: bool = True,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {}, "annotations": {}}
    if inject:
        meta["labels"]["secretgrants.io/inject"] = "true"
    if grants is not None:
        meta["annotations"]["secretgrants.io/grants"] = grants
    spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
    }
    if volumes:
        spec["volumes"] = volumes
        spec["containers"][0]["volumeMounts"] = [
            {"name": v["name"], "mountPath": f"/mnt/{v['name']}"} for v in volumes
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def create_pod(cluster: Cluster, ns: str, body: dict[str, Any], *args: str) -> tuple[bool, str]:
    import json

    proc = cluster.kubectl(
        "create", "-n", ns, "-f", "-", *args, input=json.dumps(body), check=False
    )
    return proc.returncode == 0, proc.stderr


def wait_phase(
    cluster: Cluster, name: str, ns: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        obj = get(cluster, "sgr", name, ns)
        assert (obj.get("status") or {}).get("phase") == phase, obj.get("status")
        return obj

    return eventually(check, timeout=timeout)


def add_ephemeral(core: Any, ns: str, name: str, **container: Any) -> str | None:
    """Add an ephemeral container to pod ``name`` (what ``kubectl debug`` does): None when
    admitted, else the refusal's message."""
    from kubernetes.client.exceptions import ApiException

    body = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, ns))
    added = {"name": f"dbg-{uuid.uuid4().hex[:6]}", "image": "registry.invalid/dbg:1"}
    body["spec"].setdefault("ephemeralContainers", []).append({**added, **container})
    try:
        core.replace_namespaced_pod_ephemeralcontainers(name, ns, body)
    except ApiException as err:
        assert err.status == 403, err.body
        return str(json.loads(err.body)["message"])
    return None


def debugged(obj: dict[str, Any]) -> list[str]:
    """The names of a pod's ephemeral containers, in the order they were added."""
    return [c["name"] for c in obj["spec"].get("ephemeralContainers") or []]


def secret_values(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    obj = get(cluster, "secret", name, ns)
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def granted(
    cluster: Cluster, ns: str, name: str = "db", uri: str = URI, **spec: Any
) -> dict[str, Any]:
    apply(cluster, grant(name, ns, uri, **spec))
    return wait_phase(cluster, name, ns, "Granted")


def test_pod_admitted_with_its_volume_and_the_use_counted(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    obj = granted(cluster, ns, maxUses=3)
    secret = obj["status"]["delivery"]["secretName"]
    ok, err = create_pod(cluster, ns, pod("web"))
    assert ok, err
    created = get(cluster, "pod", "web", ns)
    volume = next(v for v in created["spec"]["volumes"] if v["name"] == "sg-db")
    assert volume["projected"]["sources"][0]["secret"]["name"] == secret
    assert volume["projected"]["defaultMode"] == 0o400
    mount = next(
        m for m in created["spec"]["containers"][0]["volumeMounts"] if m["name"] == "sg-db"
    )
    assert mount == {"name": "sg-db", "mountPath": "/var/run/secretgrants/db", "readOnly": True}
    assert created["metadata"]["annotations"]["secretgrants.io/reservations"].startswith("db=")
    assert secret_values(cluster, ns, secret) == {"password": SECRET_VALUE}

    def counted() -> dict[str, Any]:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["usesConsumed"] == 1 and st["usesRemaining"] == 2
        assert not st.get("reservations")  # confirmed: the pod exists
        return st

    eventually(counted, timeout=20)
    # A dry run admits and counts nothing.
    ok, err = create_pod(cluster, ns, pod("dry"), "--dry-run=server")
    assert ok, err
    assert get(cluster, "sgr", "db", ns)["status"]["usesConsumed"] == 1
    assert SECRET_VALUE not in operator.log()


def test_denials_say_why(cluster: Cluster, ready_namespace: str, operator: OperatorProcess) -> None:
    ns = ready_namespace
    obj = granted(cluster, ns)
    secret = obj["status"]["delivery"]["secretName"]

    ok, err = create_pod(cluster, ns, pod("wrong-sa", sa="other"))
    assert not ok and "bound to ServiceAccount 'app'" in err and "'other'" in err

    ok, err = create_pod(cluster, ns, pod("missing", grants="nope"))
    assert not ok and "SecretGrantRequest 'nope' does not exist" in err

    ok, err = create_pod(cluster, ns, pod("no-annotation", grants=None))
    assert not ok and "secretgrants.io/grants" in err

    direct = [{"name": "stolen", "secret": {"secretName": secret}}]
    ok, err = create_pod(
        cluster, ns, pod("direct-other", sa="other", grants=None, inject=False, volumes=direct)
    )
    assert not ok and "bound to another ServiceAccount" in err

    ok, err = create_pod(cluster, ns, pod("direct-same", grants=None, inject=False, volumes=direct))
    assert not ok and "instead of mounting it directly" in err

    # An ordinary pod is untouched by both webhooks.
    ok, err = create_pod(cluster, ns, pod("plain", grants=None, inject=False))
    assert ok, err
    assert "secretgrants.io/reservations" not in (
        get(cluster, "pod", "plain", ns)["metadata"].get("annotations") or {}
    )


def reservation_of(cluster: Cluster, ns: str, name: str) -> str:
    annotations = get(cluster, "pod", name, ns)["metadata"]["annotations"]
    return str(annotations["secretgrants.io/reservations"])


def test_a_reservations_annotation_of_the_pods_own_making_mounts_nothing(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    """A pod without the inject label meets no mutating webhook: its author writes the
    reservations annotation and mounts the delivery Secret of an exhausted grant, which
    still holds its value (it is not blanked: admitted pods keep reading it)."""
    ns = ready_namespace
    secret = granted(cluster, ns, maxUses=1)["status"]["delivery"]["secretName"]
    ok, err = create_pod(cluster, ns, pod("web"))
    assert ok, err
    rid = reservation_of(cluster, ns, "web")

    def confirmed() -> None:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["phase"] == "Exhausted" and st["usesConsumed"] == 1, st
        assert not st.get("reservations"), st

    eventually(confirmed, timeout=20)
    assert secret_values(cluster, ns, secret) == {"password": SECRET_VALUE}
    direct = [{"name": "stolen", "secret": {"secretName": secret}}]
    for forged in ("db=made-up", rid):  # a made-up id, and the admitted pod's own
        body = pod(f"forged-{len(forged)}", grants=None, inject=False, volumes=direct)
        body["metadata"]["annotations"]["secretgrants.io/reservations"] = forged
        ok, err = create_pod(cluster, ns, body)
        assert not ok and "(DirectMountNotAllowed)" in err, err
        assert "instead of mounting it directly" in err, err
        body["metadata"]["labels"]["secretgrants.io/inject"] = "true"  # now it meets both
        body["metadata"]["annotations"]["secretgrants.io/grants"] = "db"
        ok, err = create_pod(cluster, ns, body)
        assert not ok and "no uses left" in err, err
    st = get(cluster, "sgr", "db", ns)["status"]
    assert (st["usesConsumed"], st["usesRemaining"], st["phase"]) == (1, 0, "Exhausted")
    denials = [e for e in operator.audit_events() if e.get("type") == "pod_denied"]
    assert [e.get("reason") for e in denials if str(e.get("pod")).startswith("forged")] == [
        "DirectMountNotAllowed",
        "UsesExhausted",
    ] * 2


def test_a_use_stays_counted_when_the_pod_loses_its_label_or_annotation(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, core: Any
) -> None:
    """Right after creation, before the operator has confirmed the use: taking the inject
    label off does not give the use back, and the reservations annotation cannot be
    changed or removed (the operator settles uses by it; SECRETGRANTS_RESERVATION_WINDOW
    is 5 s here)."""
    ns = ready_namespace
    granted(cluster, ns, maxUses=3)
    core.create_namespaced_pod(ns, pod("web"))
    core.patch_namespaced_pod("web", ns, {"metadata": {"labels": {"secretgrants.io/inject": None}}})
    assert "secretgrants.io/inject" not in (
        get(cluster, "pod", "web", ns)["metadata"].get("labels") or {}
    )
    for change in ("secretgrants.io/reservations-", "secretgrants.io/reservations=db=other"):
        edited = cluster.kubectl(
            "annotate", "--overwrite", "pod", "web", "-n", ns, change, check=False
        )
        assert edited.returncode != 0, edited.stdout
        assert "cannot be changed or removed afterwards" in edited.stderr, edited.stderr
        assert "pods-reservations.validate.secretgrants.io" in edited.stderr, edited.stderr
    cluster.kubectl("annotate", "pod", "web", "-n", ns, "team=payments")  # any other: as usual

    def settled() -> dict[str, Any]:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert not st.get("reservations"), st
        return st  # type: ignore[no-any-return]

    st = eventually(settled, timeout=30)
    assert (st["usesConsumed"], st["usesRemaining"]) == (1, 2), st
    time.sleep(6)  # past the window: a use no pod carried would have been given back by now
    st = get(cluster, "sgr", "db", ns)["status"]
    assert (st["usesConsumed"], st["usesRemaining"]) == (1, 2), st
    assert not [e for e in operator.audit_events() if e.get("type") == "use_released"]


def test_thirty_concurrent_pods_against_five_uses_admit_exactly_five(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, core: Any
) -> None:
    ns = ready_namespace
    granted(cluster, ns, maxUses=5)

    def create(i: int) -> bool:
        try:
            core.create_namespaced_pod(ns, pod(f"p{i}"))
            return True
        except Exception as err:
            assert "no uses left" in str(err) or "too many pods at once" in str(err), str(err)
            return False

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(create, range(30)))
    assert sum(results) == 5
    st = get(cluster, "sgr", "db", ns)["status"]
    assert st["usesConsumed"] == 5 and st["usesRemaining"] == 0
    assert st["phase"] == "Exhausted"
    assert condition(get(cluster, "sgr", "db", ns), "Ready")["reason"] == "Exhausted"  # type: ignore[index]
    ok, err = create_pod(cluster, ns, pod("late"))
    assert not ok and "no uses left" in err


def test_a_use_counted_for_a_pod_refused_later_is_given_back(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    granted(cluster, ns, maxUses=2)
    other = granted(cluster, ns, "theirs", "vault+kv2://secret/e2e-other/db", sa="other")
    # Our mutating webhook counts a use of "db"; then the validating webhook refuses the pod
    # because it also mounts another ServiceAccount's delivery Secret.
    stolen = [
        {"name": "stolen", "secret": {"secretName": other["status"]["delivery"]["secretName"]}}
    ]
    ok, err = create_pod(cluster, ns, pod("refused", volumes=stolen))
    assert not ok and "bound to another ServiceAccount" in err
    assert get(cluster, "sgr", "db", ns)["status"]["usesConsumed"] == 1

    def released() -> None:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["usesConsumed"] == 0 and st["usesRemaining"] == 2 and not st.get("reservations")

    eventually(released, timeout=30)


def test_a_pending_reservation_copied_onto_pods_that_name_no_grant_mounts_nothing(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    """A pod refused after our mutating webhook leaves its use pending for the window,
    readable in the grant's status: pods that copy that id, name no grant (","), and
    mount the delivery Secret directly are refused, and nothing more is counted."""
    ns = ready_namespace
    secret = granted(cluster, ns, maxUses=3)["status"]["delivery"]["secretName"]
    other = granted(cluster, ns, "theirs", "vault+kv2://secret/e2e-other/db", sa="other")
    stolen = [
        {"name": "stolen", "secret": {"secretName": other["status"]["delivery"]["secretName"]}}
    ]
    ok, err = create_pod(cluster, ns, pod("refused", volumes=stolen))
    assert not ok and "bound to another ServiceAccount" in err
    (pending,) = get(cluster, "sgr", "db", ns)["status"]["reservations"]
    direct = [{"name": "copied", "secret": {"secretName": secret}}]
    for i in range(3):
        body = pod(f"copy-{i}", grants=",", volumes=direct)
        body["metadata"]["annotations"]["secretgrants.io/reservations"] = f"db={pending['id']}"
        ok, err = create_pod(cluster, ns, body)
        assert not ok and "(NoGrantsRequested)" in err, err
    assert get(cluster, "sgr", "db", ns)["status"]["usesConsumed"] == 1  # the refused pod's
    admitted = [e for e in operator.audit_events() if e.get("type") == "pod_admitted"]
    assert not [e for e in admitted if str(e.get("pod")).startswith("copy-")]


def test_a_pod_gone_at_once_keeps_its_use(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, core: Any
) -> None:
    """A pod force-deleted right after it was admitted, before the operator ever looked
    at the namespace's pods: the operator's pod watch saw it created, so its use stays
    counted past the window (SECRETGRANTS_RESERVATION_WINDOW is 5 s here)."""
    ns = ready_namespace
    eventually(lambda: _assert_in("watching pods with the label", operator.log()), timeout=30)
    granted(cluster, ns, maxUses=1)
    core.create_namespaced_pod(ns, pod("brief"))
    core.delete_namespaced_pod("brief", ns, grace_period_seconds=0)
    gone = cluster.kubectl("get", "pod", "brief", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
    st = get(cluster, "sgr", "db", ns)["status"]
    assert len(st["reservations"]) == 1 and st["phase"] == "Exhausted", st

    def settled() -> dict[str, Any]:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert not st.get("reservations"), st
        return st  # type: ignore[no-any-return]

    st = eventually(settled, timeout=30)
    assert (st["usesConsumed"], st["usesRemaining"], st["phase"]) == (1, 0, "Exhausted"), st
    time.sleep(6)  # past the window: a use given back would show by now
    st = get(cluster, "sgr", "db", ns)["status"]
    assert (st["usesConsumed"], st["usesRemaining"], st["phase"]) == (1, 0, "Exhausted"), st
    ok, err = create_pod(cluster, ns, pod("second"))
    assert not ok and "no uses left" in err, err
    assert not [e for e in operator.audit_events() if e.get("type") == "use_released"]


def _assert_in(part: str, text: str) -> None:
    assert part in text, part


def test_service_account_deleted_or_recreated_revokes(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    obj = granted(cluster, ns)
    secret = obj["status"]["delivery"]["secretName"]
    cluster.kubectl("delete", "serviceaccount", "app", "-n", ns)
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    revoked = wait_phase(cluster, "db", ns, "Revoked")
    assert "was deleted" in condition(revoked, "Ready")["message"]  # type: ignore[index]
    assert secret_values(cluster, ns, secret) == {}
    ok, err = create_pod(cluster, ns, pod("after"))
    assert not ok and "Revoked" in err


def test_recreated_service_account_while_the_operator_was_down_revokes_on_start(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    ns = ready_namespace
    op = start_operator_for()
    granted(cluster, ns)
    os.killpg(op.proc.pid, signal.SIGKILL)
    op.proc.wait()
    cluster.kubectl("delete", "serviceaccount", "app", "-n", ns)
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    start_operator_for()
    revoked = wait_phase(cluster, "db", ns, "Revoked")
    assert "recreated" in condition(revoked, "Ready")["message"]  # type: ignore[index]


def test_renewal_asks_again_and_delivers_the_rotated_value(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, vault: VaultDevServer
) -> None:
    ns = ready_namespace
    kv = hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2
    path = f"e2e/renew-{uuid.uuid4().hex[:6]}"
    kv.create_or_update_secret(path=path, secret={"password": "first"}, mount_point="secret")
    cluster.kubectl("create", "deployment", "web", "-n", ns, "--image=registry.invalid/web:1")
    apply(
        cluster,
        grant(
            "rot",
            ns,
            f"vault+kv2://secret/{path}#password",
            ttlSeconds=6,
            renewal={
                "enabled": True,
                "beforeExpirySeconds": 3,
                "restartWorkloads": [{"kind": "Deployment", "name": "web"}],
            },
        ),
    )
    first = wait_phase(cluster, "rot", ns, "Granted")["status"]
    secret = first["delivery"]["secretName"]
    assert secret_values(cluster, ns, secret) == {"password": "first"}
    kv.create_or_update_secret(path=path, secret={"password": "second"}, mount_point="secret")

    def renewed() -> dict[str, Any]:
        st = get(cluster, "sgr", "rot", ns)["status"]
        assert st["phase"] == "Granted" and st["decision"]["id"] != first["decision"]["id"]
        assert st["expiresAt"] > first["expiresAt"] and st["delivery"]["version"] == 2
        return st

    eventually(renewed, timeout=20)
    assert secret_values(cluster, ns, secret) == {"password": "second"}

    def restarted() -> None:  # the rollout restart follows the status write
        template = get(cluster, "deployment", "web", ns)["spec"]["template"]["metadata"]
        assert "secretgrants.io/restartedAt" in (template.get("annotations") or {})

    eventually(restarted, timeout=10)


def test_an_exhausted_grant_with_renewal_admits_the_next_pod_with_a_fresh_decision(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    first = granted(cluster, ns, maxUses=1, renewal={"enabled": True, "beforeExpirySeconds": 30})[
        "status"
    ]
    ok, err = create_pod(cluster, ns, pod("one"))
    assert ok, err
    # The only use is spent; the next pod of the bound ServiceAccount makes the webhook
    # ask the PDP again right then (the seeds: exhausted grants force a fresh check).
    ok, err = create_pod(cluster, ns, pod("two"))
    assert ok, err
    st = get(cluster, "sgr", "db", ns)["status"]
    assert st["decision"]["id"] != first["decision"]["id"]  # admitted on a fresh decision
    # A pod of another ServiceAccount never triggers a renewal: it is refused as before.
    ok, err = create_pod(cluster, ns, pod("three", sa="other"))
    assert not ok and ("bound to ServiceAccount" in err or "no uses left" in err)


def test_deleting_a_live_grant_blanks_then_removes_it(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess
) -> None:
    ns = ready_namespace
    obj = granted(cluster, ns)
    assert obj["metadata"].get("finalizers") == ["secretgrants.io/finalizer"]
    cluster.kubectl("delete", "sgr", "db", "-n", ns, "--wait=true", "--timeout=30s")
    assert "grant " + ns + "/db deleted; its delivery Secret was emptied" in operator.log()
    secret = obj["status"]["delivery"]["secretName"]

    def collected() -> None:
        got = cluster.kubectl("get", "secret", secret, "-n", ns, check=False)
        assert got.returncode != 0 and "NotFound" in got.stderr

    # The garbage collector learns new kinds (this CRD) at its discovery resync (30 s).
    eventually(collected, timeout=75)


def test_operator_killed_mid_handling_loses_no_grant_and_counts_no_use_twice(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    ns = ready_namespace
    op = start_operator_for()
    granted(cluster, ns, maxUses=5)
    for i in range(2):
        ok, err = create_pod(cluster, ns, pod(f"before-{i}"))
        assert ok, err
    for i in range(5):
        apply(cluster, grant(f"g{i}", ns, URI))
    os.killpg(op.proc.pid, signal.SIGKILL)  # some of the five are mid-handling or not seen yet
    op.proc.wait()
    op = start_operator_for()
    for i in range(5):
        wait_phase(cluster, f"g{i}", ns, "Granted")

    def settled() -> None:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["usesConsumed"] == 2 and st["usesRemaining"] == 3 and not st.get("reservations")

    eventually(settled, timeout=30)
    ok, err = create_pod(cluster, ns, pod("after"))
    assert ok, err

    def third() -> None:
        assert get(cluster, "sgr", "db", ns)["status"]["usesConsumed"] == 3

    eventually(third, timeout=10)


def test_a_tenant_that_stops_allowing_the_mount_revokes_live_grants(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    ns = namespace
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[ns]))
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    try:
        obj = granted(cluster, ns)
        apply(cluster, tenant(name, "e2e", ["vault+kv2://other"], namespaces=[ns]))
        revoked = wait_phase(cluster, "db", ns, "Revoked", timeout=20)
        message = condition(revoked, "Ready")["message"]  # type: ignore[index]
        assert "no longer allows" in message and "not allowed" in message
        assert secret_values(cluster, ns, obj["status"]["delivery"]["secretName"]) == {}
    finally:
        cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def test_a_grant_handled_before_the_bookkeeping_moved_to_the_status_is_not_decided_again(
    cluster: Cluster, ready_namespace: str, start_operator_for: Callable[..., OperatorProcess]
) -> None:
    """An operator that kept kopf's last handled spec in an annotation (before 2026-12) is
    replaced: the new one finds no record in the status, and must not decide the grant again
    (a new decision would reset its counted uses)."""
    ns = ready_namespace
    op = start_operator_for()
    first = granted(cluster, ns, maxUses=5)["status"]
    ok, err = create_pod(cluster, ns, pod("before"))
    assert ok, err

    def counted() -> None:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert st["usesConsumed"] == 1 and not st.get("reservations"), st

    eventually(counted, timeout=30)
    os.killpg(op.proc.pid, signal.SIGKILL)
    op.proc.wait()
    cluster.kubectl(
        "annotate", "sgr", "db", "-n", ns, "secretgrants.io/last-handled-configuration={}"
    )
    cluster.kubectl(
        "patch", "sgr", "db", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"kopf": None}}),
    )  # fmt: skip
    assert "kopf" not in get(cluster, "sgr", "db", ns)["status"]
    start_operator_for()

    def recorded_again() -> dict[str, Any]:
        st = get(cluster, "sgr", "db", ns)["status"]
        assert (st.get("kopf") or {}).get("last-handled-configuration"), st
        return st

    st = eventually(recorded_again, timeout=30)
    assert st["decision"]["id"] == first["decision"]["id"]
    assert (st["usesConsumed"], st["usesRemaining"]) == (1, 4)


def test_ephemeral_containers_read_only_their_pods_own_live_grants(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, core: Any
) -> None:
    """``kubectl debug`` adds containers through pods/ephemeralcontainers, after admission."""
    ns = ready_namespace
    secret = granted(cluster, ns)["status"]["delivery"]["secretName"]
    for body in (
        pod("web"),  # admitted with "db", as "app"
        pod("plain", grants=None, inject=False),  # as "app", without the grant
        pod("intruder", sa="other", grants=None, inject=False),
    ):
        ok, err = create_pod(cluster, ns, body)
        assert ok, err
    by_env = {
        "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}]
    }
    by_env_from = {"envFrom": [{"secretRef": {"name": secret}}]}

    def debug(name: str, **container: Any) -> str | None:
        return add_ephemeral(core, ns, name, **container)

    refused = debug("intruder", **by_env)
    assert refused is not None and "bound to another ServiceAccount" in refused, refused
    assert "'other'" in refused and "ephemeral container" in refused
    refused = debug("plain", **by_env_from)
    assert refused is not None and "was not admitted with" in refused, refused
    # What the pod may do anyway: no delivery Secret, its own volume, its own live grant.
    assert debug("intruder") is None
    assert debug("web", volumeMounts=[{"name": "sg-db", "mountPath": "/mnt/db"}]) is None
    assert debug("web", **by_env) is None
    assert debug("web", **by_env_from) is None
    assert len(get(cluster, "pod", "web", ns)["spec"]["ephemeralContainers"]) == 3
    admitted = [e for e in operator.audit_events() if e.get("type") == "pod_admitted"]
    assert [e["message"] for e in admitted if e.get("reason") == "EphemeralContainerAdmitted"] == [
        f"ephemeral container {n!r} uses its delivery Secret"
        for n in debugged(get(cluster, "pod", "web", ns))
    ]
    # A revoked grant (its ServiceAccount re-created) is no longer the pod's to read.
    cluster.kubectl("delete", "serviceaccount", "app", "-n", ns)
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    wait_phase(cluster, "db", ns, "Revoked")
    refused = debug("web", **by_env)
    assert refused is not None and "is Revoked, not Granted" in refused, refused
    assert debug("web") is None  # the containers added earlier are not judged again
    denials = [e for e in operator.audit_events() if e.get("type") == "pod_denied"]
    assert {(e.get("pod"), e.get("reason")) for e in denials} >= {
        ("intruder", "ServiceAccountMismatch"),
        ("plain", "EphemeralUseNotAllowed"),
        ("web", "GrantNotGranted"),
    }
    assert SECRET_VALUE not in operator.log()


def test_delivery_containers_keep_the_grant_from_the_pods_other_containers(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, core: Any
) -> None:
    """A grant delivered to container ``app`` only: no other container, ephemeral ones
    included, may mount the injected volume ``sg-db``."""
    ns = ready_namespace
    granted(cluster, ns, delivery={"containers": ["app"]})
    body = pod("two")
    sidecar = {"name": "sidecar", "image": "registry.invalid/sidecar:1"}
    body["spec"]["containers"].append(
        {**sidecar, "volumeMounts": [{"name": "sg-db", "mountPath": "/mnt/db"}]}
    )
    ok, err = create_pod(cluster, ns, body)
    assert not ok and "(ContainerNotAllowed)" in err, err
    assert "container 'sidecar' may not mount volume 'sg-db'" in err, err
    assert "SecretGrantRequest 'db'" in err and "allows only container 'app'" in err, err

    body["spec"]["containers"][1] = sidecar  # the same pod without the sidecar's mount
    ok, err = create_pod(cluster, ns, body)
    assert ok, err
    created = get(cluster, "pod", "two", ns)["spec"]["containers"]
    assert "sg-db" in [m["name"] for m in created[0]["volumeMounts"]]
    assert "sg-db" not in [m["name"] for m in created[1].get("volumeMounts") or []]

    refused = add_ephemeral(core, ns, "two", volumeMounts=[{"name": "sg-db", "mountPath": "/m"}])
    assert refused is not None and "ephemeral container 'dbg-" in refused, refused
    assert "may not mount volume 'sg-db'" in refused, refused
    assert add_ephemeral(core, ns, "two") is None  # no use of the grant: allowed
    denials = [
        (e.get("pod"), e.get("grant_name"))
        for e in operator.audit_events()
        if (e.get("type"), e.get("reason")) == ("pod_denied", "ContainerNotAllowed")
    ]
    assert denials == [("two", "db"), ("two", "db")]
