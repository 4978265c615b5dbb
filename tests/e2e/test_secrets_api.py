"""The Secrets API end to end: real apiserver TokenReview, real Vault, the built-in PDP.

What goes in: a namespace with ServiceAccounts ``app`` and ``other``, the
operator (serving the API on 127.0.0.1 over TLS with the CA it publishes in its
webhook configuration), grants with ``delivery.mode: Api``, and tokens minted by
``kubectl create token``. Every refusal is checked by its problem code.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secretgrants.client import SecretsAPIError, SecretsClient
from secretgrants.dpop import sign_proof
from secretgrants.secrets_api import openapi_document
from tests.conftest import REPO, SECRET_VALUE, Cluster, OperatorProcess, webhook_config_name
from tests.e2e.kube import apply, eventually, get, grant, tenant

URI = "vault+kv2://secret/e2e/db#password"
AUDIENCE = "crud.secrets"


@pytest.fixture
def api_namespace(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[namespace]))
    for sa in ("app", "other"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    yield namespace
    cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


@pytest.fixture
def ca_file(cluster: Cluster, api_namespace: str, operator: OperatorProcess, tmp_path: Path) -> str:
    config = get(cluster, "mutatingwebhookconfiguration", webhook_config_name(api_namespace))
    path = tmp_path / "ca.crt"
    path.write_bytes(base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))
    return str(path)


def token(cluster: Cluster, ns: str, sa: str = "app", audience: str = AUDIENCE) -> str:
    args = ["create", "token", sa, "-n", ns, "--duration=10m"]
    if audience:
        args.append(f"--audience={audience}")
    return cluster.kubectl(*args).stdout.strip()


def api_grant(cluster: Cluster, ns: str, name: str = "api", **spec: Any) -> dict[str, Any]:
    apply(cluster, grant(name, ns, URI, delivery={"mode": "Api"}, **spec))

    def granted() -> dict[str, Any]:
        obj = get(cluster, "sgr", name, ns)
        assert (obj.get("status") or {}).get("phase") == "Granted", obj.get("status")
        return obj

    return eventually(granted, timeout=30)


def problem(exc: pytest.ExceptionInfo[SecretsAPIError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def test_fresh_tokens_read_once_each_and_refusals_have_codes(
    cluster: Cluster, api_namespace: str, operator: OperatorProcess, ca_file: str
) -> None:
    ns = api_namespace
    obj = api_grant(cluster, ns, maxUses=3)
    assert obj["status"]["delivery"]["mode"] == "Api"
    assert "secretName" not in obj["status"]["delivery"]  # no Secret is written for Api grants
    base = operator.api_url
    fixed = token(cluster, ns)
    with SecretsClient(base, token=lambda: fixed, verify=ca_file, retries=0) as client:
        assert client.read(ns, "api") == {"password": SECRET_VALUE}
        with pytest.raises(SecretsAPIError) as replay:
            client.read(ns, "api")  # the same token twice
        assert problem(replay) == (403, "Replay")
    assert get(cluster, "sgr", "api", ns)["status"]["usesConsumed"] == 1

    def client_for(make: Any) -> SecretsClient:
        return SecretsClient(base, token=make, verify=ca_file, retries=0)

    cases = [
        (lambda: token(cluster, ns, "other"), (403, "ServiceAccountMismatch")),
        (lambda: token(cluster, ns, audience=""), (401, "InvalidToken")),
        (lambda: "not-a-token", (401, "InvalidToken")),
    ]
    for make, expected in cases:
        with client_for(make) as client, pytest.raises(SecretsAPIError) as err:
            client.read(ns, "api")
        assert problem(err) == expected
    with client_for(lambda: token(cluster, ns)) as client:
        with pytest.raises(SecretsAPIError) as missing:
            client.read(ns, "nope")
        assert problem(missing) == (404, "GrantNotFound")
        client.read(ns, "api")
        client.read(ns, "api")  # the third and last use
        with pytest.raises(SecretsAPIError) as exhausted:
            client.read(ns, "api")
        assert problem(exhausted) == (403, "UsesExhausted")
    anonymous = httpx.get(f"{base}/api/secrets/v1/namespaces/{ns}/grants/api", verify=tls(ca_file))
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert anonymous.json()["code"] == "Unauthenticated"
    assert SECRET_VALUE not in operator.log().replace(
        json.dumps({"password": SECRET_VALUE}), ""
    )  # the value appears in no log line
    reads = [
        e
        for e in operator.audit_events()
        if e["type"] == "grant_read" and e["grant_namespace"] == ns and e["grant_name"] == "api"
    ]
    permitted = [e for e in reads if e["effect"] == "permit"]
    assert len(permitted) == 3  # one record per counted use, naming the decision
    status = get(cluster, "sgr", "api", ns)["status"]
    for event in permitted:
        assert event["decision_id"] == status["decision"]["id"]
        assert event["resource_ref"] == status["resourceRef"] and event["tenant"] == "e2e"
        assert event["subject"] == f"system:serviceaccount:{ns}:app"
    refused = {(e["reason"], e["effect"]) for e in reads if e["effect"] != "permit"}
    assert {
        ("Replay", "deny"),
        ("ServiceAccountMismatch", "deny"),
        ("UsesExhausted", "deny"),
    } <= refused
    mismatch = next(e for e in reads if e["reason"] == "ServiceAccountMismatch")
    assert mismatch["decision_id"] == status["decision"]["id"]  # refusals name the grant too


def test_dpop_binds_the_grant_to_the_first_key(
    cluster: Cluster, api_namespace: str, operator: OperatorProcess, ca_file: str
) -> None:
    ns = api_namespace
    api_grant(cluster, ns)
    base = operator.api_url
    bound = token(cluster, ns)
    key = ec.generate_private_key(ec.SECP256R1())
    with SecretsClient(base, token=lambda: bound, dpop_key=key, verify=ca_file, retries=0) as c:
        assert c.read(ns, "api") == {"password": SECRET_VALUE}
        assert c.read(ns, "api") == {"password": SECRET_VALUE}  # a bound token may be reused
    status = get(cluster, "sgr", "api", ns)["status"]
    assert status["binding"]["jkt"] and status["usesConsumed"] == 2

    url = f"{base}/api/secrets/v1/namespaces/{ns}/grants/api"
    proof = sign_proof(key, method="GET", url=url, access_token=bound)
    headers = {"Authorization": f"DPoP {bound}", "DPoP": proof}
    assert httpx.get(url, headers=headers, verify=tls(ca_file)).status_code == 200
    replayed = httpx.get(url, headers=headers, verify=tls(ca_file))
    assert (replayed.status_code, replayed.json()["code"]) == (403, "Replay")

    other_key = ec.generate_private_key(ec.SECP256R1())
    with SecretsClient(
        base, token=lambda: bound, dpop_key=other_key, verify=ca_file, retries=0
    ) as c:
        with pytest.raises(SecretsAPIError) as err:
            c.read(ns, "api")
    assert problem(err) == (403, "SenderMismatch")
    with SecretsClient(base, token=lambda: token(cluster, ns), verify=ca_file, retries=0) as c:
        with pytest.raises(SecretsAPIError) as err:
            c.read(ns, "api")
    assert problem(err) == (403, "SenderMismatch")  # no proof once bound
    bad = httpx.get(
        url,
        headers={"Authorization": f"DPoP {bound}", "DPoP": "x.y.z"},
        verify=ssl.create_default_context(cafile=ca_file),
    )
    assert (bad.status_code, bad.json()["code"]) == (401, "InvalidDPoPProof")


def test_volume_grants_are_not_served_and_the_openapi_document_is_committed(
    cluster: Cluster, api_namespace: str, operator: OperatorProcess, ca_file: str
) -> None:
    ns = api_namespace
    apply(cluster, grant("vol", ns, URI))
    eventually(lambda: _assert_phase(cluster, ns, "vol", "Granted"), timeout=30)
    with SecretsClient(operator.api_url, token=lambda: token(cluster, ns), verify=ca_file) as c:
        with pytest.raises(SecretsAPIError) as err:
            c.read(ns, "vol")
    assert problem(err) == (400, "NotAnApiGrant")
    served = httpx.get(
        f"{operator.api_url}/api/secrets/v1/openapi.json", verify=tls(ca_file)
    ).json()
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == committed == json.loads(json.dumps(openapi_document()))


def tls(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def _assert_phase(cluster: Cluster, ns: str, name: str, phase: str) -> None:
    assert (get(cluster, "sgr", name, ns).get("status") or {}).get("phase") == phase
