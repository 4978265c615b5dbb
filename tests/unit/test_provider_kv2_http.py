"""KV v2 provider requests and error mapping, against a small scripted HTTP server.

The real-Vault behaviour is in ``tests/e2e/test_provider_kv2.py``. What a dev
Vault cannot easily do is answered here by a real HTTP server on 127.0.0.1
that plays a scripted Vault: the exact login requests of the Kubernetes and
AppRole auth methods, and hostile error bodies that echo a secret value and
the token (hvac keeps response bodies on its exceptions, so this is where a
leak would show).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from secretgrants.errors import (
    ProviderDenied,
    ProviderError,
    ProviderUnavailable,
    SecretGrantsError,
    SecretNotFound,
    VersionDeleted,
)
from secretgrants.providers import AppRoleAuth, KubernetesAuth, KV2Provider, TokenAuth
from secretgrants.uri import parse_secret_uri

SECRET = "S3cr3t-VALUE-xyz"
TOKEN = "hvs.stub-token-abcdef"
URI = parse_secret_uri("vault+kv2://secret/app/db")
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2c6b3AifQ.c2ln"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


Answer = tuple[int, Any]
Route = Callable[[Seen], Answer]


@dataclass
class StubVault:
    """A scripted Vault: routes by (method, path without query) to an answer."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    addr: str = ""

    def on(self, method: str, path: str, answer: Answer | Route) -> None:
        self.routes[(method, path)] = answer if callable(answer) else (lambda _s, a=answer: a)

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


@pytest.fixture
def stub() -> Iterator[StubVault]:
    state = StubVault()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            path, _, query = self.path.partition("?")
            seen = Seen(self.command, path, dict(self.headers.items()), body, query)
            state.seen.append(seen)
            route = state.routes.get((self.command, path))
            status, payload = route(seen) if route else (404, {"errors": []})
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/plain"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.addr = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def login_ok(token: str = TOKEN, ttl: int = 3600, renewable: bool = False) -> Answer:
    return 200, {"auth": {"client_token": token, "lease_duration": ttl, "renewable": renewable}}


READ_OK: Answer = (
    200,
    {
        "data": {
            "data": {"password": SECRET},
            "metadata": {
                "version": 4,
                "created_time": "2025-01-02T03:04:05.123456789Z",
                "deletion_time": "",
                "destroyed": False,
                "custom_metadata": {"owner": "team"},
            },
        }
    },
)


# ---------------------------------------------------------------- login request shapes


async def test_kubernetes_login_request(stub: StubVault, tmp_path: Path) -> None:
    jwt_file = tmp_path / "token"
    jwt_file.write_text(JWT + "\n")
    stub.on("POST", "/v1/auth/k8s-east/login", login_ok())
    stub.on("GET", "/v1/secret/data/app/db", READ_OK)
    p = KV2Provider(
        stub.addr,
        KubernetesAuth("secretgrants", mount="k8s-east", token_path=jwt_file),
        namespace="team-a",
    )
    try:
        got = await p.read(URI)
    finally:
        await p.close()
    assert dict(got.data) == {"password": SECRET} and got.version == 4
    assert got.metadata is not None and got.metadata.created_time is not None
    assert got.metadata.created_time.microsecond == 123456
    assert got.custom_metadata == {"owner": "team"}

    (login,) = stub.requests_to("/v1/auth/k8s-east/login")
    assert login.method == "POST"
    assert login.body == {"role": "secretgrants", "jwt": JWT}
    assert "X-Vault-Token" not in login.headers
    assert login.headers["X-Vault-Request"] == "true"
    assert login.headers["X-Vault-Namespace"] == "team-a"
    (read,) = stub.requests_to("/v1/secret/data/app/db")
    assert read.headers["X-Vault-Token"] == TOKEN
    assert read.headers["X-Vault-Namespace"] == "team-a"


async def test_kubernetes_jwt_is_read_again_at_each_login(stub: StubVault, tmp_path: Path) -> None:
    """Projected ServiceAccount tokens rotate: a new login reads the file again."""
    jwt_file = tmp_path / "token"
    jwt_file.write_text("jwt-one")
    stub.on("POST", "/v1/auth/kubernetes/login", login_ok(ttl=1))
    stub.on("GET", "/v1/secret/data/app/db", READ_OK)
    p = KV2Provider(stub.addr, KubernetesAuth("r", token_path=jwt_file))
    try:
        await p.read(URI)
        jwt_file.write_text("jwt-two")
        await asyncio.sleep(1.1)  # the 1 s lease has lapsed: log in again
        await p.read(URI)
    finally:
        await p.close()
    logins = stub.requests_to("/v1/auth/kubernetes/login")
    assert [s.body["jwt"] for s in logins] == ["jwt-one", "jwt-two"]
    assert p.logins == 2


