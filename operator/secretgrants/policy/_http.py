"""The HTTP side of the remote PDP clients: one pooled client, bounded retries, JSON or fail.

Retries are for the network only: a connection refused or reset, a connect
or pool timeout, a keep-alive connection the server had closed. A read
timeout is not retried (the PDP got the request and is slow; asking again
would add load where it hurts and multiply the caller's wait), nor is any
HTTP answer (a 4xx or 5xx is the PDP's word). Every failure is raised as
:class:`~secretgrants.errors.PDPUnavailable`, which the clients turn into a
fail-closed deny. When tracing is on, every request carries the current
span's W3C ``traceparent`` (unless the caller set one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from secretgrants import tracing
from secretgrants.errors import PDPUnavailable

__all__ = ["HTTPOptions", "JSONClient"]


@dataclass(frozen=True)
class HTTPOptions:
    """Connection settings of a remote PDP client."""

    timeout: float = 2.0
    """Seconds for each of read, write and pool waits (and connect, unless set below)."""
    connect_timeout: float | None = None
    max_connections: int = 100
    max_keepalive_connections: int = 20
    keepalive_expiry: float = 30.0
    retries: int = 2
    """Extra attempts after a network error (not after an HTTP answer or a read timeout)."""
    retry_backoff: float = 0.05
    """Seconds before the first retry; doubled for each next one."""
    verify: bool | str = True
    """TLS verification: True, False (never in production) or a CA bundle path."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers on every request (e.g. an Authorization header)."""

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.max_connections < 1 or self.max_keepalive_connections < 0:
            raise ValueError("connection pool limits must be positive")

    def make_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout or self.timeout),
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_keepalive_connections,
                keepalive_expiry=self.keepalive_expiry,
            ),
            verify=self.verify,
            headers=dict(self.headers),
            follow_redirects=False,
            trust_env=False,
        )


_NOT_RETRIED = (httpx.ReadTimeout, httpx.WriteTimeout)


class JSONClient:
    """A pooled ``httpx.AsyncClient`` that speaks JSON and raises only ``PDPUnavailable``."""

    def __init__(self, options: HTTPOptions, client: httpx.AsyncClient | None = None) -> None:
        self.options = options
        self._owned = client is None
        self.client = client if client is not None else options.make_client()

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries on network errors; return any HTTP answer."""
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        send_headers = {"Accept": "application/json", **(headers or {})}
        if "traceparent" not in send_headers and (parent := tracing.traceparent()) is not None:
            send_headers["traceparent"] = parent  # W3C trace context of the current span
        if content is not None:
            send_headers["Content-Type"] = "application/json"
        attempts = self.options.retries + 1
        for attempt in range(attempts):
            try:
                return await self.client.request(method, url, content=content, headers=send_headers)
            except _NOT_RETRIED as exc:
                raise PDPUnavailable(
                    f"{what} timed out after {self.options.timeout:g}s ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise PDPUnavailable(
                        f"{what} unreachable after {attempts} attempt(s) ({type(exc).__name__})"
                    ) from exc
                await asyncio.sleep(self.options.retry_backoff * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send and return the parsed JSON of a 2xx answer; anything else is ``PDPUnavailable``."""
        response = await self.request(method, url, what=what, body=body, headers=headers)
        return parse_json(response, what)

    async def close(self) -> None:
        if self._owned:
            await self.client.aclose()


def parse_json(response: httpx.Response, what: str) -> Any:
    if not response.is_success:
        raise PDPUnavailable(f"{what} answered HTTP {response.status_code}")
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise PDPUnavailable(f"{what} answered malformed JSON") from exc
