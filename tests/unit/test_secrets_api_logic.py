"""The Secrets API's decisions without a server: purposes, scopes, binding, tokens, management.

What goes in: the pure tables and checks of ``secretgrants.secrets_api``,
access tokens signed with test keys and verified against a JWKS file, and
the management flow over the real YAML provider (a file in tmp_path), the
real built-in PDP and an audit memory sink. What is asserted: each seed
mapping, each problem code and status, and that no value or URI reaches
an audit event.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from secretgrants.audit import Auditor, MemorySink
from secretgrants.dpop import b64url
from secretgrants.metrics import Metrics
from secretgrants.policy.builtin import BuiltinPDP
from secretgrants.providers import ProviderRegistry, YAMLFileProvider
from secretgrants.reasons import Purpose
from secretgrants.secrets_api.access_tokens import AccessTokenError, AccessTokenVerifier, JWKSFile
from secretgrants.secrets_api.authentication import ANONYMOUS_NAME, Authenticator, Caller
from secretgrants.secrets_api.binding import Sender, certificate_thumbprint, check_sender
from secretgrants.secrets_api.management import IndexTenants, ManagementCall, Manager
from secretgrants.secrets_api.models import BulkItem, SecretWrite
from secretgrants.secrets_api.operations import (
    OPERATIONS,
    SCOPES,
    Operation,
    missing_scopes,
    operation_for,
    parse_scopes,
)
from secretgrants.secrets_api.problems import Problem
from secretgrants.tenancy import env_tenant
from tests.tokens import AUDIENCE, ISSUER, access_token, new_key, sign_jwt, write_jwks

VALUE = "unit-S3cr3t-value-91"

# -- the seed's purpose mapping and the scope table --------------------------------------


@pytest.mark.parametrize(
    ("operation", "purpose", "scope"),
    [
        (Operation.READ, Purpose.READ, "secrets.read"),
        (Operation.WRITE, Purpose.WRITE, "secrets.write"),
        (Operation.DELETE, Purpose.DELETE, "secrets.delete"),
        (Operation.DESTROY, Purpose.DESTROY_VERSIONS, "secrets.destroy"),
        (Operation.ROTATE, Purpose.ROTATE, "secrets.rotate"),
        (Operation.METADATA, Purpose.READ_METADATA, "secrets.read_metadata"),
        (Operation.KEYS, Purpose.READ_METADATA, "secrets.read_metadata"),
        (Operation.METADATA_DETAIL, Purpose.READ_METADATA, "secrets.read_metadata"),
        (Operation.VERSIONS, Purpose.READ_METADATA, "secrets.read_metadata"),
        (Operation.UNDELETE, Purpose.UNDELETE, "secrets.delete"),
        (Operation.DESTROY_VERSIONS, Purpose.DESTROY_VERSIONS, "secrets.destroy"),
        (Operation.SET_OWNER, Purpose.OWNER_UPDATE, "secrets.set_owner"),
    ],
)
def test_each_operation_has_the_seed_purpose_and_a_scope(
    operation: Operation, purpose: Purpose, scope: str
) -> None:
    assert OPERATIONS[operation].purpose is purpose
    assert OPERATIONS[operation].scope.value == scope


def test_every_operation_is_mapped_and_every_scope_is_used() -> None:
    assert set(OPERATIONS) == set(Operation)
    assert {spec.scope.value for spec in OPERATIONS.values()} == set(SCOPES)
    assert len(SCOPES) == 7


def test_delete_with_destroy_is_a_destroy() -> None:
    assert operation_for(Operation.DELETE, destroy=True) is Operation.DESTROY
    assert operation_for(Operation.DELETE) is Operation.DELETE
    assert operation_for(Operation.WRITE, destroy=True) is Operation.WRITE


def test_scopes_from_scope_or_scp_and_what_is_missing() -> None:
    assert parse_scopes({"scope": "secrets.read  secrets.write"}) == {
        "secrets.read",
        "secrets.write",
    }
    assert parse_scopes({"scp": ["secrets.delete", 3]}) == {"secrets.delete"}
    assert parse_scopes({"scope": 7}) == frozenset()
    bulk = [Operation.WRITE, Operation.DESTROY, Operation.METADATA]
    assert missing_scopes({"secrets.write"}, bulk) == ["secrets.destroy", "secrets.read_metadata"]
    assert missing_scopes(SCOPES, bulk) == []


# -- sender binding -----------------------------------------------------------------------


def test_certificate_thumbprint_is_base64url_sha256_of_the_der() -> None:
    der = b"\x30\x03\x02\x01\x01"
    assert certificate_thumbprint(der) == b64url(hashlib.sha256(der).digest())
    assert "=" not in certificate_thumbprint(der)


def test_first_use_binds_and_later_uses_must_match() -> None:
    assert check_sender({}, Sender()) == Sender()
    assert check_sender({}, Sender(jkt="k", x5t_s256="c")) == Sender(jkt="k", x5t_s256="c")
    bound = {"jkt": "k", "x5tS256": "c"}
    assert check_sender(bound, Sender(jkt="k", x5t_s256="c")) == Sender()
    assert check_sender({"jkt": "k"}, Sender(jkt="k", x5t_s256="c")) == Sender(x5t_s256="c")
    for sender in (Sender(jkt="k"), Sender(jkt="k", x5t_s256="other"), Sender(x5t_s256="c")):
        with pytest.raises(Problem) as err:
            check_sender(bound, sender)
        assert (err.value.status, err.value.code) == (403, "SenderMismatch")


# -- access tokens ------------------------------------------------------------------------


@pytest.fixture
def keys() -> dict[str, Any]:
    return {"ec": new_key("EC"), "rsa": new_key("RSA"), "ed": new_key("OKP")}


@pytest.fixture
def verifier(tmp_path: Path, keys: dict[str, Any]) -> AccessTokenVerifier:
    return AccessTokenVerifier(ISSUER, AUDIENCE, JWKSFile(write_jwks(tmp_path / "jwks", keys)))


@pytest.mark.parametrize("kid", ["ec", "rsa", "ed"])
async def test_tokens_of_each_algorithm_verify(
    verifier: AccessTokenVerifier, keys: dict[str, Any], kid: str
) -> None:
    token = access_token(keys[kid], kid=kid, scope="secrets.read")
    assert verifier.issued_here(token)
    claims = await verifier.verify(token)
    assert claims["scope"] == "secrets.read"


async def test_bad_tokens_are_refused_with_the_reason(
    verifier: AccessTokenVerifier, keys: dict[str, Any]
) -> None:
    key = keys["ec"]
    now = int(time.time())
    cases = [
        ("has expired", access_token(key, kid="ec", lifetime=-120)),
        ("not valid yet", access_token(key, kid="ec", nbf=now + 600)),
        ("audience", access_token(key, kid="ec", aud="other")),
        ("another issuer", access_token(key, kid="ec", iss="https://elsewhere")),
        ("no key", access_token(key, kid="unknown")),
        ("no key", access_token(keys["rsa"], kid="ec")),  # RS256 under an ES256 kid
        ("no exp", sign_jwt(key, {"iss": ISSUER, "aud": AUDIENCE}, kid="ec")),
        ("not accepted", sign_jwt(key, {"iss": ISSUER}, kid="ec", alg="none")),
        ("compact JWS", "a.b"),
    ]
    for why, token in cases:
        with pytest.raises(AccessTokenError, match=why):
            await verifier.verify(token)
    forged = access_token(new_key("EC"), kid="ec")  # right kid, wrong key
    with pytest.raises(AccessTokenError, match="does not verify"):
        await verifier.verify(forged)


# -- authentication -----------------------------------------------------------------------


class ReviewAll:
    """A TokenReview that accepts the token 'good' for ServiceAccount team/app."""

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        if token != "good":
            return {"authenticated": False}
        user = {"username": "system:serviceaccount:team:app", "uid": "u-1"}
        return {"authenticated": True, "audiences": audiences, "user": user}


async def test_tokenreview_issuer_and_anonymous_callers(
    verifier: AccessTokenVerifier, keys: dict[str, Any]
) -> None:
    auth = Authenticator(ReviewAll(), AUDIENCE, access_tokens=verifier)
    caller = await auth.authenticate({"Authorization": "Bearer good"})
    assert (caller.username, caller.uid, caller.via) == (
        "system:serviceaccount:team:app",
        "u-1",
        "tokenreview",
    )
    jwt = access_token(keys["ed"], kid="ed", uid="u-9", scope=["secrets.write"])
    caller = await auth.authenticate({"Authorization": f"Bearer {jwt}"})
    assert (caller.uid, caller.via, caller.scopes) == ("u-9", "issuer", {"secrets.write"})
    for headers, code in (
        ({}, "Unauthenticated"),
        ({"Authorization": "Basic x"}, "Unauthenticated"),
        ({"Authorization": "Bearer bad"}, "InvalidToken"),
        (
            {"Authorization": f"Bearer {access_token(keys['ec'], kid='ec', lifetime=-99)}"},
            "InvalidToken",
        ),
    ):
        with pytest.raises(Problem) as err:
            await auth.authenticate(headers)
        assert (err.value.status, err.value.code) == (401, code)
        assert err.value.headers["WWW-Authenticate"].startswith("Bearer")
    human = access_token(keys["ec"], kid="ec", sub="alice")
    with pytest.raises(Problem) as err:
        await auth.authenticate({"Authorization": f"Bearer {human}"})
    assert (err.value.status, err.value.code) == (403, "NotAServiceAccount")

    open_auth = Authenticator(ReviewAll(), AUDIENCE, require_auth=False, anonymous_namespace="ops")
    anonymous = await open_auth.authenticate({})
    assert (
        anonymous.anonymous and anonymous.username == f"system:serviceaccount:ops:{ANONYMOUS_NAME}"
    )
    with pytest.raises(Problem):  # reads always need a token
        await open_auth.authenticate({}, allow_anonymous=False)
    scoped = Authenticator(ReviewAll(), AUDIENCE, require_auth=False, enforce_scopes=True)
    with pytest.raises(Problem):  # scopes come from tokens
        await scoped.authenticate({})


def test_scopes_are_enforced_only_when_asked() -> None:
    caller = Caller(
        namespace="team",
        service_account="app",
        uid="",
        token="t",
        scopes=frozenset({"secrets.read"}),
    )
    Authenticator(ReviewAll(), AUDIENCE).require_scopes(caller, [Operation.WRITE])
    strict = Authenticator(ReviewAll(), AUDIENCE, enforce_scopes=True)
    strict.require_scopes(caller, [Operation.READ])
    with pytest.raises(Problem) as err:
        strict.require_scopes(caller, [Operation.WRITE, Operation.SET_OWNER])
    problem = err.value
    assert (problem.status, problem.code) == (403, "InsufficientScope")
    assert problem.extra["requiredScopes"] == ["secrets.set_owner", "secrets.write"]
    assert 'error="insufficient_scope"' in problem.headers["WWW-Authenticate"]


# -- bodies -------------------------------------------------------------------------------


def test_bodies_refuse_what_an_operation_lacks_without_echoing_values() -> None:
    with pytest.raises(ValueError, match="needs 'data'"):
        BulkItem.model_validate({"op": "write", "uri": "yaml://dev/a"})
    with pytest.raises(ValueError, match="destroy"):
        BulkItem.model_validate(
            {"op": "write", "uri": "yaml://dev/a", "data": {"k": "v"}, "destroy": True}
        )
    with pytest.raises(ValueError, match="needs 'versions'"):
        BulkItem.model_validate({"op": "delete", "uri": "yaml://dev/a", "destroy": True})
    with pytest.raises(ValueError) as err:
        SecretWrite.model_validate({"uri": "yaml://dev/a", "data": {"k": VALUE}, "extra": VALUE})
    assert "extra" in str(err.value)


# -- management over the YAML provider and the built-in PDP ----------------------------

POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "manage",
            "subjects": [{"service_account": "admin"}],
            "resources": ["yaml://dev/team/**"],
            "purposes": ["*"],
        },
        {
            "name": "look",
            "subjects": [{"service_account": "viewer"}],
            "resources": ["yaml://dev/**"],
            "purposes": ["read_metadata"],
        },
    ],
}


@pytest.fixture
def manager(tmp_path: Path) -> tuple[Manager, MemorySink]:
    store = tmp_path / "vault.yaml"
    store.write_text(
        yaml.safe_dump(
            {
                "dev": {"team": {"db": {"password": "old", "_metadata": {"owner": "a"}}}},
                "other": {"x": {"k": "v"}},
            }
        )
    )
    providers = ProviderRegistry({"yaml": YAMLFileProvider(store, dev_mode=True)})
    sink = MemorySink()
    tenants = IndexTenants({}, {}, env_tenant("t1", ["yaml://dev"]))
    pdp = BuiltinPDP.from_yaml(yaml.safe_dump(POLICY))

    class Salt:
        async def salt_for(self, tenant: Any) -> bytes:
            return b"salt"

    return Manager(
        providers,
        pdp=pdp,
        tenants=tenants,
        salts=Salt(),
        auditor=Auditor([sink]),
        metrics=Metrics(),
    ), sink


def who(name: str) -> Caller:
    return Caller(namespace="team", service_account=name, uid="u-1", token="t")


async def test_management_operations_permitted_and_refused(
    manager: tuple[Manager, MemorySink],
) -> None:
    mgr, sink = manager
    admin, viewer = who("admin"), who("viewer")
    uri = "yaml://dev/team/db"
    written = await mgr.run(admin, ManagementCall(Operation.WRITE, uri, data={"password": VALUE}))
    assert written["decisionId"] and written["version"] is None
    meta = await mgr.run(viewer, ManagementCall(Operation.METADATA, uri))
    assert meta["owner"] == "a" and meta["currentVersion"] is None
    keys = await mgr.run(viewer, ManagementCall(Operation.KEYS, "yaml://dev/team"))
    assert keys["keys"] == ["db"]
    await mgr.run(admin, ManagementCall(Operation.SET_OWNER, uri, owner="b"))
    detail = await mgr.run(admin, ManagementCall(Operation.METADATA_DETAIL, uri))
    assert detail["owner"] == "b" and detail["customMetadata"]["owner"] == "b"
    await mgr.run(admin, ManagementCall(Operation.ROTATE, uri, data={"password": VALUE + "2"}))

    async def refused(caller: Caller, call: ManagementCall) -> tuple[int, str]:
        with pytest.raises(Problem) as err:
            await mgr.run(caller, call)
        return err.value.status, err.value.code

    assert await refused(viewer, ManagementCall(Operation.WRITE, uri, data={"k": "v"})) == (
        403,
        "Denied",
    )
    assert await refused(admin, ManagementCall(Operation.VERSIONS, uri)) == (
        501,
        "UnsupportedOperation",
    )
    assert await refused(admin, ManagementCall(Operation.UNDELETE, uri, versions=[1])) == (
        501,
        "UnsupportedOperation",
    )
    assert await refused(admin, ManagementCall(Operation.METADATA, "yaml://other/x")) == (
        400,
        "MountNotAllowed",
    )
    assert await refused(admin, ManagementCall(Operation.DELETE, uri + "#password")) == (
        400,
        "InvalidSecretURI",
    )
    assert await refused(admin, ManagementCall(Operation.METADATA, "yaml://dev/team/../x")) == (
        400,
        "InvalidSecretURI",
    )
    assert await refused(
        admin, ManagementCall(Operation.ROTATE, "yaml://dev/team/new", data={"k": "v"})
    ) == (404, "SecretNotFound")
    await mgr.run(admin, ManagementCall(Operation.DELETE, uri))
    assert await refused(admin, ManagementCall(Operation.METADATA, uri)) == (404, "SecretNotFound")

    events = list(sink.events)
    assert [e.type.value for e in events].count("secret_managed") == 7
    assert {e.reason for e in events} >= {
        "Denied",
        "UnsupportedOperation",
        "MountNotAllowed",
        "SecretNotFound",
    }
    denied = next(e for e in events if e.reason == "Denied")
    assert denied.type.value == "decision" and denied.decision_id and denied.purpose == "write"
    assert all(e.resource_ref is None or e.resource_ref.startswith("hmac-sha256:") for e in events)
    dumped = json.dumps([e.to_json() for e in events])
    assert VALUE not in dumped and "team/db" not in dumped and "yaml://" not in dumped


async def test_bulk_maps_each_operation_on_its_own(manager: tuple[Manager, MemorySink]) -> None:
    mgr, _ = manager
    items = [
        BulkItem.model_validate(i)
        for i in (
            {"op": "write", "uri": "yaml://dev/team/a", "data": {"k": VALUE}},
            {"op": "metadata", "uri": "yaml://dev/team/a"},
            {"op": "versions", "uri": "yaml://dev/team/a"},
            {"op": "delete", "uri": "yaml://dev/team/a", "destroy": True, "versions": [1]},
            {"op": "keys", "uri": "yaml://other/x"},
        )
    ]
    results = await mgr.run_bulk(who("admin"), items)
    assert [(r.op, r.status, r.code) for r in results] == [
        ("write", 200, None),
        ("metadata", 200, None),
        ("versions", 501, "UnsupportedOperation"),
        ("destroy", 501, "UnsupportedOperation"),
        ("keys", 400, "MountNotAllowed"),
    ]
    assert results[0].decision_id and results[3].decision_id
    viewer = await mgr.run_bulk(who("viewer"), items[:2])
    assert [(r.status, r.code) for r in viewer] == [(403, "Denied"), (200, None)]
