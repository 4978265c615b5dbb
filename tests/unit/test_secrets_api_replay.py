"""DPoP proofs and one-time identifiers on the management endpoints, without a cluster.

What goes in: :func:`request_proof` and :func:`use_once` with proofs signed
by test keys, and the API's aiohttp application (plain HTTP) over the real
YAML provider (a file in tmp_path), the built-in PDP, an audit memory sink
and a TokenReview that accepts every token. What is asserted: which
requests use DPoP and when a proof is refused (401 ``InvalidDPoPProof``);
that a token's or a proof's ``jti`` changes a secret once (403 ``Replay``,
audited by reason, the store untouched), while read-only calls and tokens
without ``jti`` pass.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from secretgrants.audit import Auditor, EventType, MemorySink
from secretgrants.dpop import jwk_thumbprint, private_jwk_public, sign_proof
from secretgrants.policy.builtin import BuiltinPDP
from secretgrants.providers import ProviderRegistry, YAMLFileProvider
from secretgrants.secrets_api import SecretsAPI
from secretgrants.secrets_api.access_tokens import unverified_claims
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.binding import request_proof
from secretgrants.secrets_api.management import IndexTenants
from secretgrants.secrets_api.operations import Operation
from secretgrants.secrets_api.problems import Problem
from secretgrants.secrets_api.replay import ReplayCache, use_once
from secretgrants.tenancy import env_tenant
from tests.tokens import new_key, sign_jwt

URL = "https://api.test/api/secrets/v1/secrets"
VALUE = "replay-unit-V4lue-7"


def token(**claims: Any) -> str:
    """A JWT-shaped token (the fake TokenReview accepts any): ``jti`` and ``exp`` by default."""
    base = {"sub": "system:serviceaccount:team:admin", "jti": str(uuid.uuid4())}
    base["exp"] = int(time.time()) + 300
    return sign_jwt(new_key(), {**base, **claims}, kid=None)


def caller_of(raw: str, name: str = "admin") -> Caller:
    claims = unverified_claims(raw)
    return Caller(namespace="team", service_account=name, uid="u-1", token=raw, claims=claims)


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(Problem) as err:
        call(*args, **kwargs)
    return err.value.status, err.value.code


# -- which requests use DPoP, and when a proof is refused ---------------------------------


def test_a_request_without_dpop_has_no_proof() -> None:
    raw = token()
    headers = {"Authorization": f"Bearer {raw}"}
    assert request_proof(headers, method="POST", url=URL, caller=caller_of(raw)) is None


def test_a_good_proof_is_the_proof_of_its_key() -> None:
    raw, key = token(), new_key()
    proof = sign_proof(key, method="POST", url=URL, access_token=raw)
    headers = {"Authorization": f"DPoP {raw}", "DPoP": proof}
    checked = request_proof(headers, method="POST", url=URL + "?x=1", caller=caller_of(raw))
    assert checked is not None and checked.jkt == jwk_thumbprint(private_jwk_public(key))


def test_bad_proofs_are_refused_as_invalid_dpop_proofs() -> None:
    raw, key = token(), new_key()
    caller = caller_of(raw)
    cases: list[Mapping[str, str]] = [
        {"Authorization": f"DPoP {raw}"},  # the DPoP scheme without a proof
        {"Authorization": f"DPoP {raw}", "DPoP": "x.y.z"},
        {"Authorization": f"Bearer {raw}", "DPoP": "not-a-jws"},  # a DPoP header is DPoP
        {"DPoP": sign_proof(key, method="DELETE", url=URL, access_token=raw)},
        {"DPoP": sign_proof(key, method="POST", url=URL + "/rotate", access_token=raw)},
        {"DPoP": sign_proof(key, method="POST", url=URL, access_token="another token")},
        {"DPoP": sign_proof(key, method="POST", url=URL, access_token=raw, iat=1)},
    ]
    for headers in cases:
        assert refused(request_proof, headers, method="POST", url=URL, caller=caller) == (
            401,
            "InvalidDPoPProof",
        ), headers


def test_a_token_bound_to_a_key_needs_a_proof_by_that_key() -> None:
    key, other = new_key(), new_key()
    raw = token(cnf={"jkt": jwk_thumbprint(private_jwk_public(key))})
    caller = caller_of(raw)
    bearer = {"Authorization": f"Bearer {raw}"}
    assert refused(request_proof, bearer, method="POST", url=URL, caller=caller) == (
        401,
        "InvalidDPoPProof",
    )
    wrong = {"DPoP": sign_proof(other, method="POST", url=URL, access_token=raw)}
    assert refused(request_proof, wrong, method="POST", url=URL, caller=caller) == (
        401,
        "InvalidDPoPProof",
    )
    right = {"DPoP": sign_proof(key, method="POST", url=URL, access_token=raw)}
    assert request_proof(right, method="POST", url=URL, caller=caller) is not None


# -- one use per identifier ---------------------------------------------------------------


def test_a_token_jti_changes_a_secret_once_per_caller_until_it_expires() -> None:
    replays, now = ReplayCache(), time.time()
    raw = token(exp=int(now) + 300)
    admin, other = caller_of(raw), caller_of(raw, "other")
    use_once(replays, admin, None, [Operation.WRITE], now=now)
    for op in (Operation.WRITE, Operation.ROTATE, Operation.DELETE, Operation.SET_OWNER):
        assert refused(use_once, replays, admin, None, [op], now=now + 1) == (403, "Replay")
    use_once(replays, other, None, [Operation.WRITE], now=now)  # keyed by caller
    use_once(replays, admin, None, [Operation.WRITE], now=now + 300 + 121)  # forgotten after exp


def test_read_only_calls_and_tokens_without_jti_are_not_checked() -> None:
    replays = ReplayCache()
    admin = caller_of(token())
    for _ in range(2):
        use_once(replays, admin, None, [Operation.METADATA, Operation.KEYS, Operation.VERSIONS])
    use_once(replays, admin, None, [Operation.METADATA, Operation.UNDELETE])  # a bulk that changes
    assert refused(use_once, replays, admin, None, [Operation.DESTROY_VERSIONS]) == (
        403,
        "Replay",
    )
    without = caller_of(token(jti=None))
    for _ in range(2):
        use_once(replays, without, None, [Operation.WRITE])


def test_with_dpop_the_proof_jti_counts_for_its_freshness_window() -> None:
    replays, key, raw = ReplayCache(started=time.time() - 5), new_key(), token()
    admin = caller_of(raw)
    proof = request_proof(
        {"DPoP": sign_proof(key, method="POST", url=URL, access_token=raw, jti="proof-jti-1")},
        method="POST",
        url=URL,
        caller=admin,
    )
    assert proof is not None
    use_once(replays, admin, proof, [Operation.WRITE], now=proof.iat)
    assert refused(use_once, replays, admin, proof, [Operation.WRITE], now=proof.iat + 60) == (
        403,
        "Replay",
    )
    use_once(replays, admin, proof, [Operation.WRITE], now=proof.iat + 60 + 121)  # stale by then
    # the token itself may be sent again with a fresh proof
    fresh = request_proof(
        {"DPoP": sign_proof(key, method="POST", url=URL, access_token=raw)},
        method="POST",
        url=URL,
        caller=admin,
    )
    use_once(replays, admin, fresh, [Operation.WRITE])


# -- no caller fills the shared memory -----------------------------------------------------


def caller_in(namespace: str, **claims: Any) -> Caller:
    raw = token(sub=f"system:serviceaccount:{namespace}:admin", **claims)
    return Caller(
        namespace=namespace,
        service_account="admin",
        uid="u",
        token=raw,
        claims=unverified_claims(raw),
    )


def test_one_namespace_fills_its_quota_and_the_others_are_unaffected() -> None:
    replays, now = ReplayCache(per_owner=3), float(int(time.time()))
    filler = [caller_in("greedy", exp=int(now) + 100 + i) for i in range(4)]
    for caller in filler[:3]:
        use_once(replays, caller, None, [Operation.WRITE], now=now)
    with pytest.raises(Problem) as over:
        use_once(replays, filler[3], None, [Operation.WRITE], now=now)
    assert (over.value.status, over.value.code) == (429, "TooManyOneTimeTokens")
    assert over.value.headers["Retry-After"] == "220"  # the first one's exp + 120 s
    use_once(replays, caller_in("quiet"), None, [Operation.WRITE], now=now)  # unaffected
    assert (replays.held_by("greedy"), replays.held_by("quiet"), len(replays)) == (3, 1, 4)
    use_once(replays, filler[3], None, [Operation.WRITE], now=now + 220)  # the first forgotten
    assert replays.held_by("greedy") == 3
    assert refused(use_once, replays, filler[3], None, [Operation.WRITE], now=now + 220) == (
        403,
        "Replay",
    )


def test_the_quota_counts_dpop_proofs_for_the_caller_who_sent_them() -> None:
    replays, key, raw = ReplayCache(per_owner=1, started=time.time() - 5), new_key(), token()
    admin = caller_of(raw)
    proofs = [
        request_proof(
            {"DPoP": sign_proof(key, method="POST", url=URL, access_token=raw)},
            method="POST",
            url=URL,
            caller=admin,
        )
        for _ in range(2)
    ]
    use_once(replays, admin, proofs[0], [Operation.WRITE])
    assert replays.held_by("team") == 1
    assert refused(use_once, replays, admin, proofs[1], [Operation.WRITE]) == (
        429,
        "TooManyOneTimeTokens",
    )


class NoScan(dict[str, Any]):
    """A dict that fails the test when something walks through all of it."""

    def __iter__(self) -> Any:
        raise AssertionError("the replay memory was scanned")

    def items(self) -> Any:
        raise AssertionError("the replay memory was scanned")

    def values(self) -> Any:
        raise AssertionError("the replay memory was scanned")

    def keys(self) -> Any:
        raise AssertionError("the replay memory was scanned")


def test_expired_identifiers_are_forgotten_one_by_one_without_a_scan() -> None:
    """A call forgets what expired since the last one, in expiry order, and never walks
    the whole memory (which took 89 ms per call at 200,000 entries)."""
    replays = ReplayCache(max_entries=1000, per_owner=1000, started=0)
    replays._seen = NoScan()
    for i in range(1000):
        assert replays.first_use(f"k{i}", until=1000.0 + i, now_=1.0, owner="team")
    for _ in range(3):  # full of live entries: refused, nothing rebuilt
        with pytest.raises(Problem) as full:
            replays.first_use("another", until=5000.0, now_=2.0, owner="other")
        assert full.value.code == "ReplayCacheFull"
    assert len(replays) == 1000
    assert replays.first_use("after", until=5000.0, now_=1500.0, owner="other")
    assert len(replays) == 500 and replays.held_by("team") == 499  # k0..k500 forgotten
    assert not replays.first_use("k999", until=9000.0, now_=1500.0, owner="team")
    assert replays.first_use("k1", until=9000.0, now_=1500.0, owner="team")  # expired: usable


def test_forgotten_and_reused_identifiers_keep_the_counts_right() -> None:
    replays = ReplayCache(per_owner=2, started=0)
    assert replays.first_use("a", until=100.0, now_=1.0, owner="team")
    replays.forget("a")  # a read whose use was not counted
    assert replays.held_by("team") == 0
    assert replays.first_use("a", until=100.0, now_=2.0, owner="team")
    assert replays.first_use("b", until=200.0, now_=2.0, owner="team")
    assert not replays.first_use("a", until=100.0, now_=3.0, owner="team")
    assert replays.first_use("c", until=300.0, now_=150.0, owner="team")  # "a" expired
    assert replays.held_by("team") == 2 and len(replays) == 2
    assert replays.first_use("d", until=400.0, now_=301.0, owner="team")
    assert replays.held_by("team") == 1


def test_changes_take_tokens_that_live_at_most_the_bound() -> None:
    replays, now = ReplayCache(started=time.time() - 5), int(time.time())
    year = caller_of(token(iat=now, exp=now + 8760 * 3600))
    assert refused(use_once, replays, year, None, [Operation.WRITE]) == (
        401,
        "TokenLifetimeTooLong",
    )
    use_once(replays, year, None, [Operation.METADATA])  # reads metadata only: not judged
    hour = caller_of(token(iat=now, exp=now + 3600))  # kubectl create token's default
    use_once(replays, hour, None, [Operation.WRITE])
    use_once(replays, year, None, [Operation.WRITE], max_token_lifetime=366 * 86400)
    no_iat = caller_of(token(exp=now + 7200))  # judged by what is left of it
    assert refused(use_once, replays, no_iat, None, [Operation.WRITE])[1] == "TokenLifetimeTooLong"
    never = caller_of(token(exp=None))  # its jti would be kept for a day
    assert refused(use_once, replays, never, None, [Operation.WRITE])[1] == "TokenLifetimeTooLong"
    legacy = caller_of(token(exp=None, jti=None))  # nothing kept: accepted, as before
    use_once(replays, legacy, None, [Operation.WRITE])


# -- the routes: refused before the provider, audited by reason ---------------------------

POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "manage",
            "subjects": [{"service_account": "admin"}],
            "resources": ["yaml://dev/team/**"],
            "purposes": ["*"],
        }
    ],
}


class ReviewAll:
    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        user = {"username": "system:serviceaccount:team:admin", "uid": "u-1"}
        return {"authenticated": True, "audiences": audiences, "user": user}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "vault.yaml"
    path.write_text(yaml.safe_dump({"dev": {"team": {"db": {"password": "old"}}}}))
    return path


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def secrets_api(store: Path, sink: MemorySink, **options: Any) -> SecretsAPI:
    """The API over the YAML store, every caller authenticated, audited into ``sink``."""
    return SecretsAPI(
        ReviewAll(),
        ProviderRegistry({"yaml": YAMLFileProvider(store, dev_mode=True)}),
        audience="crud.secrets",
        auditor=Auditor([sink]),
        pdp=BuiltinPDP.from_yaml(yaml.safe_dump(POLICY)),
        tenants=IndexTenants({}, {}, env_tenant("t1", ["yaml://dev"])),
        public_urls=["http://127.0.0.1"],  # served without TLS here
        **options,
    )


@pytest.fixture
async def client(store: Path, sink: MemorySink) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(secrets_api(store, sink).app())) as test_client:
        yield test_client


def stored(store: Path) -> Any:
    return yaml.safe_load(store.read_text())["dev"]["team"]["db"]


async def write(
    client: TestClient[Any, Any], raw: str, value: str, proof: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"{'DPoP' if proof else 'Bearer'} {raw}"}
    if proof:
        headers["DPoP"] = proof
    body = {"uri": "yaml://dev/team/db", "data": {"password": value}}
    response = await client.post("/api/secrets/v1/secrets", json=body, headers=headers)
    return response.status, await response.json(content_type=None)


async def test_a_replayed_token_changes_nothing_and_is_audited(
    client: TestClient[Any, Any], store: Path, sink: MemorySink
) -> None:
    raw = token()
    assert (await write(client, raw, VALUE))[0] == 200
    status, body = await write(client, raw, "second")
    assert (status, body["code"]) == (403, "Replay")
    assert stored(store)["password"] == VALUE
    metadata = await client.get(
        "/api/secrets/v1/metadata",
        params={"uri": "yaml://dev/team/db"},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert metadata.status == 200  # reading metadata needs no fresh token
    bulk = await client.post(
        "/api/secrets/v1/bulk",
        json={"operations": [{"op": "delete", "uri": "yaml://dev/team/db"}]},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert (bulk.status, (await bulk.json(content_type=None))["code"]) == (403, "Replay")
    assert stored(store)["password"] == VALUE
    refusals = [e for e in sink.events if e.type is EventType.API_REFUSED]
    assert [e.reason for e in refusals] == ["Replay", "Replay"]
    dumped = json.dumps([e.to_json() for e in sink.events])
    assert raw not in dumped and VALUE not in dumped and "team/db" not in dumped


async def test_dpop_proofs_on_management_calls(
    client: TestClient[Any, Any], store: Path, sink: MemorySink
) -> None:
    raw, key = token(), new_key()
    url = str(client.make_url("/api/secrets/v1/secrets"))
    status, body = await write(client, raw, "bad", proof="x.y.z")
    assert (status, body["code"]) == (401, "InvalidDPoPProof")
    wrong_url = sign_proof(key, method="POST", url=url + "/rotate", access_token=raw)
    assert (await write(client, raw, "bad", proof=wrong_url))[1]["code"] == "InvalidDPoPProof"
    assert stored(store)["password"] == "old"
    good = sign_proof(key, method="POST", url=url, access_token=raw)
    assert (await write(client, raw, VALUE, proof=good))[0] == 200
    status, body = await write(client, raw, "again", proof=good)
    assert (status, body["code"]) == (403, "Replay")
    assert stored(store)["password"] == VALUE
    fresh = sign_proof(key, method="POST", url=url, access_token=raw)
    assert (await write(client, raw, VALUE + "2", proof=fresh))[0] == 200  # same token
    reasons = [e.reason for e in sink.events if e.type is EventType.API_REFUSED]
    assert reasons == ["InvalidDPoPProof", "InvalidDPoPProof", "Replay"]


def test_identifiers_issued_before_the_process_started_are_refused() -> None:
    """The replay memory starts empty with the process: a token or proof from before
    then may have been used already, so it is refused. ``iat`` is whole seconds, so the
    second the process started in counts as before it."""
    started = 1_000_000.75
    replays = ReplayCache(started=started)
    assert replays.not_before == 1_000_001.0
    old = caller_of(token(iat=int(started) - 30, exp=int(started) + 300))
    assert refused(use_once, replays, old, None, [Operation.WRITE]) == (403, "Replay")
    same_second = caller_of(
        token(iat=int(started), exp=int(started) + 300)
    )  # may be from 0.75 s before the start
    assert refused(use_once, replays, same_second, None, [Operation.WRITE]) == (403, "Replay")
    fresh = caller_of(token(iat=int(started) + 1, exp=int(started) + 300))
    use_once(replays, fresh, None, [Operation.WRITE])
    without_iat = caller_of(token())
    use_once(replays, without_iat, None, [Operation.WRITE])  # nothing to tell by: as before
    use_once(replays, old, None, [Operation.METADATA])  # changes nothing: not checked
    with pytest.raises(Problem) as proof_from_before:
        replays.first_use("dpop/k/j", started + 60, started, owner="team", issued_at=started - 5)
    assert proof_from_before.value.code == "Replay"


async def test_serving_begins_only_when_every_identifier_it_accepts_is_from_after_the_start(
    store: Path, sink: MemorySink
) -> None:
    """A token from the second the process started in is refused; serving waits for the
    next whole second, so a client can only ever send identifiers issued after the start."""
    api = secrets_api(store, sink)
    ready = max(api.reader.replays.not_before, api.management_replays.not_before)
    async with TestClient(TestServer(api.app())) as test_client:
        assert time.time() >= ready
        assert (await write(test_client, token(iat=int(ready) - 1), VALUE))[1]["code"] == "Replay"
        assert (await write(test_client, token(iat=int(time.time())), VALUE))[0] == 200


async def test_past_its_quota_a_namespace_is_told_when_to_retry(
    store: Path, sink: MemorySink
) -> None:
    api = secrets_api(store, sink, one_time_quota=2)
    async with TestClient(TestServer(api.app())) as test_client:
        for value in ("one", "two"):
            assert (await write(test_client, token(), value))[0] == 200
        headers = {"Authorization": f"Bearer {token()}"}
        body = {"uri": "yaml://dev/team/db", "data": {"password": "three"}}
        response = await test_client.post("/api/secrets/v1/secrets", json=body, headers=headers)
        assert response.status == 429
        assert (await response.json(content_type=None))["code"] == "TooManyOneTimeTokens"
        assert 290 <= int(response.headers["Retry-After"]) <= 420
        assert stored(store)["password"] == "two"
