"""The install manifests against the real apiserver, and the operator run with only its RBAC.

What goes in: ``kubectl kustomize`` of every overlay, applied with
``--dry-run=server``; then the base's namespace, ServiceAccount and RBAC
applied for real, and the operator started with a kubeconfig holding that
ServiceAccount's token. It must do its whole job (grant, delivery Secret,
webhook, pod admission, revocation) with those rights and under the base's
admission policies, and ``kubectl auth can-i`` shows they are no broader than
the code needs. The helm chart renders the same objects for its release.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretgrants.settings import Settings
from tests.conftest import REPO, SECRET_VALUE, Cluster, OperatorProcess
from tests.e2e.conftest import (
    OPERATOR_NS,
    OPERATOR_SA,
    OPERATOR_USER,
    POLICY_KINDS,
    base_objects,
)
from tests.e2e.helm import helm, one, rendered
from tests.e2e.kube import apply, eventually, get, grant, kubeconfig_for, tenant

OVERLAYS = sorted(p.parent for p in (REPO / "manifests" / "overlays").glob("*/kustomization.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_overlay_is_accepted_by_the_apiserver(
    cluster: Cluster, operator_rbac: None, overlay: Path
) -> None:
    """Server-side dry run (the namespace exists: namespaced objects need it even in a dry run)."""
    # The production overlay uses cert-manager's kinds: stand-in CRDs make them known.
    cluster.kubectl(
        "apply", "-f", str(REPO / "tests" / "e2e" / "fixtures" / "cert-manager-crds.yaml")
    )
    cluster.kubectl("wait", "--for=condition=Established", "crd/certificates.cert-manager.io")
    rendered = cluster.kubectl("kustomize", str(overlay)).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert "Deployment" in kinds and "ClusterRole" in kinds
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr


def can_i(cluster: Cluster, verb: str, resource: str, *args: str) -> bool:
    out = cluster.kubectl(
        "auth", "can-i", verb, resource, f"--as={OPERATOR_USER}", *args, check=False
    )
    answer = out.stdout.strip()
    assert answer in {"yes", "no"}, f"kubectl auth can-i {verb} {resource}: {out.stderr}"
    return answer == "yes"


def test_the_operator_account_has_what_it_needs_and_nothing_broader(
    cluster: Cluster, operator_rbac: None
) -> None:
    needed = [
        ("watch", "secretgrantrequests.secretgrants.io", "-A"),
        ("update", "secretgrantrequests.secretgrants.io", "--subresource=status", "-n", "any"),
        ("create", "secrets", "-n", "any"),
        ("patch", "secrets", "-n", "any"),
        ("get", "secrets", "-n", OPERATOR_NS),  # tenant salts only
        ("watch", "serviceaccounts", "-A"),
        ("list", "pods", "-n", "any"),
        ("watch", "pods", "-A"),  # the pod watch that confirms uses (pod_uses)
        ("create", "tokenreviews.authentication.k8s.io"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/secretgrants"),
        ("patch", "deployments.apps", "-n", "any"),
        ("create", "events", "-n", "any"),
    ]
    for verb, resource, *args in needed:
        assert can_i(cluster, verb, resource, *args), f"cannot {verb} {resource} {args}"
    refused = [
        ("get", "secrets", "-n", "any"),  # never reads workloads' Secrets
        ("list", "secrets", "-A"),
        ("watch", "secrets", "-A"),
        ("delete", "secrets", "-n", "any"),
        ("get", "pods", "-n", "any"),
        ("create", "pods", "-n", "any"),
        ("delete", "namespaces"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "serviceaccounts", "--subresource=token", "-n", "any"),
        ("update", "secretgrantrequests.secretgrants.io", "-n", "any"),  # spec is the user's
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/other"),
        ("delete", "secretgrantrequests.secretgrants.io", "-n", "any"),
        ("*", "*", "-A"),
    ]
    for verb, resource, *args in refused:
        assert not can_i(cluster, verb, resource, *args), f"can {verb} {resource} {args}"


EXEC_API = "client.authentication.k8s.io/v1"


@pytest.fixture(params=["token", "exec"])
def operator_kubeconfig(
    request: pytest.FixtureRequest, cluster: Cluster, operator_rbac: None, tmp_path: Path
) -> Path:
    """A kubeconfig user with the ServiceAccount's token, inline or from an ``exec`` plugin
    (the operator then logs in through the ``kubernetes`` package: see runner.py)."""
    token = cluster.kubectl(
        "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=1h"
    ).stdout.strip()
    user: dict[str, Any] = {"token": token}
    if request.param == "exec":
        credential = {"apiVersion": EXEC_API, "kind": "ExecCredential", "status": {"token": token}}
        plugin = tmp_path / "credential.json"
        plugin.write_text(json.dumps(credential))
        user = {
            "exec": {
                "apiVersion": EXEC_API,
                "command": sys.executable,
                "args": ["-c", f"print(open({str(plugin)!r}).read())"],
                "interactiveMode": "Never",
            }
        }
    return kubeconfig_for(cluster, OPERATOR_SA, user, tmp_path / "operator-kubeconfig")


def test_the_operator_does_its_job_with_only_its_rbac(
    cluster: Cluster,
    namespace: str,
    operator_kubeconfig: Path,
    enforce_policies: Callable[[], None],
    start_operator_for: Callable[..., OperatorProcess],
) -> None:
    """... and under the admission policies that bound what it writes (status, Secrets)."""
    ns = namespace
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[ns]))
    cluster.kubectl("create", "serviceaccount", "app", "-n", ns)
    enforce_policies()
    try:
        op = start_operator_for(KUBECONFIG=str(operator_kubeconfig))
        apply(cluster, grant("db", ns, "vault+kv2://secret/e2e/db#password"))

        def granted() -> dict[str, Any]:
            obj = get(cluster, "sgr", "db", ns)
            assert (obj.get("status") or {}).get("phase") == "Granted", obj.get("status")
            return obj

        obj = eventually(granted, timeout=30)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "labels": {"secretgrants.io/inject": "true"},
                "annotations": {"secretgrants.io/grants": "db"},
            },
            "spec": {
                "serviceAccountName": "app",
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            },
        }
        created = cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod), check=False)
        assert created.returncode == 0, created.stderr
        volumes = {v["name"] for v in get(cluster, "pod", "web", ns)["spec"]["volumes"]}
        assert "sg-db" in volumes
        assert obj["status"]["delivery"]["secretName"]

        def watching_pods() -> None:  # with watch on pods: see pod_uses
            assert "watching pods with the label" in op.log(), op.log()[-3000:]

        eventually(watching_pods, timeout=30)
        log = op.log()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]
        assert SECRET_VALUE not in log
        plugin_login = "runs an 'exec' credential plugin: logging in through the kubernetes"
        user = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]
        assert (plugin_login in log) == ("exec" in user), log[-3000:]

        # A deleted grant is blanked first (a Secret patch), then let go (its finalizer).
        cluster.kubectl("delete", "sgr", "db", "-n", ns, "--wait=false")

        def gone() -> None:
            found = cluster.kubectl(
                "get", "sgr", "db", "-n", ns, "--ignore-not-found", "-o", "name"
            )
            assert not found.stdout.strip(), "the grant is still there"

        eventually(gone, timeout=30)
        log = op.log()
        assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    finally:
        cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def test_helm_chart_lints_renders_and_is_accepted(cluster: Cluster, operator_rbac: None) -> None:
    chart = str(REPO / "charts" / "secretgrants")
    lint = helm("lint", chart, "--kube-version", "1.36.0")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    template = helm(
        "template",
        "sg",
        chart,
        "-n",
        OPERATOR_NS,
        "--kube-version",
        "1.36.0",
        "--set",
        "provider.vault.url=https://vault.vault.svc:8200",
        "--set",
        "tenancy.tenantId=platform",
        "--set",
        "tenancy.allowedMounts={vault+kv2://secret}",
        "--set",
        "webhook.failurePolicy=Ignore",
    )
    assert template.returncode == 0, template.stderr
    docs = [d for d in yaml.safe_load_all(template.stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["VAULT_URL"] == "https://vault.vault.svc:8200"
    assert env["TENANT_ALLOWED_MOUNTS"] == "vault+kv2://secret"
    assert env["SECRETGRANTS_WEBHOOK_FAILURE_POLICY"] == "Ignore"
    applied = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        OPERATOR_NS,
        "-f",
        "-",
        input=template.stdout,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    for crd in ("secretgrantrequests.secretgrants.io.yaml", "secrettenants.secretgrants.io.yaml"):
        chart_crd = REPO / "charts" / "secretgrants" / "crds" / crd
        assert chart_crd.read_text() == (REPO / "crds" / crd).read_text(), f"{crd}: run make crds"


def _rendered_pod(*values: str) -> dict[str, Any]:
    """The operator Deployment's pod spec that ``helm template`` renders with ``values``."""
    deployment = one(rendered(*values), "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_helm_chart_renders_the_base_admission_policies_for_its_release(
    cluster: Cluster,
) -> None:
    """The chart's policies are the base's, naming the operator's ServiceAccount in the
    release's namespace; in both, that is the ServiceAccount the operator runs as. The base's
    operator keeps its webhook configurations, as the chart's does with
    webhook.manageConfiguration (by default the chart installs them: see
    test_static_admission)."""
    chart = rendered("webhook.manageConfiguration=true", namespace="ops")
    base = base_objects(cluster, POLICY_KINDS | {"ServiceAccount", "Deployment"})
    for docs, namespace in ((base, OPERATOR_NS), (chart, "ops")):
        account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
        user = f"system:serviceaccount:{namespace}:{account}"
        policies = {
            d["metadata"]["name"]: d["spec"]
            for d in docs
            if d["kind"] == "ValidatingAdmissionPolicy"
        }
        status = policies["secretgrants-grant-status"]
        writes = policies["secretgrants-operator-writes"]
        assert status["variables"][0] == {"name": "operator", "expression": f"'{user}'"}
        assert writes["matchConditions"][0]["expression"] == (
            f"request.userInfo.username == '{user}'"
        )
    chart_user = f"system:serviceaccount:ops:{OPERATOR_SA}"

    def specs(docs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            f"{d['kind']}/{d['metadata']['name']}": d["spec"]
            for d in docs
            if d["kind"] in POLICY_KINDS
        }

    expected = json.loads(json.dumps(specs(base)).replace(OPERATOR_USER, chart_user))
    assert specs(chart) == expected


