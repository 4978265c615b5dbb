"""The PDP clients against real servers over HTTP on 127.0.0.1.

* the AuthZEN client against the built-in engine served by ``AuthZENServer``;
* the OPA client against a real ``opa run --server`` with the example Rego;
* both clients against small scripted HTTP servers that misbehave on purpose
  (malformed JSON, HTTP errors, slowness, dropped connections), to show they
  fail closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from secretgrants.devenv import OPAServer, free_port
from secretgrants.policy import (
    AccessRequest,
    AuthZENClient,
    AuthZENServer,
    BuiltinPolicy,
    Decision,
    Effect,
    HTTPOptions,
    OPAClient,
    PolicyDecisionPoint,
    RequestContext,
    Resource,
    Subject,
    apply_obligations,
)
from secretgrants.reasons import Purpose

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = REPO / "examples" / "policy" / "builtin-policy.yaml"
EXAMPLE_REGO = REPO / "examples" / "policy" / "secretgrants.rego"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FAST = HTTPOptions(timeout=2.0, retries=2, retry_backoff=0.02)


def ask(
    uri: str = "vault://secret/payments/db#password",
    purpose: str = "read",
    *,
    namespace: str = "payments",
    sa: str = "payments-api",
    tenant: str | None = "acme",
    correlation_id: str | None = None,
    traceparent: str | None = None,
    ttl: int | None = None,
    uses: int | None = None,
) -> AccessRequest:
    return AccessRequest(
        subject=Subject(namespace=namespace, service_account=sa, tenant=tenant),
        resource=Resource.from_uri(uri),
        purpose=Purpose(purpose),
        context=RequestContext(
            justification="e2e",
            correlation_id=correlation_id,
            traceparent=traceparent,
            requested_ttl_seconds=ttl,
            requested_max_uses=uses,
        ),
    )


PERMIT = ask()
DENY = ask("vault://secret/billing/db")

# A spread of requests over every rule of the example policy (and past them).
MATRIX = [
    ask(),
    ask("vault://secret/payments/db", "read_metadata"),
    ask("vault://secret/payments/a/b/c"),
    ask("vault://secret/payments/db", "write"),
    ask("vault://secret/payments/db", "write", sa="payments-rotator"),
    ask("vault://secret/payments/db", "rotate", sa="payments-rotator"),
    ask("vault://secret/payments/other", "rotate", sa="payments-rotator"),
    ask("vault://secret/payments/db", tenant="globex"),
    ask("vault://secret/payments/db", tenant=None),
    ask("vault://secret/payments/db", "destroy_versions"),
    ask("vault://secret/payments/db", "destroy_versions", namespace="platform", sa="secret-admin"),
    ask("vault://secret/payments/db", "delete", namespace="platform", sa="secret-admin"),
    ask("openbao://kv/billing/shared#api_key", namespace="billing", sa="worker"),
    ask("openbao://kv/billing/shared#api_key", namespace="invoicing", sa="worker"),
    ask("openbao://kv/billing/shared#other", namespace="billing", sa="worker"),
    ask("openbao://kv/billing/shared", namespace="billing", sa="worker"),
    ask("openbao://kv/billing/shared#api_key", namespace="shipping", sa="worker"),
    ask("vault://secret/anything/here", "read_metadata", namespace="ci", sa="ci-runner"),
    ask("openbao://kv/x", "read_metadata", namespace="ci", sa="ci-runner"),
    ask("vault://secret/anything/here", "read", namespace="ci", sa="ci-runner"),
    ask("yaml://dev/app#token", namespace="dev-alice", sa="default"),
    ask("yaml://dev/app", "destroy_versions", namespace="dev-alice", sa="default"),
    ask("yaml://dev/app", "owner_update", namespace="dev-alice", sa="default"),
    ask("yaml://prod/app", namespace="dev-alice", sa="default"),
    ask("vault://secret/billing/db"),
]


@pytest.fixture(scope="module")
def policy() -> BuiltinPolicy:
    return BuiltinPolicy.from_file(EXAMPLE_POLICY)


@pytest.fixture
def server(policy: BuiltinPolicy) -> Iterator[AuthZENServer]:
    srv = AuthZENServer(policy)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def paths(server: AuthZENServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.requests]


# ------------------------------------------------------------ scripted servers


class Scripted:
    """A real HTTP server whose answer each test scripts: ``respond(handler, body)``."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler, bytes], None]) -> None:
        self.hits: list[tuple[str, str]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                scripted.hits.append((self.command, self.path))
                try:
                    respond(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout test)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def reply_json(doc: object, status: int = 200) -> Callable[[BaseHTTPRequestHandler, bytes], None]:
    return lambda h, _: send(h, status, json.dumps(doc).encode(), "application/json")


def reply_raw(text: str, status: int = 200) -> Callable[[BaseHTTPRequestHandler, bytes], None]:
    return lambda h, _: send(h, status, text.encode(), "application/json")


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler, bytes], None]], Scripted]]:
    started: list[Scripted] = []

    def start(respond: Callable[[BaseHTTPRequestHandler, bytes], None]) -> Scripted:
        s = Scripted(respond)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def authzen_at(url: str, **kw: Any) -> PolicyDecisionPoint:
    return AuthZENClient(url, evaluation_endpoint=url + "/access/v1/evaluation", **kw)


