"""Secrets API management, scopes and mTLS end to end: real apiserver, real Vault, built-in PDP.

What goes in: a namespace whose tenant allows ``vault+kv2://secret``,
``yaml://dev`` and ``openbao+kv2://secret``; ServiceAccounts ``admin``
(permitted every purpose under ``secret/e2e-mgmt/**`` by a per-test policy)
and ``app`` (read only, as in the shared e2e policy); the operator with a
YAML dev file and an OpenBao address where nothing listens. What is
asserted: each endpoint permitted for ``admin`` and denied for ``app`` (403
with the decision id), guard failure 400, unauthenticated 401, unsupported
501, provider failure 502, not found 404, scopes (403 InsufficientScope with
its WWW-Authenticate header), one use of a token's or DPoP proof's ``jti`` per
change (403 Replay, Vault untouched) and bad proofs (401 InvalidDPoPProof),
mTLS binding then mismatch, the anonymous caller, every answer a problem
document, and no value in the log. The SDK (:class:`SecretsClient`) drives
every management endpoint too: refusals raise :class:`SecretsAPIError` with
the problem's code, a reused token changes once, DPoP signs a proof per call. Calls that change a secret mint a fresh
token each (Kubernetes tokens carry a ``jti``).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from secretgrants.client import SecretsAPIError, SecretsClient
from secretgrants.devenv import VaultDevServer, free_port
from secretgrants.dpop import sign_proof
from secretgrants.pki import CertPair, new_ca, write_pair
from secretgrants.secrets_api.access_tokens import unverified_claims
from secretgrants.secrets_api.binding import certificate_thumbprint
from tests.conftest import E2E_POLICY, SECRET_VALUE, Cluster, OperatorProcess, webhook_config_name
from tests.e2e.kube import apply, eventually, get, grant, tenant
from tests.tokens import ISSUER, access_token, new_key, public_jwk

AUDIENCE = "crud.secrets"
NEW_VALUE = "N3w-mgmt-VALUE-0c1d"  # written through the API; must appear in no log
MGMT_RULES = [
    {
        "name": "e2e-admin-manage",
        "subjects": [{"service_account": "admin"}],
        "resources": ["vault+kv2://secret/e2e-mgmt/**", "yaml://dev/**", "openbao+kv2://**"],
        "purposes": ["*"],
    },
    {
        "name": "e2e-anonymous-metadata",
        "subjects": [{"service_account": "system.anonymous"}],
        "resources": ["vault+kv2://secret/e2e-mgmt/**"],
        "purposes": ["read_metadata"],
    },
]


@pytest.fixture
def mgmt_env(tmp_path: Path) -> dict[str, str]:
    policy = tmp_path / "policy-mgmt.yaml"
    policy.write_text(yaml.safe_dump({**E2E_POLICY, "rules": E2E_POLICY["rules"] + MGMT_RULES}))
    store = tmp_path / "dev-vault.yaml"
    store.write_text(yaml.safe_dump({"dev": {"e2e": {"cfg": {"token": "yaml-value"}}}}))
    return {
        "SECRETGRANTS_POLICY_FILE": str(policy),
        "YAML_VAULT_PATH": str(store),
        "OPENBAO_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: provider errors
        "OPENBAO_TOKEN": "unused",
        "SECRETGRANTS_PROVIDER_TIMEOUT": "1",
    }


@pytest.fixture
def mgmt_namespace(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    mounts = ["vault+kv2://secret", "yaml://dev", "openbao+kv2://secret"]
    apply(cluster, tenant(name, "e2e", mounts, namespaces=[namespace]))
    for sa in ("admin", "app"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    yield namespace
    cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)


def ca_of(cluster: Cluster, namespace: str, tmp_path: Path) -> ssl.SSLContext:
    config = get(cluster, "mutatingwebhookconfiguration", webhook_config_name(namespace))
    ca = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
    return ssl.create_default_context(cadata=ca.decode())


def sa_token(cluster: Cluster, ns: str, sa: str) -> str:
    args = ["create", "token", sa, "-n", ns, "--duration=10m", f"--audience={AUDIENCE}"]
    return cluster.kubectl(*args).stdout.strip()


class API:
    """A small client of the management endpoints (the raw HTTP, to see every header).

    ``token`` is a token, or a function that mints a fresh one per call: a call that
    changes a secret uses up its token's ``jti``.
    """

    def __init__(
        self, base: str, tls: ssl.SSLContext, token: str | Callable[[], str] | None
    ) -> None:
        self.base = base + "/api/secrets/v1"
        self.http = httpx.Client(verify=tls, timeout=10)
        self.token = token

    def call(self, method: str, path: str, body: Any = None, **query: str) -> httpx.Response:
        token = self.token() if callable(self.token) else self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        url = f"{self.base}{path}" + (f"?{qs}" if qs else "")
        return self.http.request(method, url, json=body, headers=headers)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def problem(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["status"] == response.status_code and body["type"].endswith(body["code"])
    return response.status_code, body["code"]


def test_each_management_endpoint_permitted_and_denied(
    cluster: Cluster,
    mgmt_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    mgmt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ns = mgmt_namespace
    op = start_operator_for(**mgmt_env)
    tls = ca_of(cluster, ns, tmp_path)
    admin = API(op.api_url, tls, lambda: sa_token(cluster, ns, "admin"))
    app = API(op.api_url, tls, lambda: sa_token(cluster, ns, "app"))
    uri = f"vault+kv2://secret/e2e-mgmt/{uuid.uuid4().hex[:8]}/db"

    # write (the tenant index may need a moment after the tenant was created)
    written = eventually(
        lambda: ok(admin.call("POST", "/secrets", {"uri": uri, "data": {"password": NEW_VALUE}})),
        timeout=20,
    )
    assert written["version"] == 1 and written["decisionId"]
    rotated = ok(admin.call("POST", "/secrets/rotate", {"uri": uri, "data": {"password": "r2"}}))
    assert rotated["version"] == 2
    ok(admin.call("POST", "/metadata/owner", {"uri": uri, "owner": "team-e2e"}))
    meta = ok(admin.call("GET", "/metadata", uri=uri))
    assert meta["currentVersion"] == 2 and meta["owner"] == "team-e2e"
    assert meta["createdBy"] == f"system:serviceaccount:{ns}:admin"
    detail = ok(admin.call("GET", "/metadata/detail", uri=uri))
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    parent = uri.rsplit("/", 1)[0]
    assert ok(admin.call("GET", "/keys", uri=parent))["keys"] == ["db"]
    ok(admin.call("DELETE", "/secrets", uri=uri, versions="1"))
    versions = ok(admin.call("GET", "/versions", uri=uri))["versions"]
    assert versions[0]["deletionTime"] and not versions[1]["deletionTime"]
    ok(admin.call("POST", "/secrets/undelete", {"uri": uri, "versions": [1]}))
    assert not ok(admin.call("GET", "/versions", uri=uri))["versions"][0]["deletionTime"]
    ok(admin.call("POST", "/secrets/destroy-versions", {"uri": uri, "versions": [1]}))
    ok(admin.call("DELETE", "/secrets", uri=uri, versions="2", destroy="true"))
    destroyed = ok(admin.call("GET", "/versions", uri=uri))["versions"]
    assert [v["destroyed"] for v in destroyed] == [True, True]
    bulk = ok(
        admin.call(
            "POST",
            "/bulk",
            {
                "operations": [
                    {"op": "write", "uri": uri, "data": {"password": NEW_VALUE}},
                    {"op": "metadata", "uri": uri},
                    {"op": "versions", "uri": "yaml://dev/e2e/cfg"},
                    {"op": "keys", "uri": "vault+kv2://other/x"},
                ]
            },
        )
    )
    assert [(r["op"], r["status"], r["code"]) for r in bulk["results"]] == [
        ("write", 200, None),
        ("metadata", 200, None),
        ("versions", 501, "UnsupportedOperation"),
        ("keys", 400, "MountNotAllowed"),
    ]
    assert bulk["results"][1]["result"]["currentVersion"] == 3

    # the same endpoints for a ServiceAccount the policy permits only reads: 403 with a decision
    denied_calls = [
        ("POST", "/secrets", {"uri": uri, "data": {"password": NEW_VALUE}}, {}),
        ("POST", "/secrets/rotate", {"uri": uri, "data": {"password": NEW_VALUE}}, {}),
        ("POST", "/metadata/owner", {"uri": uri, "owner": "me"}, {}),
        ("GET", "/metadata", None, {"uri": uri}),
        ("GET", "/metadata/detail", None, {"uri": uri}),
        ("GET", "/keys", None, {"uri": parent}),
        ("GET", "/versions", None, {"uri": uri}),
        ("DELETE", "/secrets", None, {"uri": uri}),
        ("DELETE", "/secrets", None, {"uri": uri, "versions": "3", "destroy": "true"}),
        ("POST", "/secrets/undelete", {"uri": uri, "versions": [3]}, {}),
        ("POST", "/secrets/destroy-versions", {"uri": uri, "versions": [3]}, {}),
    ]
    for method, path, body, query in denied_calls:
        response = app.call(method, path, body, **query)
        assert problem(response) == (403, "Denied"), (method, path)
        assert response.json()["decisionId"]
    bulk_denied = ok(app.call("POST", "/bulk", {"operations": [{"op": "metadata", "uri": uri}]}))
    assert bulk_denied["results"][0]["code"] == "Denied"
    assert ok(admin.call("GET", "/metadata", uri=uri))["currentVersion"] == 3  # nothing changed

    # every other problem code of the management endpoints
    cases = [
        (admin.call("GET", "/metadata", uri="vault+kv2://other/x"), (400, "MountNotAllowed")),
        (
            admin.call("GET", "/metadata", uri="vault+kv2://secret/a/../b"),
            (400, "InvalidSecretURI"),
        ),
        (admin.call("DELETE", "/secrets", uri=uri + "#password"), (400, "InvalidSecretURI")),
        (admin.call("POST", "/secrets", {"uri": uri}), (400, "InvalidRequest")),
        (admin.call("DELETE", "/secrets", uri=uri, destroy="true"), (400, "InvalidRequest")),
        (admin.call("GET", "/metadata"), (400, "InvalidRequest")),
        (API(op.api_url, tls, None).call("GET", "/metadata", uri=uri), (401, "Unauthenticated")),
        (API(op.api_url, tls, "nope").call("GET", "/metadata", uri=uri), (401, "InvalidToken")),
        (admin.call("GET", "/metadata", uri=uri + "-missing"), (404, "SecretNotFound")),
        (
            admin.call("POST", "/secrets/rotate", {"uri": uri + "-new", "data": {"k": "v"}}),
            (404, "SecretNotFound"),
        ),
        (admin.call("GET", "/nothing-here"), (404, "NotFound")),
        (admin.call("PUT", "/secrets", {}), (405, "MethodNotAllowed")),
        (admin.call("GET", "/versions", uri="yaml://dev/e2e/cfg"), (501, "UnsupportedOperation")),
        (
            admin.call("POST", "/secrets/undelete", {"uri": "yaml://dev/e2e/cfg", "versions": [1]}),
            (501, "UnsupportedOperation"),
        ),
        (
            admin.call("POST", "/secrets", {"uri": "yaml://dev/e2e/cfg", "data": {"k": "v"}}),
            (501, "UnsupportedOperation"),  # the YAML provider is read-only outside dev mode
        ),
        (
            admin.call("GET", "/metadata", uri="openbao+kv2://secret/e2e/x"),
            (502, "ProviderUnavailable"),
        ),
    ]
    for response, expected in cases:
        assert problem(response) == expected, response.text
    unauthenticated = API(op.api_url, tls, None).call("GET", "/keys", uri=uri)
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")

    events = op.audit_events()
    managed = [e for e in events if e.get("type") == "secret_managed"]
    assert len(managed) >= 12 and all(str(e["resource_ref"]).startswith("hmac-") for e in managed)
    assert {e["purpose"] for e in managed} >= {
        "write",
        "rotate",
        "owner_update",
        "read_metadata",
        "delete",
        "undelete",
        "destroy_versions",
    }
    refused = [e for e in events if e.get("type") == "decision" and e.get("effect") == "deny"]
    assert any(e.get("subject") == f"system:serviceaccount:{ns}:app" for e in refused)
    assert NEW_VALUE not in op.log()  # (urllib3's debug lines of --verbose name Vault paths)
    assert not [e for e in events if "e2e-mgmt" in json.dumps(e) or NEW_VALUE in json.dumps(e)]


def vault_secret(vault: VaultDevServer, uri: str) -> dict[str, Any]:
    """The latest version of a KV v2 secret as Vault itself has it (data and metadata)."""
    path = uri.removeprefix("vault+kv2://secret/")
    headers = {"X-Vault-Token": vault.root_token}
    data = httpx.get(f"{vault.addr}/v1/secret/data/{path}", headers=headers, timeout=10)
    meta = httpx.get(f"{vault.addr}/v1/secret/metadata/{path}", headers=headers, timeout=10)
    return {"data": data.json()["data"]["data"], "metadata": meta.json()["data"]}


def test_a_token_or_a_dpop_proof_changes_secrets_once(
    cluster: Cluster,
    mgmt_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    mgmt_env: dict[str, str],
    vault: VaultDevServer,
    tmp_path: Path,
) -> None:
    ns = mgmt_namespace
    op = start_operator_for(**mgmt_env)
    tls = ca_of(cluster, ns, tmp_path)
    uri = f"vault+kv2://secret/e2e-mgmt/{uuid.uuid4().hex[:8]}/db"
    fresh = API(op.api_url, tls, lambda: sa_token(cluster, ns, "admin"))
    eventually(
        lambda: ok(fresh.call("POST", "/secrets", {"uri": uri, "data": {"password": "v1"}})),
        timeout=20,
    )

    # a token's jti: one change, then every change with it is a Replay; reads need no fresh token
    token = sa_token(cluster, ns, "admin")
    assert unverified_claims(token)["jti"]
    once = API(op.api_url, tls, token)
    body = {"uri": uri, "data": {"password": NEW_VALUE}}
    assert ok(once.call("POST", "/secrets/rotate", body))["version"] == 2
    before = vault_secret(vault, uri)
    assert before["data"] == {"password": NEW_VALUE}
    replays = [
        ("POST", "/secrets", {"uri": uri, "data": {"password": "v3"}}, {}),
        ("POST", "/secrets/rotate", {"uri": uri, "data": {"password": "v3"}}, {}),
        ("POST", "/metadata/owner", {"uri": uri, "owner": "someone"}, {}),
        ("DELETE", "/secrets", None, {"uri": uri}),
        ("DELETE", "/secrets", None, {"uri": uri, "versions": "1", "destroy": "true"}),
        ("POST", "/secrets/undelete", {"uri": uri, "versions": [1]}, {}),
        ("POST", "/secrets/destroy-versions", {"uri": uri, "versions": [1]}, {}),
        ("POST", "/bulk", {"operations": [{"op": "delete", "uri": uri}]}, {}),
    ]
    for method, path, call_body, query in replays:
        response = once.call(method, path, call_body, **query)
        assert problem(response) == (403, "Replay"), (method, path, response.text)
    assert ok(once.call("GET", "/metadata", uri=uri))["currentVersion"] == 2
    assert vault_secret(vault, uri) == before  # nothing changed in Vault

    # DPoP: a bad proof is a 401; a good one changes the secret once; a fresh one again
    key = ec.generate_private_key(ec.SECP256R1())
    bound = sa_token(cluster, ns, "admin")
    url = f"{op.api_url}/api/secrets/v1/secrets/rotate"

    def rotate(proof: str | None, value: str) -> httpx.Response:
        headers = {"Authorization": f"DPoP {bound}", **({"DPoP": proof} if proof else {})}
        rotated = {"uri": uri, "data": {"password": value}}
        return httpx.post(url, json=rotated, headers=headers, verify=tls, timeout=10)

    for bad in [
        None,
        "x.y.z",
        sign_proof(key, method="GET", url=url, access_token=bound),
        sign_proof(key, method="POST", url=url.replace("/rotate", ""), access_token=bound),
        sign_proof(key, method="POST", url=url, access_token=token),
        sign_proof(key, method="POST", url=url, access_token=bound, iat=1),
    ]:
        assert problem(rotate(bad, "bad")) == (401, "InvalidDPoPProof"), bad
    assert vault_secret(vault, uri) == before
    proof = sign_proof(key, method="POST", url=url, access_token=bound)
    assert ok(rotate(proof, "v3"))["version"] == 3
    assert problem(rotate(proof, "v4")) == (403, "Replay")
    assert vault_secret(vault, uri)["data"] == {"password": "v3"}
    again = sign_proof(key, method="POST", url=url, access_token=bound)
    assert ok(rotate(again, "v4"))["version"] == 4  # the same token with a fresh proof

    events = op.audit_events()
    refused = [e["reason"] for e in events if e.get("type") == "api_refused"]
    assert refused.count("Replay") == len(replays) + 1
    assert refused.count("InvalidDPoPProof") == 6
    dumped = json.dumps(events)
    assert token not in dumped and bound not in dumped and proof not in dumped
    assert NEW_VALUE not in op.log()


def test_the_sdk_manages_a_secret_end_to_end(
    cluster: Cluster,
    mgmt_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    mgmt_env: dict[str, str],
    vault: VaultDevServer,
    tmp_path: Path,
) -> None:
    ns = mgmt_namespace
    op = start_operator_for(**mgmt_env)
    tls = ca_of(cluster, ns, tmp_path)
    uri = f"vault+kv2://secret/e2e-mgmt/{uuid.uuid4().hex[:8]}/db"

    def sdk(token: Callable[[], str], **options: Any) -> SecretsClient:
        return SecretsClient(op.api_url, token=token, verify=tls, retries=0, **options)

    def refusal(call: Callable[[], object]) -> tuple[int, str]:
        with pytest.raises(SecretsAPIError) as err:
            call()
        return err.value.status, err.value.code

    admin = sdk(lambda: sa_token(cluster, ns, "admin"))
    with admin, sdk(lambda: sa_token(cluster, ns, "app")) as app:

        def first_write() -> dict[str, Any]:
            try:  # the tenant index may need a moment after the tenant was created
                return admin.write(uri, {"password": "v1"})
            except SecretsAPIError as err:
                raise AssertionError(str(err)) from err

        written = eventually(first_write, timeout=20)
        assert written["version"] == 1 and written["decisionId"]
        meta = admin.metadata(uri)
        assert meta["currentVersion"] == 1 and meta["createdBy"].endswith(f":{ns}:admin")
        assert admin.rotate(uri, {"password": NEW_VALUE})["version"] == 2
        assert vault_secret(vault, uri)["data"] == {"password": NEW_VALUE}
        admin.set_owner(uri, "team-sdk")
        detail = admin.metadata_detail(uri)
        assert detail["owner"] == "team-sdk" and [v["version"] for v in detail["versions"]] == [
            1,
            2,
        ]
        assert admin.keys(uri.rsplit("/", 1)[0])["keys"] == ["db"]
        admin.delete(uri, [1])
        assert [bool(v["deletionTime"]) for v in admin.versions(uri)["versions"]] == [True, False]
        admin.undelete(uri, [1])
        assert not admin.versions(uri)["versions"][0]["deletionTime"]
        admin.destroy_versions(uri, [1])
        admin.delete(uri, [2], destroy=True)
        destroyed = admin.versions(uri)["versions"]
        assert [v["destroyed"] for v in destroyed] == [True, True]
        results = admin.bulk(
            [
                {"op": "write", "uri": uri, "data": {"password": "v3"}},
                {"op": "keys", "uri": "vault+kv2://other/x"},
            ]
        )
        assert [(r["status"], r["code"]) for r in results] == [
            (200, None),
            (400, "MountNotAllowed"),
        ]
        assert results[0]["result"]["version"] == 3

        # refusals surface as SecretsAPIError with the problem's code
        assert refusal(lambda: app.rotate(uri, {"password": "no"})) == (403, "Denied")
        assert refusal(lambda: app.metadata(uri)) == (403, "Denied")
        assert refusal(lambda: admin.delete(uri, destroy=True)) == (400, "InvalidRequest")
        assert refusal(lambda: admin.metadata(uri + "-missing")) == (404, "SecretNotFound")
        assert vault_secret(vault, uri)["data"] == {"password": "v3"}

    # one token without DPoP: one change, then Replay (Vault untouched); reads need no new jti
    fixed = sa_token(cluster, ns, "admin")
    with sdk(lambda: fixed) as once:
        assert once.rotate(uri, {"password": "v4"})["version"] == 4
        assert refusal(lambda: once.rotate(uri, {"password": "v5"})) == (403, "Replay")
        assert refusal(lambda: once.delete(uri)) == (403, "Replay")
        assert once.metadata(uri)["currentVersion"] == 4
    assert vault_secret(vault, uri)["data"] == {"password": "v4"}
    # the same token with DPoP: the client signs a fresh proof per request
    bound = sa_token(cluster, ns, "admin")
    with sdk(lambda: bound, dpop=True) as dpop:
        assert dpop.rotate(uri, {"password": "v5"})["version"] == 5
        assert dpop.rotate(uri, {"password": NEW_VALUE})["version"] == 6
        dpop.set_owner(uri, "team-dpop")
        assert dpop.metadata(uri)["owner"] == "team-dpop"
    assert vault_secret(vault, uri)["data"] == {"password": NEW_VALUE}
    assert NEW_VALUE not in op.log()


class JWKSServer:
    """A JWK set on 127.0.0.1, as an issuer publishes it."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_scopes_are_required_per_endpoint_when_enforced(
    cluster: Cluster,
    mgmt_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    mgmt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ns = mgmt_namespace
    key = new_key("EC")
    jwks = JWKSServer({"keys": [public_jwk(key, "k1")]})
    try:
        op = start_operator_for(
            **mgmt_env,
            SECRETS_ENFORCE_SCOPES="true",
            SECRETS_JWT_ISSUER=ISSUER,
            SECRETS_JWKS_URL=jwks.url,
        )
        tls = ca_of(cluster, ns, tmp_path)
        uri = f"vault+kv2://secret/e2e-mgmt/{uuid.uuid4().hex[:8]}/db"

        def jwt(scope: str) -> API:
            return API(
                op.api_url,
                tls,
                lambda: access_token(key, namespace=ns, service_account="admin", scope=scope),
            )

        writer = jwt("secrets.write secrets.read_metadata")
        eventually(
            lambda: ok(writer.call("POST", "/secrets", {"uri": uri, "data": {"k": NEW_VALUE}})),
            timeout=20,
        )
        assert ok(writer.call("GET", "/metadata", uri=uri))["currentVersion"] == 1
        for api, method, path, body, query, needed in [
            (writer, "DELETE", "/secrets", None, {"uri": uri}, "secrets.delete"),
            (
                writer,
                "DELETE",
                "/secrets",
                None,
                {"uri": uri, "versions": "1", "destroy": "true"},
                "secrets.destroy",
            ),
            (
                writer,
                "POST",
                "/metadata/owner",
                {"uri": uri, "owner": "x"},
                {},
                "secrets.set_owner",
            ),
            (
                writer,
                "POST",
                "/secrets/rotate",
                {"uri": uri, "data": {"k": "v"}},
                {},
                "secrets.rotate",
            ),
            (jwt("secrets.read"), "GET", "/keys", None, {"uri": uri}, "secrets.read_metadata"),
            (
                writer,
                "POST",
                "/bulk",
                {
                    "operations": [
                        {"op": "metadata", "uri": uri},
                        {"op": "undelete", "uri": uri, "versions": [1]},
                    ]
                },
                {},
                "secrets.delete",
            ),
        ]:
            response = api.call(method, path, body, **query)
            assert problem(response) == (403, "InsufficientScope"), (path, response.text)
            assert response.json()["requiredScopes"] == [needed]
            header = response.headers["WWW-Authenticate"]
            assert 'error="insufficient_scope"' in header and needed in header
        # a ServiceAccount token (TokenReview) carries no scopes; no token at all is a 401
        sa = API(op.api_url, tls, sa_token(cluster, ns, "admin"))
        assert problem(sa.call("GET", "/metadata", uri=uri)) == (403, "InsufficientScope")
        assert problem(API(op.api_url, tls, None).call("GET", "/metadata", uri=uri)) == (
            401,
            "Unauthenticated",
        )
        expired = access_token(key, namespace=ns, service_account="admin", lifetime=-300)
        response = API(op.api_url, tls, expired).call("GET", "/metadata", uri=uri)
        assert problem(response) == (401, "InvalidToken")
        forged = access_token(
            new_key("EC"), namespace=ns, service_account="admin", scope="secrets.read_metadata"
        )
        assert problem(API(op.api_url, tls, forged).call("GET", "/metadata", uri=uri)) == (
            401,
            "InvalidToken",
        )
        # scopes and the PDP both hold: a scoped token for a ServiceAccount the PDP refuses
        app = API(
            op.api_url,
            tls,
            access_token(key, namespace=ns, service_account="app", scope="secrets.read_metadata"),
        )
        assert problem(app.call("GET", "/metadata", uri=uri)) == (403, "Denied")
    finally:
        jwks.close()
    assert NEW_VALUE not in op.log()


