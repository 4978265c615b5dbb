"""The SDK's requests and retry policy, against a mock transport (no server).

What goes in: :class:`SecretsClient` with an ``httpx.MockTransport`` that
records each request and answers from a script. What is asserted: the SDK's
paths are the server's, each method sends the method, path, query and body
the API takes, a fresh token (or DPoP proof) per request, refusals raise
:class:`SecretsAPIError` from the problem body, only calls that change nothing
are retried on 502/503, and ``repr`` shows no token. The SDK against the
real server is in ``tests/e2e/test_secrets_api_management.py``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from secretgrants.client import SecretsAPIError, SecretsClient
from secretgrants.client_management import PATHS, READ_ONLY_OPS
from secretgrants.dpop import verify_proof
from secretgrants.secrets_api.openapi import PATHS as SERVER_PATHS
from secretgrants.secrets_api.operations import OPERATIONS, Operation

URI = "vault+kv2://secret/payments/db"
BASE = "https://api.test"


def test_paths_and_read_only_ops_are_the_servers() -> None:
    assert PATHS is SERVER_PATHS  # one table (api_paths), not two that must agree
    unchanging = {op.value for op, spec in OPERATIONS.items() if not spec.changes}
    assert unchanging - {Operation.READ.value} == READ_ONLY_OPS


class Script:
    """Answers in order (the last one repeats), and the requests seen."""

    def __init__(self, *answers: tuple[int, dict[str, Any]], retry_after: str | None = None):
        self.answers = iter(itertools.chain(answers, itertools.repeat(answers[-1])))
        self.requests: list[httpx.Request] = []
        self.retry_after = retry_after  # sent with every answer that is not a 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = next(self.answers)
        kind = "application/json" if status == 200 else "application/problem+json"
        headers = {"Content-Type": kind}
        if status != 200 and self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
        return httpx.Response(status, json=body, headers=headers)


def tokens() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"token-{next(counter)}"


@pytest.fixture
def script() -> Script:
    return Script((200, {"decisionId": "d1"}))


@pytest.fixture
def client(script: Script) -> Iterator[SecretsClient]:
    transport = httpx.MockTransport(script)
    with SecretsClient(
        BASE, token=tokens(), transport=transport, retries=2, backoff_seconds=0
    ) as c:
        yield c


def problem(status: int, code: str) -> tuple[int, dict[str, Any]]:
    return status, {"status": status, "code": code, "detail": f"{code} happened"}


@pytest.mark.parametrize(
    ("call", "method", "path", "query", "body"),
    [
        (
            lambda c: c.write(URI, {"k": "v"}),
            "POST",
            "secrets",
            {},
            {"uri": URI, "data": {"k": "v"}},
        ),
        (
            lambda c: c.rotate(URI, {"k": "v"}),
            "POST",
            "rotate",
            {},
            {"uri": URI, "data": {"k": "v"}},
        ),
        (lambda c: c.delete(URI), "DELETE", "secrets", {"uri": URI}, None),
        (
            lambda c: c.delete(URI, [1, 2], destroy=True),
            "DELETE",
            "secrets",
            {"uri": URI, "versions": "1,2", "destroy": "true"},
            None,
        ),
        (lambda c: c.undelete(URI, [1]), "POST", "undelete", {}, {"uri": URI, "versions": [1]}),
        (
            lambda c: c.destroy_versions(URI, [3]),
            "POST",
            "destroy_versions",
            {},
            {"uri": URI, "versions": [3]},
        ),
        (lambda c: c.set_owner(URI, "team"), "POST", "owner", {}, {"uri": URI, "owner": "team"}),
        (lambda c: c.metadata(URI), "GET", "metadata", {"uri": URI}, None),
        (lambda c: c.metadata_detail(URI), "GET", "metadata_detail", {"uri": URI}, None),
        (lambda c: c.keys(URI), "GET", "keys", {"uri": URI}, None),
        (lambda c: c.versions(URI), "GET", "versions", {"uri": URI}, None),
    ],
)
def test_each_method_sends_what_its_endpoint_takes(
    client: SecretsClient,
    script: Script,
    call: Callable[[SecretsClient], Any],
    method: str,
    path: str,
    query: dict[str, str],
    body: Any,
) -> None:
    assert call(client) == {"decisionId": "d1"}
    [request] = script.requests
    assert (request.method, request.url.path, dict(request.url.params)) == (
        method,
        PATHS[path],
        query,
    )
    assert (json.loads(request.content) if request.content else None) == body
    assert request.headers["Authorization"] == "Bearer token-0"


def test_refusals_raise_with_the_problem_code(client: SecretsClient, script: Script) -> None:
    script.answers = iter([problem(403, "Replay")])
    with pytest.raises(SecretsAPIError) as err:
        client.write(URI, {"k": "v"})
    assert (err.value.status, err.value.code, err.value.detail) == (
        403,
        "Replay",
        "Replay happened",
    )


@pytest.mark.parametrize("status", [502, 503])
def test_only_calls_that_change_nothing_are_retried(status: int) -> None:
    def sent(call: Callable[[SecretsClient], Any]) -> int:
        script = Script(problem(status, "ProviderUnavailable"))
        transport = httpx.MockTransport(script)
        with SecretsClient(
            BASE, token=tokens(), transport=transport, retries=2, backoff_seconds=0
        ) as c:
            with pytest.raises(SecretsAPIError) as err:
                call(c)
        assert err.value.status == status
        assert len({r.headers["Authorization"] for r in script.requests}) == len(script.requests)
        return len(script.requests)

    for changes in [
        lambda c: c.write(URI, {"k": "v"}),
        lambda c: c.rotate(URI, {"k": "v"}),
        lambda c: c.delete(URI),
        lambda c: c.undelete(URI, [1]),
        lambda c: c.destroy_versions(URI, [1]),
        lambda c: c.set_owner(URI, "x"),
        lambda c: c.bulk([{"op": "metadata", "uri": URI}, {"op": "delete", "uri": URI}]),
    ]:
        assert sent(changes) == 1
    for reads in [
        lambda c: c.read("ns", "grant"),
        lambda c: c.metadata(URI),
        lambda c: c.metadata_detail(URI),
        lambda c: c.keys(URI),
        lambda c: c.versions(URI),
        lambda c: c.bulk([{"op": "metadata", "uri": URI}, {"op": "keys", "uri": URI}]),
    ]:
        assert sent(reads) == 3


def test_too_many_one_time_tokens_waits_its_retry_after_for_any_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 429 is refused before anything was done, so a write may be tried again too;
    a Retry-After longer than the client will wait raises at once."""
    slept: list[float] = []
    monkeypatch.setattr("secretgrants.client.time.sleep", slept.append)
    busy = problem(429, "TooManyOneTimeTokens")
    quick = Script(busy, (200, {"decisionId": "d1"}), retry_after="1")
    with SecretsClient(BASE, token=tokens(), transport=httpx.MockTransport(quick)) as c:
        c.write(URI, {"k": "v"})
    assert len(quick.requests) == 2 and slept == [1.0]

    slow = Script(busy, (200, {"decisionId": "d1"}), retry_after="3600")
    with SecretsClient(BASE, token=tokens(), transport=httpx.MockTransport(slow)) as c:
        with pytest.raises(SecretsAPIError) as err:
            c.write(URI, {"k": "v"})
    assert (err.value.status, err.value.code, len(slow.requests)) == (
        429,
        "TooManyOneTimeTokens",
        1,
    )