async def test_kubernetes_missing_token_file(stub: StubVault, tmp_path: Path) -> None:
    p = KV2Provider(stub.addr, KubernetesAuth("r", token_path=tmp_path / "absent"))
    try:
        with pytest.raises(ProviderUnavailable, match="ServiceAccount token file"):
            await p.read(URI)
    finally:
        await p.close()
    assert stub.seen == []


async def test_approle_login_request(stub: StubVault) -> None:
    stub.on("POST", "/v1/auth/ar/login", login_ok())
    stub.on("GET", "/v1/secret/data/app/db", READ_OK)
    p = KV2Provider(stub.addr, AppRoleAuth("role-1", "secret-1", mount="ar"))
    try:
        await p.read(URI)
    finally:
        await p.close()
    (login,) = stub.requests_to("/v1/auth/ar/login")
    assert login.body == {"role_id": "role-1", "secret_id": "secret-1"}
    assert "secret-1" not in repr(p)


def test_auth_classes_refuse_missing_configuration() -> None:
    with pytest.raises(ValueError, match="token"):
        TokenAuth("")
    with pytest.raises(ValueError, match="role_id"):
        AppRoleAuth("", "s")
    with pytest.raises(ValueError, match="role"):
        KubernetesAuth("")
    assert "hvs.visible" not in repr(TokenAuth("hvs.visible"))


# ---------------------------------------------------------------- re-login on a dead token


async def test_dead_token_relogs_once_then_denied(stub: StubVault) -> None:
    stub.on("POST", "/v1/auth/approle/login", login_ok())
    stub.on(
        "GET",
        "/v1/secret/data/app/db",
        (403, {"errors": ["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"]}),
    )
    p = KV2Provider(stub.addr, AppRoleAuth("r", "s"))
    try:
        with pytest.raises(ProviderDenied, match="permission denied"):
            await p.read(URI)
    finally:
        await p.close()
    assert len(stub.requests_to("/v1/auth/approle/login")) == 2
    assert len(stub.requests_to("/v1/secret/data/app/db")) == 2


async def test_policy_denial_checks_the_token_and_does_not_relogin(stub: StubVault) -> None:
    stub.on("POST", "/v1/auth/approle/login", login_ok())
    stub.on("GET", "/v1/secret/data/app/db", (403, {"errors": ["permission denied"]}))
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 3000}}))
    p = KV2Provider(stub.addr, AppRoleAuth("r", "s"))
    try:
        with pytest.raises(ProviderDenied):
            await p.read(URI)
    finally:
        await p.close()
    assert len(stub.requests_to("/v1/auth/approle/login")) == 1
    assert len(stub.requests_to("/v1/auth/token/lookup-self")) == 1


# ---------------------------------------------------------------- hostile bodies


def echo(status: int, shape: str) -> Route:
    """An error answer that quotes the secret and the caller's token back."""

    def answer(seen: Seen) -> Answer:
        token = seen.headers.get("X-Vault-Token", "")
        text = f"boom {SECRET} {token}"
        if shape == "errors":
            return status, {"errors": [text]}
        if shape == "data":
            return status, {"data": {"data": {"password": SECRET}, "note": text}}
        return status, text

    return answer


@pytest.mark.parametrize(
    ("status", "shape", "expected"),
    [
        (400, "errors", ProviderDenied),
        (401, "text", ProviderDenied),
        (403, "errors", ProviderDenied),
        (404, "data", SecretNotFound),
        (405, "text", ProviderUnavailable),
        (429, "errors", ProviderUnavailable),
        (500, "errors", ProviderUnavailable),
        (500, "text", ProviderUnavailable),
        (502, "text", ProviderUnavailable),
        (503, "errors", ProviderUnavailable),
        (200, "text", ProviderUnavailable),  # not JSON at all
    ],
)
async def test_hostile_error_bodies_never_leak(
    stub: StubVault,
    caplog: pytest.LogCaptureFixture,
    status: int,
    shape: str,
    expected: type[ProviderError],
) -> None:
    caplog.set_level(logging.DEBUG)
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 0}}))
    stub.on("GET", "/v1/secret/data/app/db", echo(status, shape))
    stub.on("GET", "/v1/secret/metadata/app/db", echo(status, shape))
    stub.on("POST", "/v1/secret/data/app/db", echo(status, shape))
    stub.on("POST", "/v1/secret/destroy/app/db", echo(status, shape))
    p = KV2Provider(stub.addr, TokenAuth(TOKEN))
    calls = [
        p.read(URI, version=2),
        p.read_metadata(URI),
        p.write(URI, {"password": SECRET}, actor="a"),
    ]
    if status >= 400:  # a destroy answers no body to misread
        calls.append(p.destroy_versions(URI, [1]))
    try:
        for call in calls:
            with pytest.raises(ProviderError) as err:
                await call
            assert_clean(err.value)
        with pytest.raises(expected) as err:
            await p.read(URI)
        assert_clean(err.value)
    finally:
        await p.close()
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert SECRET not in text and TOKEN not in text