def test_helm_kafka_tls_and_sasl_password_from_a_secret() -> None:
    """The Kafka sink's TLS files come from a mounted Secret, the SASL password by secretKeyRef."""
    pod = _rendered_pod(
        "audit.sinks={stdout,kafka}",
        "audit.kafka.bootstrap=kafka.kafka.svc:9093",
        "audit.kafka.securityProtocol=SASL_SSL",
        "audit.kafka.tls.secret=kafka-ca",
        "audit.kafka.sasl.mechanism=SCRAM-SHA-512",
        "audit.kafka.sasl.username=audit",
        "audit.kafka.sasl.passwordSecret=kafka-audit",
    )
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SECRETGRANTS_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["SECRETGRANTS_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert env["SECRETGRANTS_KAFKA_SASL_USERNAME"]["value"] == "audit"
    assert env["SECRETGRANTS_KAFKA_SASL_PASSWORD"] == {
        "name": "SECRETGRANTS_KAFKA_SASL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kafka-audit", "key": "password"}},
    }
    ca = env["SECRETGRANTS_KAFKA_CA_FILE"]["value"]
    assert "SECRETGRANTS_KAFKA_CERT_FILE" not in env  # no client certificate asked for
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-tls")
    assert ca == f"{mount['mountPath']}/ca.crt" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "kafka-tls")
    assert volume["secret"]["secretName"] == "kafka-ca"


def test_helm_vault_ca_from_a_secret() -> None:
    """A private CA for Vault comes from a mounted Secret and is named by VAULT_CACERT."""
    pod = _rendered_pod(
        "provider.vault.url=https://vault.vault.svc:8200", "provider.vault.caSecret=vault-ca"
    )
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "vault-tls")
    assert env["VAULT_CACERT"] == f"{mount['mountPath']}/ca.crt" and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "vault-tls")
    assert volume["secret"] == {
        "secretName": "vault-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_helm_secrets_api_public_urls_reach_the_operator_settings() -> None:
    """The URLs a DPoP proof's htu may name are a list value, read back by the operator as
    the list it was given; unset, the variable is absent (the certificate's names count)."""
    urls = ["https://api.example.com", "https://api.example.com:8443/sg"]

    def env(*values: str) -> dict[str, str | None]:
        pod = _rendered_pod(*values)
        return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}

    assert "SECRETGRANTS_API_PUBLIC_URLS" not in env()
    rendered_urls = env(f"secretsApi.publicURLs={{{','.join(urls)}}}")[
        "SECRETGRANTS_API_PUBLIC_URLS"
    ]
    assert Settings(SECRETGRANTS_API_PUBLIC_URLS=rendered_urls).api_public_urls == urls