def test_no_retry_on_other_errors(client: SecretsClient, script: Script) -> None:
    script.answers = iter([problem(500, "InternalError"), (200, {"decisionId": "d1"})])
    with pytest.raises(SecretsAPIError):
        client.metadata(URI)
    assert len(script.requests) == 1


def test_dpop_signs_a_fresh_proof_per_request_for_the_request_method_and_url() -> None:
    script = Script((200, {"decisionId": "d1", "version": 2}))
    with SecretsClient(
        BASE, token=lambda: "reused", dpop=True, transport=httpx.MockTransport(script)
    ) as c:
        c.rotate(URI, {"k": "v"})
        c.delete(URI, [1])
    proofs = [
        verify_proof(r.headers["DPoP"], method=r.method, url=str(r.url), access_token="reused")
        for r in script.requests
    ]
    assert [r.headers["Authorization"] for r in script.requests] == ["DPoP reused"] * 2
    assert proofs[0].jti != proofs[1].jti and proofs[0].jkt == proofs[1].jkt


def test_bulk_returns_the_results_and_a_refused_item_does_not_raise() -> None:
    results = [{"index": 0, "op": "metadata", "status": 403, "code": "Denied"}]
    script = Script((200, {"results": results}))
    with SecretsClient(BASE, token=tokens(), transport=httpx.MockTransport(script)) as c:
        assert c.bulk([{"op": "metadata", "uri": URI}]) == results
    assert json.loads(script.requests[0].content) == {
        "operations": [{"op": "metadata", "uri": URI}]
    }


def test_repr_shows_no_token() -> None:
    with SecretsClient(BASE, token=lambda: "s3cr3t-token") as c:
        assert "s3cr3t" not in repr(c) and BASE in repr(c)
