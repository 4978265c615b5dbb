"""A DPoP proof's ``htu`` must name this API, whatever ``Host`` the client sends.

What goes in: :class:`PublicOrigins` with configured public URLs or with the names
of a serving certificate, and the Secrets API served over TLS on 127.0.0.1 with a
certificate made at start (as the operator does without a mounted one), called
with httpx. What is asserted: which ``htu`` values are accepted; that a proof minted
for another server, sent with that server's name as ``Host``, is a 401
``InvalidDPoPProof``, while proofs for the certificate's names (any port) pass.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from secretgrants.audit import Auditor, MemorySink
from secretgrants.dpop import sign_proof
from secretgrants.policy.builtin import BuiltinPDP
from secretgrants.providers import ProviderRegistry, YAMLFileProvider
from secretgrants.secrets_api import SecretsAPI
from secretgrants.secrets_api.management import IndexTenants
from secretgrants.secrets_api.origins import PublicOrigins
from secretgrants.tenancy import env_tenant
from secretgrants.webhook import ServingCert, serving_cert
from tests.tokens import new_key, sign_jwt
from tests.unit.test_secrets_api_replay import POLICY, ReviewAll

PATH = "/api/secrets/v1/secrets"


def test_configured_public_urls() -> None:
    origins = PublicOrigins(["https://API.example.com", "https://10.0.0.5:8443/sg/"])
    assert origins.accepts("https://api.example.com" + PATH, PATH)
    assert origins.accepts("https://api.example.com:9443" + PATH, PATH)  # no port named: any
    assert origins.accepts("https://10.0.0.5:8443/sg" + PATH, PATH)  # behind a path prefix
    for htu in (
        "http://api.example.com" + PATH,  # another scheme
        "https://other.example" + PATH,  # another server
        "https://api.example.com" + PATH + "/rotate",  # another path
        "https://10.0.0.5" + "/sg" + PATH,  # port 443, not the one named
        "https://10.0.0.5:8443" + PATH,  # without the prefix
        "https://api.example.com:99999" + PATH,  # not a port
        "not a url",
    ):
        assert not origins.accepts(htu, PATH), htu


def test_without_public_urls_the_names_of_the_certificate() -> None:
    cert = serving_cert(None, dns_names=("sg.ns.svc", "*.apps.example"), ips=("127.0.0.1", "::1"))
    origins = PublicOrigins()
    assert not origins.accepts("https://sg.ns.svc" + PATH, PATH)  # no certificate yet: none
    origins.load_certificate(cert.cert_file.read_bytes())
    for htu in (
        "https://sg.ns.svc:8443",
        "https://SG.ns.svc",
        "https://127.0.0.1:31000",
        "https://[::1]:8443",
        "https://api.apps.example",
    ):
        assert origins.accepts(htu + PATH, PATH), htu
    for htu in (
        "http://sg.ns.svc:8443",  # the API serves TLS only
        "https://other.example",
        "https://a.b.apps.example",  # a wildcard is one label
        "https://apps.example",
        "https://127.0.0.2",
    ):
        assert not origins.accepts(htu + PATH, PATH), htu


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, ServingCert]]:
    store = tmp_path / "vault.yaml"
    store.write_text(yaml.safe_dump({"dev": {"team": {"db": {"password": "old"}}}}))
    api = SecretsAPI(
        ReviewAll(),
        ProviderRegistry({"yaml": YAMLFileProvider(store, dev_mode=True)}),
        audience="crud.secrets",
        auditor=Auditor([MemorySink()]),
        pdp=BuiltinPDP.from_yaml(yaml.safe_dump(POLICY)),
        tenants=IndexTenants({}, {}, env_tenant("t1", ["yaml://dev"])),
    )
    cert = serving_cert(None, dns_names=("sg.ns.svc", "localhost"), ips=("127.0.0.1",))
    await api.start("127.0.0.1", 0, cert)
    assert api._runner is not None
    port = api._runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}", cert
    await api.stop()


async def write(base: str, cert: ServingCert, htu: str, host: str | None = None) -> Any:
    raw = sign_jwt(
        new_key(),
        {
            "sub": "system:serviceaccount:team:admin",
            "jti": str(uuid.uuid4()),
            "exp": int(time.time()) + 300,
        },
        kid=None,
    )
    headers = {
        "Authorization": f"DPoP {raw}",
        "DPoP": sign_proof(new_key(), method="POST", url=htu, access_token=raw),
    }
    if host is not None:
        headers["Host"] = host
    body = {"uri": "yaml://dev/team/db", "data": {"password": "new"}}
    trust = ssl.create_default_context(cadata=cert.ca_pem.decode())
    async with httpx.AsyncClient(verify=trust) as client:
        response = await client.post(base + PATH, json=body, headers=headers)
    return response.status_code, response.json()


async def test_a_proof_for_another_server_is_refused_whatever_the_host_header(
    served: tuple[str, ServingCert],
) -> None:
    base, cert = served
    status, body = await write(base, cert, "https://other.example" + PATH, host="other.example")
    assert (status, body.get("code")) == (401, "InvalidDPoPProof")
    assert (await write(base, cert, base + PATH))[0] == 200
    assert (await write(base, cert, "https://sg.ns.svc:443" + PATH))[0] == 200  # any port