def client_tls(ca: ssl.SSLContext, pair: CertPair | None, directory: Path) -> ssl.SSLContext:
    if pair is not None:
        cert, key = write_pair(pair, directory, f"client-{uuid.uuid4().hex[:6]}")
        ca.load_cert_chain(cert, key)
    return ca


def test_mtls_binds_a_grant_to_the_first_certificate_and_anonymous_management(
    cluster: Cluster,
    mgmt_namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    mgmt_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ns = mgmt_namespace
    client_ca = new_ca("e2e-client-ca")
    ca_file, _ = write_pair(client_ca, tmp_path, "client-ca")
    op = start_operator_for(
        **mgmt_env, SECRETGRANTS_API_CLIENT_CA=str(ca_file), SECRETS_API_REQUIRE_AUTH="false"
    )
    apply(cluster, grant("api", ns, "vault+kv2://secret/e2e/db#password", delivery={"mode": "Api"}))
    eventually(lambda: _phase(cluster, ns, "Granted"), timeout=30)
    first, second = client_ca.issue("app-1", client=True), client_ca.issue("app-2", client=True)
    outsider = new_ca("elsewhere").issue("app-3", client=True)
    url = f"{op.api_url}/api/secrets/v1/namespaces/{ns}/grants/api"

    def read(pair: CertPair | None) -> httpx.Response:
        tls = client_tls(ca_of(cluster, ns, tmp_path), pair, tmp_path)
        headers = {"Authorization": f"Bearer {sa_token(cluster, ns, 'app')}"}
        return httpx.get(url, headers=headers, verify=tls, timeout=10)

    response = read(first)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"password": SECRET_VALUE}
    binding = get(cluster, "sgr", "api", ns)["status"]["binding"]
    assert binding["x5tS256"] == certificate_thumbprint(first.cert.public_bytes(Encoding.DER))
    assert read(first).status_code == 200  # the bound certificate, a fresh token
    assert problem(read(second)) == (403, "SenderMismatch")
    ca_file = tmp_path / "api-ca.crt"
    ca_file.write_bytes(
        base64.b64decode(
            get(cluster, "mutatingwebhookconfiguration", webhook_config_name(ns))["webhooks"][0][
                "clientConfig"
            ]["caBundle"]
        )
    )
    second_cert, second_key = write_pair(second, tmp_path, "second")
    with SecretsClient(
        op.api_url,
        token=lambda: sa_token(cluster, ns, "app"),
        verify=ssl.create_default_context(cafile=str(ca_file)),
        cert=(str(second_cert), str(second_key)),
        retries=0,
    ) as sdk:
        with pytest.raises(SecretsAPIError) as err:
            sdk.read(ns, "api")
    assert (err.value.status, err.value.code) == (403, "SenderMismatch")
    assert problem(read(None)) == (403, "SenderMismatch")
    with pytest.raises(httpx.HTTPError):  # a certificate of another CA fails the handshake
        read(outsider)
    assert get(cluster, "sgr", "api", ns)["status"]["usesConsumed"] == 2

    # SECRETS_API_REQUIRE_AUTH=false: no token is the anonymous caller, decided by the PDP
    # as ServiceAccount system.anonymous of the operator's namespace, under its tenant
    ops_tenant = f"t-ops-{uuid.uuid4().hex[:6]}"
    apply(
        cluster,
        tenant(ops_tenant, "ops", ["vault+kv2://secret"], namespaces=["secretgrants-system"]),
    )
    try:
        uri = f"vault+kv2://secret/e2e-mgmt/{uuid.uuid4().hex[:8]}"
        admin = API(op.api_url, ca_of(cluster, ns, tmp_path), sa_token(cluster, ns, "admin"))
        ok(admin.call("POST", "/secrets", {"uri": uri, "data": {"k": NEW_VALUE}}))
        anonymous = API(op.api_url, ca_of(cluster, ns, tmp_path), None)
        meta = eventually(lambda: ok(anonymous.call("GET", "/metadata", uri=uri)), timeout=20)
        assert meta["currentVersion"] == 1  # the policy permits it read_metadata
        write = anonymous.call("POST", "/secrets", {"uri": uri, "data": {"k": "v"}})
        assert problem(write) == (403, "Denied")  # and nothing else
        events = [e for e in op.audit_events() if e.get("type") == "secret_managed"]
        assert events[-1]["subject"] == "system:serviceaccount:secretgrants-system:system.anonymous"
    finally:
        cluster.kubectl("delete", "secrettenant", ops_tenant, "--wait=false", check=False)
    # grant reads always need a token
    assert problem(httpx.get(url, verify=ca_of(cluster, ns, tmp_path))) == (401, "Unauthenticated")
    assert NEW_VALUE not in op.log()


def _phase(cluster: Cluster, ns: str, phase: str) -> None:
    assert (get(cluster, "sgr", "api", ns).get("status") or {}).get("phase") == phase
