"""The SDK: read grants and manage secrets through the Secrets API, with fresh or DPoP-bound tokens.

    client = SecretsClient("https://secretgrants-api.secretgrants-system.svc:8443",
                           token=lambda: Path("/var/run/secretgrants/token").read_text(),
                           dpop=True, verify="/var/run/secretgrants/ca.crt")
    values = client.read("payments", "payments-db")
    client.rotate("vault+kv2://secret/payments/db", {"password": new_password})

This module is the transport (TLS, tokens, DPoP proofs, retries, problems);
the management methods are in :mod:`secretgrants.client_management`.

Without DPoP, each grant read and each call that changes a secret needs a
token with a new ``jti`` (the PEP accepts a token once): pass a callable that
mints one (TokenRequest); it is called once per request. With DPoP, the
client keeps an in-memory P-256 key (never written to disk), signs a proof
per request, and may reuse its token until it expires. With ``cert`` (a client
certificate), the first read binds the grant to it (mTLS). Refusals raise
:class:`SecretsAPIError` from the RFC 9457 problem body. Retries with backoff
on 409 (a grant being decided again, or contended), 502 and 503 only, and only
for calls that change nothing (grant reads, whose failed use is not counted,
metadata, keys, versions): a write that failed with a 502 may have reached the
provider, so a retry could write twice. A 429 (the caller's namespace holds too
many one-time identifiers) is refused before anything is done, so every call waits
its ``Retry-After`` and tries again, when that is at most ``max_retry_after``
seconds. Values are returned, never logged.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from secretgrants.api_paths import READ_PATH
from secretgrants.client_management import ManagementMethods
from secretgrants.dpop import sign_proof

__all__ = ["SecretsAPIError", "SecretsClient"]

READ = READ_PATH
RETRY_STATUSES = frozenset({409, 502, 503})
TOO_MANY = 429  # refused before the call did anything: any call may try again


class SecretsAPIError(Exception):
    """A refusal from the API: its HTTP status, stable code and detail (never a value)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class SecretsClient(ManagementMethods):
    def __init__(
        self,
        base_url: str,
        *,
        token: Callable[[], str],
        dpop: bool = False,
        dpop_key: Any = None,
        verify: str | bool | ssl.SSLContext = True,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        max_retry_after: float = 10.0,
        timeout: float = 5.0,
        cert: tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``cert``: (certificate file, key file) of a client certificate for mTLS binding.

        ``transport``: an httpx transport in place of the network (tests).
        """
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.key = dpop_key or (ec.generate_private_key(ec.SECP256R1()) if dpop else None)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_retry_after = max_retry_after
        tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        if cert is not None:
            if not isinstance(tls, ssl.SSLContext):
                unverified = tls is False
                tls = ssl.create_default_context()
                if unverified:
                    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            tls.load_cert_chain(*cert)
        self._http = httpx.Client(verify=tls, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"SecretsClient({self.base_url!r}, dpop={self.key is not None})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SecretsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, namespace: str, name: str) -> dict[str, str]:
        """The values of a grant with ``delivery.mode: Api`` (one use consumed)."""
        body = self._request("GET", READ.format(namespace=namespace, name=name), retry=True)
        return {str(k): str(v) for k, v in (body.get("data") or {}).items()}

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        retry: bool,
    ) -> Any:
        """The JSON answer of one call; a fresh token (and proof) per attempt."""
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            token = self.token()
            headers = {"Accept": "application/json"}
            if self.key is not None:
                headers["Authorization"] = f"DPoP {token}"
                headers["DPoP"] = sign_proof(self.key, method=method, url=url, access_token=token)
            else:
                headers["Authorization"] = f"Bearer {token}"
            response = self._http.request(method, url, params=params, json=body, headers=headers)
            if response.status_code == 200:
                return response.json()
            last = attempt == self.retries
            if retry and response.status_code in RETRY_STATUSES and not last:
                time.sleep(self.backoff_seconds * 2**attempt)
                continue
            wait = _retry_after(response) if response.status_code == TOO_MANY else None
            if wait is not None and wait <= self.max_retry_after and not last:
                time.sleep(wait)
                continue
            raise _error(response)
        raise AssertionError("unreachable")


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` seconds of an answer (the API sends whole seconds), if any."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _error(response: httpx.Response) -> SecretsAPIError:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    return SecretsAPIError(
        response.status_code,
        str(problem.get("code") or "HTTPError"),
        str(problem.get("detail") or response.reason_phrase),
    )
