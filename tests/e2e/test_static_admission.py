"""The chart's installed admission configuration: the operator without admissionregistration rights.

What goes in: ``helm template`` of the chart (``webhook.manageConfiguration`` false, its
default, and true), compared with what the operator's own builders make for the settings
the chart gives it (``webhook_config.configurations_for``, ``finalizer_policy``); then the
rendered objects applied to the real apiserver and the operator run with only the chart's
RBAC, ``SECRETGRANTS_WEBHOOK_MANAGE=false`` and the chart's certificate mounted.
What is asserted: the chart installs the webhooks the operator would keep, serves them
with its own certificate (a pod asking for a grant is admitted with the volume, a direct
mount refused), and its operator cannot create admission configuration; with
manageConfiguration true the chart renders what it rendered before.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from secretgrants.devenv import free_port
from secretgrants.finalizer_policy import binding as finalizer_binding
from secretgrants.finalizer_policy import policy as finalizer_policy
from secretgrants.settings import Settings
from secretgrants.webhook_config import configurations_for
from tests.conftest import SECRET_VALUE, Cluster, OperatorProcess
from tests.e2e.conftest import RBAC_KINDS, base_objects
from tests.e2e.helm import kinds, one, rendered
from tests.e2e.kube import apply, eventually, get, grant, kubeconfig_for, tenant

ADMISSION_GROUP = "admissionregistration.k8s.io"
INSTALLED = {
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
}
TLS_SECRET = "secretgrants-webhook-tls"


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (operator,) = spec["containers"]
    return operator  # type: ignore[no-any-return]


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


def admission_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = one(docs, "ClusterRole", "secretgrants-operator")["rules"]
    return [r for r in rules if {ADMISSION_GROUP, "*"} & set(r["apiGroups"])]


@pytest.fixture
def operator_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """The operator's settings from a rendered Deployment's environment (its namespace is
    the pod's, given by the downward API: the release's)."""

    def load(docs: list[dict[str, Any]], namespace: str) -> Settings:
        for name in [n for n in os.environ if n.startswith("SECRETGRANTS_")]:
            monkeypatch.delenv(name)
        for name, value in env(docs).items():
            if name.startswith("SECRETGRANTS_WEBHOOK_") or name == "SECRETGRANTS_NAMESPACE":
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("SECRETGRANTS_OPERATOR_NAMESPACE", namespace)
        return Settings()

    return load


def test_the_chart_installs_the_webhooks_the_operator_would_keep(
    operator_settings: Callable[..., Settings],
) -> None:
    docs = rendered("webhook.failurePolicy=Ignore", "webhook.timeoutSeconds=7", namespace="ops")
    assert INSTALLED <= kinds(docs)
    cfg = operator_settings(docs, "ops")
    assert (cfg.webhook_manage_config, cfg.webhook_failure_policy) == (False, "Ignore")
    secret = one(docs, "Secret", TLS_SECRET)
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    # What the operator would apply with these settings and this CA, field for field.
    for expected in configurations_for(cfg, ca_pem):
        installed = one(docs, expected["kind"], cfg.webhook_config_name)
        assert installed["apiVersion"] == expected["apiVersion"]
        assert installed["webhooks"] == expected["webhooks"]
    policy = one(docs, "MutatingAdmissionPolicy")
    assert (
        policy["metadata"]["name"] == finalizer_policy(cfg.webhook_config_name)["metadata"]["name"]
    )
    assert policy["spec"] == finalizer_policy(cfg.webhook_config_name)["spec"]
    bound = one(docs, "MutatingAdmissionPolicyBinding")
    assert bound["spec"] == finalizer_binding(cfg.webhook_config_name)["spec"]
    assert admission_rules(docs) == []

    # The certificate: for the webhook Service, signed by the CA in the caBundle, mounted
    # where the operator reads it.
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    host = f"{cfg.webhook_service}.ops.svc"
    assert names.get_values_for_type(x509.DNSName) == [host, f"{host}.cluster.local"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "webhook-tls")
    assert str(cfg.webhook_cert_dir) == mount["mountPath"] and mount["readOnly"] is True
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == TLS_SECRET


def test_with_manage_configuration_the_operator_keeps_them_as_before(cluster: Cluster) -> None:
    docs = rendered("webhook.manageConfiguration=true", namespace="ops")
    assert not (INSTALLED | {"Secret", "Certificate"}) & kinds(docs)
    assert env(docs)["SECRETGRANTS_WEBHOOK_MANAGE"] == "true"
    assert "SECRETGRANTS_WEBHOOK_CERT_DIR" not in env(docs)
    base = one(base_objects(cluster, RBAC_KINDS), "ClusterRole", "secretgrants-operator")
    assert one(docs, "ClusterRole", "secretgrants-operator")["rules"] == base["rules"]
    assert admission_rules(docs)  # create, and patch of its own names


def test_the_finalizer_policy_is_left_out_where_it_is_not_served() -> None:
    """auto: Kubernetes 1.36 or newer; false: never (nor RBAC for the operator to make it)."""
    assert "MutatingAdmissionPolicy" not in kinds(rendered(kube_version="1.35.0"))
    assert "MutatingAdmissionPolicy" in kinds(
        rendered("webhook.finalizerPolicy=true", kube_version="1.35.0")
    )
    off = rendered("webhook.finalizerPolicy=false")
    assert not {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"} & kinds(off)
    assert {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds(off)
    managed = rendered("webhook.manageConfiguration=true", "webhook.finalizerPolicy=false")
    resources = {res for rule in admission_rules(managed) for res in rule["resources"]}
    assert resources == {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"}


def test_cert_manager_issues_the_certificate_and_injects_its_ca() -> None:
    docs = rendered("webhook.certManager.issuer=platform-ca", namespace="ops")
    assert "Secret" not in kinds(docs)
    certificate = one(docs, "Certificate")
    assert certificate["spec"]["secretName"] == TLS_SECRET
    assert certificate["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "Issuer"}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = one(docs, kind)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"ops/{certificate['metadata']['name']}"
        }
        assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert env(docs)["SECRETGRANTS_WEBHOOK_CERT_DIR"] == "/etc/secretgrants/tls"
    # The operator that keeps its configuration publishes cert-manager's CA itself.
    managed = rendered("webhook.certManager.issuer=platform-ca", "webhook.manageConfiguration=true")
    assert "Certificate" in kinds(managed) and not INSTALLED & kinds(managed)
    assert env(managed)["SECRETGRANTS_WEBHOOK_CERT_DIR"] == "/etc/secretgrants/tls"


def test_helm_upgrade_keeps_the_generated_certificate(cluster: Cluster, namespace: str) -> None:
    """``lookup`` finds the Secret of the release (as ``helm upgrade`` does, here through
    ``helm template --dry-run=server``); without a cluster every rendering makes a new one."""
    first = one(rendered(namespace=namespace), "Secret", TLS_SECRET)
    apply(cluster, {**first, "metadata": {**first["metadata"], "namespace": namespace}})
    again = rendered(namespace=namespace, kubeconfig=cluster.kubeconfig)
    assert one(again, "Secret", TLS_SECRET)["data"] == first["data"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        bundle = one(again, kind)["webhooks"][0]["clientConfig"]["caBundle"]
        assert bundle == first["data"]["ca.crt"]
    fresh = one(rendered(namespace=namespace), "Secret", TLS_SECRET)
    assert fresh["data"]["ca.crt"] != first["data"]["ca.crt"]


def installed_copy(docs: list[dict[str, Any]], *, pods: str, port: int) -> list[dict[str, Any]]:
    """The chart's objects as this test applies them, on a shared cluster, with the operator
    outside it on 127.0.0.1:``port``. The same except:

    - the webhook Service is an ExternalName for 127.0.0.1: the apiserver resolves the
      webhooks' ``service:`` reference to it, dials the operator there and verifies the
      certificate for ``secretgrants-webhook.<namespace>.svc``, as in a cluster; the
      webhooks' service port is the operator's (not 443);
    - the webhooks and the finalizer policy's binding also select the namespace ``pods``
      only (another condition, ANDed), so other tests' pods and grants are never sent here;
    - the ClusterRole and its binding get this test's name, so the base's (which other
      tests use) stays;
    - no Deployment (the operator runs as a process) and no ValidatingAdmissionPolicies
      (test_admission_policies covers them).
    """
    only = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [pods]}
    suffix = f"-{pods}"
    copy: list[dict[str, Any]] = []
    for doc in json.loads(json.dumps(docs)):
        kind, meta = doc["kind"], doc["metadata"]
        if kind in {"Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}:
            continue
        if kind in {"ClusterRole", "ClusterRoleBinding"}:
            meta["name"] += suffix
            if kind == "ClusterRoleBinding":
                doc["roleRef"]["name"] += suffix
        if kind in {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}:
            for webhook in doc["webhooks"]:
                webhook["clientConfig"]["service"]["port"] = port
                webhook["namespaceSelector"]["matchExpressions"].append(only)
        if kind == "MutatingAdmissionPolicyBinding":
            assert "matchResources" not in doc["spec"]
            doc["spec"]["matchResources"] = {"namespaceSelector": {"matchExpressions": [only]}}
        if kind == "Service" and meta["name"] == "secretgrants-webhook":
            doc["spec"] = {"type": "ExternalName", "externalName": "127.0.0.1"}
        copy.append(doc)
    return copy


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    """The operator's namespace (the release's), apart from the namespace of the pods."""
    name = f"sg-op-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            **spec,
        },
    }


def test_the_operator_without_admission_rights_serves_the_installed_webhooks(
    cluster: Cluster,
    namespace: str,
    release_namespace: str,
    tmp_path: Path,
    start_operator_for: Callable[..., OperatorProcess],
) -> None:
    ns, release = namespace, release_namespace
    port = free_port()
    docs = installed_copy(rendered(namespace=release), pods=ns, port=port)
    assert INSTALLED | {"Secret"} <= kinds(docs)
    cluster_scoped = [
        (d["kind"].lower(), d["metadata"]["name"])
        for d in docs
        if d["kind"] in INSTALLED | {"ClusterRole", "ClusterRoleBinding"}
    ]
    tenant_name = f"t-{uuid.uuid4().hex[:8]}"
    try:
        cluster.kubectl(
            "apply",
            "-n",
            release,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        )
        account = one(docs, "ServiceAccount")["metadata"]["name"]
        user = f"system:serviceaccount:{release}:{account}"

        def can_i(verb: str, resource: str, *args: str) -> bool:
            out = cluster.kubectl(
                "auth", "can-i", verb, resource, f"--as={user}", *args, check=False
            )
            assert out.stdout.strip() in {"yes", "no"}, out.stderr
            return out.stdout.strip() == "yes"

        assert can_i("create", "secrets", "-n", ns)  # the chart's RBAC is in place
        for verb, resource in [
            ("create", "mutatingwebhookconfigurations"),
            ("create", "validatingwebhookconfigurations"),
            ("patch", "mutatingwebhookconfigurations/secretgrants"),
            ("patch", "validatingwebhookconfigurations/secretgrants"),
            ("create", "mutatingadmissionpolicies"),
            ("create", "mutatingadmissionpolicybindings"),
            ("create", "validatingadmissionpolicies"),
        ]:
            kind, _, name = resource.partition("/")
            qualified = f"{kind}.{ADMISSION_GROUP}" + (f"/{name}" if name else "")
            assert not can_i(verb, qualified), f"the operator can {verb} {resource}"
        assert not can_i("*", "*", "-A")

        # The kubelet's part: the Secret's files in a folder.
        secret = one(docs, "Secret", TLS_SECRET)
        certs = tmp_path / "webhook-tls"
        certs.mkdir()
        for key, value in secret["data"].items():
            (certs / key).write_bytes(base64.b64decode(value))
        token = cluster.kubectl(
            "create", "token", account, "-n", release, "--duration=1h"
        ).stdout.strip()
        kubeconfig = kubeconfig_for(cluster, account, {"token": token}, tmp_path / "kubeconfig")

        apply(cluster, tenant(tenant_name, "e2e", ["vault+kv2://secret"], namespaces=[ns]))
        cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
        op = start_operator_for(
            KUBECONFIG=str(kubeconfig),
            SECRETGRANTS_OPERATOR_NAMESPACE=release,
            SECRETGRANTS_WEBHOOK_MANAGE="false",
            SECRETGRANTS_WEBHOOK_CERT_DIR=str(certs),
            SECRETGRANTS_WEBHOOK_PORT=str(port),
            SECRETGRANTS_WEBHOOK_CONFIG_NAME="secretgrants",
        )

        # The installed finalizer policy adds the finalizer as a grant is created.
        db = grant("db", ns, "vault+kv2://secret/e2e/db#password")

        def finalized_at_create() -> None:
            out = cluster.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(db)
            )
            assert "secretgrants.io/finalizer" in json.loads(out.stdout)["metadata"].get(
                "finalizers", []
            )

        eventually(finalized_at_create, timeout=30)
        apply(cluster, db)

        def granted() -> str:
            status = get(cluster, "sgr", "db", ns).get("status") or {}
            assert status.get("phase") == "Granted", status
            return str(status["delivery"]["secretName"])

        delivered = eventually(granted, timeout=30)

        asking = pod("web", serviceAccountName="app")
        asking["metadata"]["labels"] = {"secretgrants.io/inject": "true"}
        asking["metadata"]["annotations"] = {"secretgrants.io/grants": "db"}
        created = cluster.kubectl(
            "create", "-n", ns, "-f", "-", input=json.dumps(asking), check=False
        )
        assert created.returncode == 0, created.stderr
        volumes = {v["name"] for v in get(cluster, "pod", "web", ns)["spec"]["volumes"]}
        assert "sg-db" in volumes

        direct = pod("direct", volumes=[{"name": "stolen", "secret": {"secretName": delivered}}])
        refused = cluster.kubectl(
            "create", "-n", ns, "-f", "-", input=json.dumps(direct), check=False
        )
        assert refused.returncode != 0
        assert '"pods.validate.secretgrants.io" denied the request' in refused.stderr
        assert "instead of mounting it directly" in refused.stderr

        log = op.log()
        assert "is installed, not kept by the operator" in log, log[-3000:]
        # (kopf's own warnings, e.g. on its status bookkeeping, are not about this)
        complaints = ("Forbidden", " 403", "CERT_DIR", "MutatingAdmissionPolicy", "webhook config")
        for complaint in (*complaints, "admissionregistration", SECRET_VALUE):
            assert complaint not in log, (complaint, log[-3000:])
        assert not cluster.kubectl(
            "get", "mutatingwebhookconfiguration", f"sg-{ns}", "--ignore-not-found", "-o", "name"
        ).stdout.strip()
    finally:
        cluster.kubectl(
            "delete", "secrettenant", tenant_name, "--ignore-not-found", "--wait=false", check=False
        )
        for kind, name in cluster_scoped:
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
