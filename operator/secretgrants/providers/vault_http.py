"""The reads every grant decision makes of Vault/OpenBao, on the event loop (aiohttp).

hvac runs on ``requests``, so :class:`~secretgrants.providers.kv2.KV2Provider`
runs it in a thread pool; for the two reads a grant decision makes (metadata for
the PDP's attributes, then the data) that thread hop and ``requests`` cost about
2.7 ms of CPU per grant, against about 0.6 ms for the same two GETs here
(1,000 pairs against a dev Vault, 1 and 50 at a time). Logins, renewals and writes
stay on hvac.

A GET answers like hvac's JSON adapter would: the parsed JSON on success, and on an
HTTP error status the ``hvac.exceptions.VaultError`` subclass hvac raises for it
(with Vault's ``errors`` and JSON body, never the raw text), so the provider
classifies both paths' failures the same way. Connection errors and timeouts come
out as aiohttp/asyncio raise them; the caller classifies them without showing them.

Proxies and the CA bundle follow the environment the way ``requests`` reads it,
once, at construction: ``HTTPS_PROXY``/``NO_PROXY`` for the server's URL, and
``REQUESTS_CA_BUNDLE`` (or certifi's bundle) when verifying.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
import hvac.exceptions
import hvac.utils
import requests.utils

__all__ = ["VaultReads"]


def _ssl(verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        return False
    if verify is True:
        return ssl.create_default_context(cafile=certifi.where())
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


class VaultReads:
    """GETs against one Vault/OpenBao server, one aiohttp session per event loop."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        timeout: float = 5.0,
        verify: bool | str = True,
        connections: int = 16,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"X-Vault-Request": "true"}
        if namespace:
            self._headers["X-Vault-Namespace"] = namespace
        self._ssl = _ssl(verify)
        self._proxy = requests.utils.select_proxy(
            self.url, requests.utils.get_environ_proxies(self.url)
        )
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # A session belongs to the loop that made it; tests run several loops.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                trust_env=False,  # the proxy was resolved above, once
            )
            self._loop = loop
        return self._session

    async def get(
        self, path_format: str, token: str, params: Mapping[str, str] | None = None, **path: str
    ) -> Any:
        """GET ``/v1/`` + ``path_format`` (its fields URL-quoted as hvac does) with ``token``."""
        api_path = hvac.utils.format_url(path_format, **path)
        headers = {**self._headers, "X-Vault-Token": token}
        session = self._session_here()
        async with session.get(
            f"{self.url}/v1/{api_path}", params=params, headers=headers, proxy=self._proxy
        ) as response:
            body: Any = None
            if response.content_type == "application/json":
                body = await response.json()
            if response.status >= 400:
                errors = body.get("errors") if isinstance(body, Mapping) else None
                raise hvac.exceptions.VaultError.from_status(
                    response.status, errors=errors, method="GET", url=api_path, json=body
                )
            if body is None:
                raise ValueError("not a JSON answer")  # classified as an unexpected shape
            return body

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            await session.close()
        # else: its loop is gone, and its connections with it