def opa_at(url: str, **kw: Any) -> PolicyDecisionPoint:
    return OPAClient(url, **kw)


CLIENTS = [pytest.param(authzen_at, id="authzen"), pytest.param(opa_at, id="opa")]


def assert_unavailable(d: Decision, kind: str) -> None:
    assert d.effect is Effect.DENY
    assert d.reason == "PDPUnavailable"
    assert d.retryable
    assert d.pdp_kind == kind
    uuid.UUID(d.decision_id)


# ------------------------------------------------------------ AuthZEN client + built-in server


async def test_authzen_permit_and_deny(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url, http=FAST)
    try:
        permit = await client.evaluate(ask(ttl=3600, uses=3))
        assert permit.effect is Effect.PERMIT
        assert permit.reason == "permitted by rule 'payments-read'"
        assert (permit.obligations.ttl_seconds, permit.obligations.max_uses) == (900, 20)
        assert permit.pdp_kind == "authzen"
        uuid.UUID(permit.decision_id)  # the built-in engine's id, passed through
        enforced = apply_obligations(3600, 3, permit)
        assert (enforced.permitted, enforced.ttl_seconds, enforced.max_uses) == (True, 900, 3)

        deny = await client.evaluate(DENY)
        assert deny.effect is Effect.DENY
        assert deny.reason == "no rule matched"
        assert not deny.retryable

        rule_deny = await client.evaluate(ask("vault://secret/payments/db", "destroy_versions"))
        assert rule_deny.reason == "denied by rule 'no-destroy'"
    finally:
        await client.close()


async def test_authzen_matches_the_engine(server: AuthZENServer, policy: BuiltinPolicy) -> None:
    client = AuthZENClient(server.base_url, http=FAST)
    try:
        remote = [await client.evaluate(r) for r in MATRIX]
    finally:
        await client.close()
    local = [policy.decide(r) for r in MATRIX]
    assert [(d.effect, d.reason, d.obligations) for d in remote] == [
        (d.effect, d.reason, d.obligations) for d in local
    ]
    assert {d.effect for d in local} == {Effect.PERMIT, Effect.DENY}