async def test_deleted_version_body_is_classified_not_shown(stub: StubVault) -> None:
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 0}}))
    stub.on(
        "GET",
        "/v1/secret/data/app/db",
        (
            404,
            {
                "data": {
                    "data": {"password": SECRET},  # a hostile server; Vault sends null
                    "metadata": {"version": 3, "deletion_time": "2025-01-01T00:00:00Z"},
                }
            },
        ),
    )
    p = KV2Provider(stub.addr, TokenAuth(TOKEN))
    try:
        with pytest.raises(VersionDeleted, match=r"latest version \(3\)") as err:
            await p.read(URI)
    finally:
        await p.close()
    assert_clean(err.value)


def assert_clean(exc: BaseException) -> None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = [str(current), repr(current), repr(current.args), repr(vars(current))]
        if isinstance(current, SecretGrantsError):
            texts.append(current.message)
        for text in texts:
            assert SECRET not in text, f"{type(current).__name__} leaks the value: {text}"
            assert TOKEN not in text, f"{type(current).__name__} leaks the token: {text}"
        current = current.__cause__ or current.__context__
    assert exc.__cause__ is None and exc.__context__ is None


# ---------------------------------------------------------------- reads on the event loop


async def test_reads_do_not_wait_for_the_thread_pool(stub: StubVault) -> None:
    """A grant decision's two reads run on the loop: a pool busy with writes delays neither."""
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 0}}))
    stub.on("GET", "/v1/secret/data/app/db", READ_OK)
    stub.on("GET", "/v1/secret/metadata/app/db", (200, {"data": {"current_version": 4}}))
    p = KV2Provider(stub.addr, TokenAuth(TOKEN), max_workers=1)
    release = threading.Event()
    try:
        await p.read_metadata(URI)  # logs in (lookup-self, in the pool)
        busy = asyncio.get_running_loop().run_in_executor(p._executor, release.wait, 10)
        data = await asyncio.wait_for(p.read(URI), 5)
        meta = await asyncio.wait_for(p.read_metadata(URI), 5)
        assert not busy.done()
        release.set()
        await busy
    finally:
        release.set()
        await p.close()
    assert data.data == {"password": SECRET} and data.version == 4
    assert meta.current_version == 4
    assert [s.headers.get("X-Vault-Token") for s in stub.requests_to("/v1/secret/data/app/db")] == [
        TOKEN
    ]


async def test_a_read_that_gets_no_answer_times_out(stub: StubVault) -> None:
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 0}}))
    answered = threading.Event()

    def never(_: Seen) -> Answer:
        answered.wait(5)
        return READ_OK

    stub.on("GET", "/v1/secret/data/app/db", never)
    p = KV2Provider(stub.addr, TokenAuth(TOKEN), timeout=0.5)
    try:
        with pytest.raises(ProviderUnavailable, match=r"did not answer read within 0.5s") as err:
            await p.read(URI)
    finally:
        answered.set()
        await p.close()
    assert_clean(err.value)


async def test_a_versioned_read_asks_for_that_version(stub: StubVault) -> None:
    stub.on("GET", "/v1/auth/token/lookup-self", (200, {"data": {"ttl": 0}}))
    stub.on("GET", "/v1/secret/data/app/db", READ_OK)
    p = KV2Provider(stub.addr, TokenAuth(TOKEN), namespace="team-a")
    try:
        stub.seen.clear()
        await p.read(URI, version=4)
    finally:
        await p.close()
    (seen,) = stub.requests_to("/v1/secret/data/app/db")
    assert seen.headers.get("X-Vault-Namespace") == "team-a"
    assert seen.query == "version=4"
