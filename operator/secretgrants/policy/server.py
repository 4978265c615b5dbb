"""The built-in rules served as an AuthZEN 1.0 PDP, on the standard library alone.

``secretgrants pdp serve`` runs :func:`serve`; tests use :class:`AuthZENServer`
(``start()`` returns the base URL, ``stop()`` closes the listener *and* every
open connection, so a stopped server is really gone; ``start()`` again
listens on the same port).

Endpoints:

* ``GET /.well-known/authzen-configuration``: the PDP metadata.
* ``POST /access/v1/evaluation``: one evaluation.
* ``POST /access/v1/evaluations``: a batch, with top-level defaults and
  ``options.evaluations_semantic`` (``execute_all``, ``deny_on_first_deny``,
  ``permit_on_first_permit``).

A bad request gets an RFC 9457 problem document (``application/problem+json``)
with status 400 (411, 413, 415 where those fit); an unknown path 404, a wrong
method 405. ``X-Request-ID`` is echoed. Request bodies are never logged.
It binds 127.0.0.1 unless told otherwise, speaks plain HTTP (put TLS in
front when it leaves the host) and has no authentication of its callers.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from secretgrants.policy.authzen import EVALUATION_PATH, EVALUATIONS_PATH, WELL_KNOWN_PATH
from secretgrants.policy.builtin import BuiltinPolicy
from secretgrants.policy.model import AccessRequest, Decision

__all__ = ["AuthZENServer", "ServedRequest", "authzen_answer", "serve"]

log = logging.getLogger("secretgrants.policy.server")

MAX_BODY_BYTES: Final = 1 << 20
MAX_EVALUATIONS: Final = 1000
_SEMANTICS: Final = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
_SHARED: Final = ("subject", "action", "resource", "context")


class _BadRequest(Exception):
    def __init__(self, detail: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class ServedRequest:
    """One request the server answered (kept for tests and debugging; no bodies)."""

    method: str
    path: str
    status: int
    request_id: str | None
    traceparent: str | None
    body: bytes | None = None  # only with record_bodies=True (tests that inspect requests)


def authzen_answer(decision: Decision) -> dict[str, Any]:
    """A decision as an AuthZEN evaluation answer: ``{"decision": bool, "context": {...}}``."""
    context: dict[str, Any] = {"id": decision.decision_id, "reason": decision.reason}
    if decision.permitted:
        context.update(decision.obligations.as_dict())
    return {"decision": decision.permitted, "context": context}


def _evaluate(policy: BuiltinPolicy, body: object, where: str = "") -> Decision:
    try:
        request = AccessRequest.from_authzen(body)
    except ValueError as exc:
        raise _BadRequest(f"{where}{exc}") from None
    return policy.decide(request)


def _batch(policy: BuiltinPolicy, body: Mapping[str, Any]) -> dict[str, Any]:
    items = body.get("evaluations")
    if items is None or items == []:
        return authzen_answer(_evaluate(policy, body))
    if not isinstance(items, list):
        raise _BadRequest("'evaluations' must be a list")
    if len(items) > MAX_EVALUATIONS:
        raise _BadRequest(f"at most {MAX_EVALUATIONS} evaluations per request")
    options = body.get("options", {})
    if not isinstance(options, Mapping):
        raise _BadRequest("'options' must be an object")
    semantic = options.get("evaluations_semantic", "execute_all")
    if semantic not in _SEMANTICS:
        raise _BadRequest(f"options.evaluations_semantic must be one of {', '.join(_SEMANTICS)}")
    requests = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _BadRequest(f"evaluations[{index}] must be an object")
        merged = {key: item.get(key, body.get(key)) for key in _SHARED}
        requests.append(merged)
    answers = []
    for index, merged in enumerate(requests):
        decision = _evaluate(policy, merged, f"evaluations[{index}]: ")
        answers.append(authzen_answer(decision))
        if (semantic == "deny_on_first_deny" and not decision.permitted) or (
            semantic == "permit_on_first_permit" and decision.permitted
        ):
            break
    return {"evaluations": answers}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: AuthZENServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the FQDN of the address, which can
        # hang for seconds without DNS; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
            self.connections.clear()
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "secretgrants-pdp"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are closed after this
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK hold the body back ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._raw_body: bytes | None = None
        path = self.path.split("?", 1)[0]
        routes: dict[str, tuple[str, Callable[[], Any]]] = {
            WELL_KNOWN_PATH: ("GET", self._metadata),
            EVALUATION_PATH: ("POST", self._evaluation),
            EVALUATIONS_PATH: ("POST", self._evaluations),
        }
        route = routes.get(path)
        try:
            if route is None:
                self._drain()
                raise _BadRequest(f"no such endpoint: {path[:200]}", HTTPStatus.NOT_FOUND)
            allowed, handler = route
            if method != allowed or allowed != "POST":
                self._drain()  # no handler will read this body
            if method != allowed:
                raise _BadRequest(
                    f"{path} takes {allowed}, not {method}", HTTPStatus.METHOD_NOT_ALLOWED
                )
            self._send(HTTPStatus.OK, handler())
        except _BadRequest as exc:
            self._problem(exc.status, exc.detail, allow=route[0] if route else None)
        except Exception:
            log.exception("the built-in PDP failed on %s %s", method, path)
            self._problem(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    # --- endpoints

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        if not host or any(c.isspace() or c in "/\\@" for c in host):
            host = f"{self.server.server_name}:{self.server.server_port}"
        return f"http://{host}"

    def _metadata(self) -> dict[str, Any]:
        base = self._base_url()
        return {
            "policy_decision_point": base,
            "access_evaluation_endpoint": base + EVALUATION_PATH,
            "access_evaluations_endpoint": base + EVALUATIONS_PATH,
        }

    def _evaluation(self) -> dict[str, Any]:
        return authzen_answer(_evaluate(self.server.owner.policy, self._json_body()))

    def _evaluations(self) -> dict[str, Any]:
        body = self._json_body()
        if not isinstance(body, Mapping):
            raise _BadRequest("the request body must be a JSON object")
        return _batch(self.server.owner.policy, body)

    # --- plumbing

    def _drain(self) -> None:
        """Read and drop a body we will not use, so the connection stays usable."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY_BYTES:
            self.rfile.read(int(length))
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    def _json_body(self) -> object:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _BadRequest(
                "chunked request bodies are not supported", HTTPStatus.LENGTH_REQUIRED
            )
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _BadRequest("a Content-Length is required", HTTPStatus.LENGTH_REQUIRED)
        if not length_text.isdigit():
            self.close_connection = True
            raise _BadRequest("Content-Length is not a number")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(
                f"the body is larger than {MAX_BODY_BYTES} bytes",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        raw = self.rfile.read(length)
        self._raw_body = raw
        content_type = self.headers.get("Content-Type", "application/json")
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise _BadRequest(
                "the body must be application/json", HTTPStatus.UNSUPPORTED_MEDIA_TYPE
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise _BadRequest("the body is not valid JSON") from None

    def _problem(self, status: HTTPStatus, detail: str, allow: str | None = None) -> None:
        body = {
            "type": "about:blank",
            "title": status.phrase,
            "status": int(status),
            "detail": detail,
        }
        extra = {"Allow": allow} if status is HTTPStatus.METHOD_NOT_ALLOWED and allow else {}
        self._send(status, body, content_type="application/problem+json", headers=extra)

    def _send(
        self,
        status: HTTPStatus,
        body: object,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        request_id = self.headers.get("X-Request-ID")
        # Recorded before the answer is written: a client that has its answer can rely on
        # finding its request in ``requests`` (tests read it right after the call).
        self.server.owner.record(
            ServedRequest(
                method=self.command,
                path=self.path.split("?", 1)[0][:200],
                status=int(status),
                request_id=request_id,
                traceparent=self.headers.get("traceparent"),
                body=self._raw_body if self.server.owner.record_bodies else None,
            )
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if request_id is not None and request_id.isascii() and request_id.isprintable():
            self.send_header("X-Request-ID", request_id[:256])
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


class AuthZENServer:
    """The built-in rules over HTTP. ``start()`` -> base URL; ``stop()``; a context manager too."""

    def __init__(
        self,
        policy: BuiltinPolicy,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history: int = 1000,
        record_bodies: bool = False,
    ) -> None:
        self.policy = policy
        self.record_bodies = record_bodies
        self.host = host
        self.port = port
        self.requests: collections.deque[ServedRequest] = collections.deque(maxlen=history)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_file(
        cls, policy_file: str | Path, host: str = "127.0.0.1", port: int = 0
    ) -> AuthZENServer:
        return cls(BuiltinPolicy.from_file(policy_file), host, port)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def record(self, entry: ServedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def start(self) -> str:
        """Listen (on the same port as before, after a ``stop()``) and return the base URL."""
        if self._server is not None:
            return self.base_url
        server = _Server((self.host, self.port), self)
        self.port = server.server_port
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"authzen-pdp-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("built-in PDP serving AuthZEN at %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> AuthZENServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    policy_file: str | Path,
    host: str = "127.0.0.1",
    port: int = 8181,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``policy_file`` until SIGINT or SIGTERM. Raises ``PolicyFileError`` on a bad file."""
    server = AuthZENServer.from_file(policy_file, host, port)
    stopping = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stopping.set())
    try:
        url = server.start()
        if on_ready is not None:
            on_ready(url)
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
