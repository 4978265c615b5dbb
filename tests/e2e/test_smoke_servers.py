"""Smoke tests: each real server the suite depends on does what the product needs of it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import hvac

from secretgrants.devenv import OPAServer, VaultDevServer
from tests.conftest import REPO, Cluster

SECRETS_AUDIENCE = "crud.secrets"


def _retry(fn, *, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_crds_are_accepted_with_status_and_printer_columns(cluster: Cluster, crds: None) -> None:
    out = json.loads(
        cluster.kubectl("get", "crd", "secretgrantrequests.secretgrants.io", "-o", "json").stdout
    )
    version = out["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Phase", "Purpose", "ServiceAccount", "Uses-Left", "Expires"]
    conds = {c["type"]: c["status"] for c in out["status"]["conditions"]}
    assert conds["Established"] == "True"
    assert conds.get("NonStructuralSchema") is None


def test_kubectl_explain_shows_field_descriptions(cluster: Cluster, crds: None) -> None:
    def explain() -> str:
        res = cluster.kubectl("explain", "sgr.spec.secretUri", check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout

    text = _retry(explain)
    assert "Canonical secret URI" in text
    tenant = _retry(lambda: cluster.kubectl("explain", "secrettenants.spec.allowedMounts").stdout)
    assert "provider-qualified" in tenant


def test_manifests_apply_with_server_side_dry_run(cluster: Cluster, crds: None) -> None:
    cluster.kubectl("create", "namespace", "secretgrants-system", check=False)
    for overlay in ("manifests/base", "manifests/overlays/dev"):
        res = cluster.kubectl("apply", "--dry-run=server", "-k", str(REPO / overlay), check=False)
        assert res.returncode == 0, f"{overlay}: {res.stderr}"
        assert "deployment.apps/secretgrants-operator" in res.stdout


def _token_review(cluster: Cluster, token: str, audiences: list[str]) -> dict:  # type: ignore[type-arg]
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }
    res = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
    return json.loads(res.stdout)["status"]  # type: ignore[no-any-return]


def test_token_for_the_secrets_audience_passes_review_only_for_it(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "app", "-n", namespace)
    token = cluster.kubectl(
        "create",
        "token",
        "app",
        "-n",
        namespace,
        f"--audience={SECRETS_AUDIENCE}",
        "--duration=10m",
    ).stdout.strip()
    good = _token_review(cluster, token, [SECRETS_AUDIENCE])
    assert good["authenticated"] is True
    assert good["user"]["username"] == f"system:serviceaccount:{namespace}:app"
    assert good["audiences"] == [SECRETS_AUDIENCE]
    bad = _token_review(cluster, token, ["some.other.audience"])
    assert not bad.get("authenticated")
    # and the token does not open the Kubernetes API itself (wrong audience there)
    plain = _token_review(cluster, token, [])
    assert not plain.get("authenticated")


def test_kv2_write_versioned_read_and_metadata_round_trip(vault: VaultDevServer) -> None:
    client = hvac.Client(url=vault.addr, token=vault.root_token)
    kv = client.secrets.kv.v2
    kv.create_or_update_secret(path="smoke/db", secret={"password": "one"}, mount_point="secret")
    kv.create_or_update_secret(path="smoke/db", secret={"password": "two"}, mount_point="secret")
    kv.update_metadata(path="smoke/db", custom_metadata={"owner": "team-a"}, mount_point="secret")
    v1 = kv.read_secret_version(
        path="smoke/db", version=1, mount_point="secret", raise_on_deleted_version=True
    )
    latest = kv.read_secret_version(
        path="smoke/db", mount_point="secret", raise_on_deleted_version=True
    )
    meta = kv.read_secret_metadata(path="smoke/db", mount_point="secret")["data"]
    assert v1["data"]["data"] == {"password": "one"}
    assert latest["data"]["data"] == {"password": "two"}
    assert latest["data"]["metadata"]["version"] == 2
    assert meta["current_version"] == 2
    assert meta["custom_metadata"] == {"owner": "team-a"}


def test_opa_answers_a_data_query_for_a_loaded_policy(opa: OPAServer) -> None:
    opa.put_policy(
        "smoke",
        'package smoke\n\nallow if input.purpose == "read"\n',
    )
    yes = httpx.post(f"{opa.addr}/v1/data/smoke/allow", json={"input": {"purpose": "read"}})
    no = httpx.post(f"{opa.addr}/v1/data/smoke/allow", json={"input": {"purpose": "write"}})
    assert yes.json() == {"result": True}
    assert no.json() == {}


def test_tools_are_the_pinned_versions(cluster: Cluster) -> None:
    pins = dict(
        line.split("=", 1)
        for line in (REPO / "hack" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    if cluster.local is None:
        return  # a given cluster runs what it runs
    with cluster.local.http() as client:
        version = client.get("/version").json()
    assert version["gitVersion"].startswith(pins["KUBERNETES_VERSION"].split("-")[0][:5])
    assert Path(REPO / "hack/tools/k8s/go.mod").read_text().count(pins["KUBERNETES_VERSION"]) == 1
