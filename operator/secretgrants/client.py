"""The SDK: read a grant through the Secrets API, with a fresh token or a DPoP-bound one.

    client = SecretsClient("https://secretgrants-api.secretgrants-system.svc:8443",
                           token=lambda: Path("/var/run/secretgrants/token").read_text(),
                           dpop=True, verify="/var/run/secretgrants/ca.crt")
    values = client.read("payments", "payments-db")

Without DPoP, each read needs a token with a new ``jti`` (the PEP accepts a
token once): pass a callable that mints one (TokenRequest). With DPoP, the
client keeps an in-memory P-256 key (never written to disk), signs a proof
per request, and may reuse its token until it expires. With ``cert`` (a client
certificate), the first read binds the grant to it (mTLS). Retries with backoff
on 502 and 503 only. Values are returned, never logged.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from secretgrants.dpop import sign_proof

__all__ = ["SecretsAPIError", "SecretsClient"]

READ = "/api/secrets/v1/namespaces/{namespace}/grants/{name}"
RETRY_STATUSES = frozenset({502, 503})


class SecretsAPIError(Exception):
    """A refusal from the API: its HTTP status, stable code and detail (never a value)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class SecretsClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: Callable[[], str],
        dpop: bool = False,
        dpop_key: Any = None,
        verify: str | bool = True,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        timeout: float = 5.0,
        cert: tuple[str, str] | None = None,
    ) -> None:
        """``cert``: (certificate file, key file) of a client certificate for mTLS binding."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.key = dpop_key or (ec.generate_private_key(ec.SECP256R1()) if dpop else None)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
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
        self._http = httpx.Client(verify=tls, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SecretsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, namespace: str, name: str) -> dict[str, str]:
        url = self.base_url + READ.format(namespace=namespace, name=name)
        for attempt in range(self.retries + 1):
            token = self.token()
            headers = {"Accept": "application/json"}
            if self.key is not None:
                headers["Authorization"] = f"DPoP {token}"
                headers["DPoP"] = sign_proof(self.key, method="GET", url=url, access_token=token)
            else:
                headers["Authorization"] = f"Bearer {token}"
            response = self._http.get(url, headers=headers)
            if response.status_code == 200:
                data = response.json().get("data") or {}
                return {str(k): str(v) for k, v in data.items()}
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(self.backoff_seconds * 2**attempt)
                continue
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            raise SecretsAPIError(
                response.status_code,
                str(problem.get("code") or "HTTPError"),
                str(problem.get("detail") or response.reason_phrase),
            )
        raise AssertionError("unreachable")