async def test_discovery(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url, http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
        assert (await client.evaluate(PERMIT)).permitted
        endpoints = await client.endpoints()
    finally:
        await client.close()
    assert endpoints.evaluation == server.base_url + "/access/v1/evaluation"
    assert endpoints.evaluations == server.base_url + "/access/v1/evaluations"
    assert paths(server) == [
        ("GET", "/.well-known/authzen-configuration"),  # once, then cached
        ("POST", "/access/v1/evaluation"),
        ("POST", "/access/v1/evaluation"),
    ]


async def test_no_discovery_with_an_explicit_endpoint(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url + "/access/v1/evaluation", http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
    finally:
        await client.close()
    assert paths(server) == [("POST", "/access/v1/evaluation")]


async def test_discovery_falls_back_to_default_paths_on_404(scripted: Any) -> None:
    def respond(h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.path.startswith("/.well-known/"):
            send(h, 404, b"{}", "application/json")
        else:
            send(h, 200, b'{"decision": true}', "application/json")

    s = scripted(respond)
    client = AuthZENClient(s.url, http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
    finally:
        await client.close()
    assert s.hits == [
        ("GET", "/.well-known/authzen-configuration"),
        ("POST", "/access/v1/evaluation"),
    ]


@pytest.mark.parametrize(
    "meta",
    [
        {"policy_decision_point": "https://elsewhere.example"},
        {"access_evaluation_endpoint": "/relative"},
        ["not", "an", "object"],
    ],
)
async def test_bad_metadata_fails_closed(scripted: Any, meta: object) -> None:
    s = scripted(reply_json(meta))
    client = AuthZENClient(s.url, http=FAST)
    try:
        assert_unavailable(await client.evaluate(PERMIT), "authzen")
    finally:
        await client.close()
    assert all(path.startswith("/.well-known/") for _, path in s.hits)


async def test_batch(server: AuthZENServer, policy: BuiltinPolicy) -> None:
    client = AuthZENClient(server.base_url, http=FAST)
    try:
        decisions = await client.evaluate_many(MATRIX)
    finally:
        await client.close()
    assert paths(server) == [
        ("GET", "/.well-known/authzen-configuration"),
        ("POST", "/access/v1/evaluations"),
    ]
    expected = [policy.decide(r) for r in MATRIX]
    assert [(d.effect, d.reason, d.obligations) for d in decisions] == [
        (d.effect, d.reason, d.obligations) for d in expected
    ]
    assert len({d.decision_id for d in decisions}) == len(MATRIX)


async def test_batch_shared_subject_and_chunks(server: AuthZENServer) -> None:
    requests = [ask(f"vault://secret/payments/s{i}", correlation_id="batch-1") for i in range(5)]
    client = AuthZENClient(server.base_url, http=FAST, max_batch_size=2)
    try:
        decisions = await client.evaluate_many(requests)
    finally:
        await client.close()
    assert all(d.permitted for d in decisions)
    posts = [r for r in server.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/access/v1/evaluations"] * 3
    assert {r.request_id for r in posts} == {"batch-1"}


async def test_batch_disabled_uses_single_evaluations(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url, http=FAST, use_batch=False)
    try:
        decisions = await client.evaluate_many([PERMIT, DENY, PERMIT])
    finally:
        await client.close()
    assert [d.permitted for d in decisions] == [True, False, True]
    assert paths(server).count(("POST", "/access/v1/evaluation")) == 3


async def test_batch_falls_back_to_single_evaluations(scripted: Any) -> None:
    def respond(h: BaseHTTPRequestHandler, body: bytes) -> None:
        if h.path.endswith("/evaluations"):
            send(h, 404, b"{}", "application/json")
        else:
            send(h, 200, b'{"decision": true}', "application/json")

    s = scripted(respond)
    client = authzen_at(s.url, evaluations_endpoint=s.url + "/access/v1/evaluations", http=FAST)
    try:
        assert all(d.permitted for d in await client.evaluate_many([PERMIT] * 3))
        assert all(d.permitted for d in await client.evaluate_many([PERMIT] * 2))
    finally:
        await client.close()
    assert [path for _, path in s.hits] == ["/access/v1/evaluations"] + [
        "/access/v1/evaluation"
    ] * 5


async def test_batch_answer_of_the_wrong_length_fails_closed(scripted: Any) -> None:
    s = scripted(reply_json({"evaluations": [{"decision": True}]}))
    client = authzen_at(s.url, evaluations_endpoint=s.url + "/access/v1/evaluations", http=FAST)
    try:
        decisions = await client.evaluate_many([PERMIT, PERMIT, PERMIT])
    finally:
        await client.close()
    for d in decisions:
        assert_unavailable(d, "authzen")


async def test_batch_item_malformed_fails_closed_alone(scripted: Any) -> None:
    s = scripted(reply_json({"evaluations": [{"decision": True}, {"decision": "maybe"}]}))
    client = authzen_at(s.url, evaluations_endpoint=s.url + "/access/v1/evaluations", http=FAST)
    try:
        first, second = await client.evaluate_many([PERMIT, PERMIT])
    finally:
        await client.close()
    assert first.permitted
    assert_unavailable(second, "authzen")


async def test_request_id_and_traceparent_reach_the_server(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url + "/access/v1/evaluation", http=FAST)
    try:
        await client.evaluate(ask(correlation_id="corr-42", traceparent=TRACEPARENT))
        await client.evaluate(ask())
    finally:
        await client.close()
    first, second = server.requests
    assert (first.request_id, first.traceparent) == ("corr-42", TRACEPARENT)
    assert second.traceparent is None
    assert second.request_id is not None
    uuid.UUID(second.request_id)  # made up by the client when the request has none


async def test_pdp_down_then_back(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url, http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
        server.stop()
        down = await client.evaluate(PERMIT)
        assert_unavailable(down, "authzen")
        assert "unreachable" in (down.detail or "")
        assert all(d.reason == "PDPUnavailable" for d in await client.evaluate_many(MATRIX[:3]))
        server.start()  # same port
        assert (await client.evaluate(PERMIT)).permitted
        assert (await client.evaluate_many([PERMIT, DENY]))[0].permitted
    finally:
        await client.close()


@pytest.mark.parametrize("make", CLIENTS)
async def test_nothing_listening(make: Callable[..., PolicyDecisionPoint]) -> None:
    client = make(f"http://127.0.0.1:{free_port()}", http=FAST)
    try:
        started = time.monotonic()
        d = await client.evaluate(PERMIT)
        assert time.monotonic() - started < 2
    finally:
        await client.close()
    assert_unavailable(d, client.kind)


@pytest.mark.parametrize("make", CLIENTS)
@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(reply_raw("{not json"), id="malformed-json"),
        pytest.param(reply_raw("<html>oops</html>"), id="html"),
        pytest.param(reply_raw(""), id="empty"),
        pytest.param(reply_json({"error": "boom"}, 500), id="http-500"),
        pytest.param(reply_json({"decision": True}, 503), id="http-503-even-if-permit"),
        pytest.param(reply_json({"decision": True}, 403), id="http-403"),
        pytest.param(reply_json({"result": {"allow": "yes"}, "decision": "yes"}), id="wrong-types"),
        pytest.param(reply_json([True]), id="array"),
    ],
)
async def test_bad_answers_fail_closed_without_retry(
    scripted: Any, make: Callable[..., PolicyDecisionPoint], respond: Any
) -> None:
    s = scripted(respond)
    client = make(s.url, http=FAST)
    try:
        d = await client.evaluate(PERMIT)
    finally:
        await client.close()
    assert_unavailable(d, client.kind)
    assert len(s.hits) == 1  # an HTTP answer is never retried


@pytest.mark.parametrize("make", CLIENTS)
async def test_timeout_fails_closed(
    scripted: Any, make: Callable[..., PolicyDecisionPoint]
) -> None:
    release = threading.Event()

    def slow(h: BaseHTTPRequestHandler, body: bytes) -> None:
        release.wait(5)
        with_context = {"decision": True, "result": {"allow": True}}
        send(h, 200, json.dumps(with_context).encode(), "application/json")

    s = scripted(slow)
    client = make(s.url, http=HTTPOptions(timeout=0.3, retries=2, retry_backoff=0.01))
    try:
        started = time.monotonic()
        d = await client.evaluate(PERMIT)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        await client.close()
    assert_unavailable(d, client.kind)
    assert "timed out" in (d.detail or "")
    assert elapsed < 1.5
    assert len(s.hits) == 1  # a slow PDP is not asked again


@pytest.mark.parametrize("make", CLIENTS)
async def test_dropped_connections_are_retried(
    scripted: Any, make: Callable[..., PolicyDecisionPoint]
) -> None:
    def flaky(h: BaseHTTPRequestHandler, body: bytes) -> None:
        if len(s.hits) <= 2:  # drop the first two without a word
            h.close_connection = True
            return
        send(h, 200, b'{"decision": true, "result": {"allow": true}}', "application/json")

    s = scripted(flaky)
    client = make(s.url, http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
    finally:
        await client.close()
    assert len(s.hits) == 3


@pytest.mark.parametrize("make", CLIENTS)
async def test_retries_are_bounded(scripted: Any, make: Callable[..., PolicyDecisionPoint]) -> None:
    def drop(h: BaseHTTPRequestHandler, body: bytes) -> None:
        h.close_connection = True

    s = scripted(drop)
    client = make(s.url, http=HTTPOptions(timeout=2, retries=1, retry_backoff=0.01))
    try:
        d = await client.evaluate(PERMIT)
    finally:
        await client.close()
    assert_unavailable(d, client.kind)
    assert len(s.hits) == 2


async def test_many_concurrent_decisions(server: AuthZENServer) -> None:
    client = AuthZENClient(server.base_url, http=HTTPOptions(max_connections=10))
    try:
        decisions = await asyncio.gather(
            *(client.evaluate(PERMIT if i % 2 else DENY) for i in range(100))
        )
    finally:
        await client.close()
    assert [d.permitted for d in decisions] == [bool(i % 2) for i in range(100)]


# ------------------------------------------------------------ the server's protocol


def test_server_metadata_and_errors(server: AuthZENServer) -> None:
    base = server.base_url
    with httpx.Client(base_url=base, timeout=5) as http:
        meta = http.get("/.well-known/authzen-configuration").json()
        assert meta == {
            "policy_decision_point": base,
            "access_evaluation_endpoint": base + "/access/v1/evaluation",
            "access_evaluations_endpoint": base + "/access/v1/evaluations",
        }

        r = http.get("/nope")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404 and r.json()["title"] == "Not Found"

        r = http.get("/access/v1/evaluation")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = http.post("/.well-known/authzen-configuration", json={"a": 1})
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        r = http.post("/elsewhere", json={"a": 1})
        assert r.status_code == 404

        r = http.post("/access/v1/evaluation", content=b"{oops", headers={"X-Request-ID": "r-1"})
        assert r.status_code == 400
        assert r.headers["x-request-id"] == "r-1"
        problem = r.json()
        assert problem["type"] == "about:blank" and problem["status"] == 400
        assert "not valid JSON" in problem["detail"]

        r = http.post("/access/v1/evaluation", json={"subject": {"type": "user", "id": "alice"}})
        assert r.status_code == 400 and "subject.type" in r.json()["detail"]

        r = http.post(
            "/access/v1/evaluation", content=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415

        body = PERMIT.to_authzen()
        r = http.post("/access/v1/evaluation", json=body)
        assert r.status_code == 200
        answer = r.json()
        assert answer["decision"] is True
        assert answer["context"]["reason"] == "permitted by rule 'payments-read'"
        assert answer["context"]["ttl_seconds"] == 900

        # the connection survives the errors (keep-alive)
        assert http.get("/.well-known/authzen-configuration").status_code == 200


def test_server_batch_semantics(server: AuthZENServer) -> None:
    permit, deny = PERMIT.to_authzen(), DENY.to_authzen()
    items = [{"resource": permit["resource"]}, {"resource": deny["resource"]}] * 2
    shared = {k: permit[k] for k in ("subject", "action", "context")}
    with httpx.Client(base_url=server.base_url, timeout=5) as http:
        r = http.post("/access/v1/evaluations", json={**shared, "evaluations": items})
        assert [e["decision"] for e in r.json()["evaluations"]] == [True, False, True, False]

        r = http.post(
            "/access/v1/evaluations",
            json={
                **shared,
                "evaluations": items,
                "options": {"evaluations_semantic": "deny_on_first_deny"},
            },
        )
        assert [e["decision"] for e in r.json()["evaluations"]] == [True, False]

        r = http.post(
            "/access/v1/evaluations",
            json={
                **shared,
                "evaluations": items[1:],
                "options": {"evaluations_semantic": "permit_on_first_permit"},
            },
        )
        assert [e["decision"] for e in r.json()["evaluations"]] == [False, True]

        r = http.post("/access/v1/evaluations", json=permit)  # no evaluations: a single one
        assert r.json()["decision"] is True

        r = http.post("/access/v1/evaluations", json={**shared, "evaluations": [{}, {"x": 1}]})
        assert r.status_code == 400
        assert r.json()["detail"].startswith("evaluations[0]: resource")

        r = http.post(
            "/access/v1/evaluations",
            json={**shared, "evaluations": items, "options": {"evaluations_semantic": "all"}},
        )
        assert r.status_code == 400


def test_server_binds_loopback_by_default(policy: BuiltinPolicy) -> None:
    srv = AuthZENServer(policy)
    assert srv.host == "127.0.0.1"
    url = srv.start()
    try:
        assert url.startswith("http://127.0.0.1:")
    finally:
        srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/.well-known/authzen-configuration", timeout=2)


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    code = (
        "import sys; from secretgrants.policy.server import serve; "
        f"serve({str(EXAMPLE_POLICY)!r}, port={port}, on_ready=lambda u: print(u, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"http://127.0.0.1:{port}"
        r = httpx.post(line + "/access/v1/evaluation", json=PERMIT.to_authzen(), timeout=5)
        assert r.json()["decision"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ OPA client + real OPA


@pytest.fixture(scope="module")
def example_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPAServer]:
    server = OPAServer(policies=[EXAMPLE_REGO], workdir=tmp_path_factory.mktemp("opa-example"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_opa_permit_and_deny(example_opa: OPAServer) -> None:
    client = OPAClient(example_opa.addr, path="secretgrants/authz/decision", http=FAST)
    try:
        permit = await client.evaluate(ask(correlation_id="opa-corr", traceparent=TRACEPARENT))
        assert permit.effect is Effect.PERMIT
        assert permit.reason == "permitted by rule 'payments-read'"
        assert (permit.obligations.ttl_seconds, permit.obligations.max_uses) == (900, 20)
        assert permit.pdp_kind == "opa"
        deny = await client.evaluate(DENY)
        assert (deny.effect, deny.reason, deny.retryable) == (Effect.DENY, "no rule matched", False)
        rule_deny = await client.evaluate(ask("vault://secret/payments/db", "destroy_versions"))
        assert rule_deny.reason == "denied by rule 'no-destroy'"
    finally:
        await client.close()


async def test_opa_and_builtin_agree_on_the_example_policy(
    example_opa: OPAServer, policy: BuiltinPolicy
) -> None:
    """The Rego file and the YAML file are the same policy."""
    client = OPAClient(example_opa.addr, http=FAST)
    try:
        remote = await client.evaluate_many(MATRIX)
    finally:
        await client.close()
    local = [policy.decide(r) for r in MATRIX]
    for request, got, want in zip(MATRIX, remote, local, strict=True):
        assert (got.effect, got.reason, got.obligations) == (
            want.effect,
            want.reason,
            want.obligations,
        ), request.to_authzen()["resource"]["id"]


async def test_opa_settings_default_path_reads_the_package(example_opa: OPAServer) -> None:
    client = OPAClient(example_opa.addr, path="secretgrants/authz", http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).reason == "permitted by rule 'payments-read'"
        assert (await client.evaluate(DENY)).reason == "no rule matched"
    finally:
        await client.close()


async def test_opa_undefined_decision_is_a_deny(opa: OPAServer) -> None:
    package = f"sgtest_{uuid.uuid4().hex[:8]}"
    opa.put_policy(
        package,
        f"package {package}\n\n"
        'decision := {"allow": true, "reason": "only for staging"} if {\n'
        '\tinput.subject.properties.namespace == "staging"\n}\n',
    )
    client = OPAClient(opa.addr, path=f"{package}/decision", http=FAST)
    try:
        d = await client.evaluate(PERMIT)
        assert d.effect is Effect.DENY
        assert d.reason.startswith("policy decision undefined")
        assert not d.retryable
        staging = await client.evaluate(ask(namespace="staging"))
        assert staging.permitted and staging.reason == "only for staging"
        missing = OPAClient(opa.addr, path=f"{package}/nothing_here", http=FAST)
        assert (await missing.evaluate(PERMIT)).reason.startswith("policy decision undefined")
        await missing.close()
    finally:
        await client.close()


async def test_opa_unknown_obligation(opa: OPAServer) -> None:
    package = f"sgtest_{uuid.uuid4().hex[:8]}"
    opa.put_policy(
        package,
        f"package {package}\n\n"
        'decision := {"allow": true, "obligations": {"ttl_seconds": 60, "watermark": true}}\n',
    )
    client = OPAClient(opa.addr, path=f"{package}/decision", http=FAST)
    try:
        d = await client.evaluate(PERMIT)
    finally:
        await client.close()
    assert d.permitted and d.obligations.extra == {"watermark": True}
    enforced = apply_obligations(600, None, d)
    assert not enforced.permitted
    assert enforced.decision.reason == "UnknownObligation"


async def test_opa_down_then_back(tmp_path: Path) -> None:
    server = OPAServer(policies=[EXAMPLE_REGO], workdir=tmp_path).start()
    client = OPAClient(server.addr, http=FAST)
    try:
        assert (await client.evaluate(PERMIT)).permitted
        server.stop()
        assert_unavailable(await client.evaluate(PERMIT), "opa")
        server.start()
        assert (await client.evaluate(PERMIT)).permitted
    finally:
        await client.close()
        server.stop()
