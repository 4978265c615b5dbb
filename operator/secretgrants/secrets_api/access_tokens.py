"""JWT access tokens from a configured issuer, verified with its published keys.

With SECRETS_JWT_ISSUER set, a bearer token whose ``iss`` is that issuer is
verified here instead of by TokenReview: signature (ES256, RS256 or EdDSA,
with the key of the JWKS from SECRETS_JWKS_URL or SECRETS_JWKS_FILE, chosen
by ``kid``), ``exp`` (required) and ``nbf`` with a small leeway, ``iss``, and
``aud`` containing SECRETS_AUDIENCE. Its ``scope``/``scp`` claim is what
SECRETS_ENFORCE_SCOPES checks. The Kubernetes apiserver is such an issuer
too (its ``/openid/v1/jwks``), so ServiceAccount tokens can be verified
without a TokenReview.

The JWS code is the DPoP module's (``cryptography`` only; no JWT library).
Keys from a URL are cached and fetched again, at most every few seconds,
when a token names a ``kid`` the cache does not hold (key rotation).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from secretgrants.dpop import ALGORITHMS, DPoPError, jws_public_key, verify_jws_signature

__all__ = [
    "JWKSURL",
    "AccessTokenError",
    "AccessTokenVerifier",
    "JWKSFile",
    "JWKSSource",
    "unverified_claims",
]

MAX_TOKEN_BYTES: Final = 16 << 10
LEEWAY_SECONDS: Final = 30
REFETCH_MIN_SECONDS: Final = 5.0
CACHE_SECONDS: Final = 300.0


class AccessTokenError(Exception):
    """A token that is not acceptable; the message says which check failed (never the token)."""


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    if len(token) > MAX_TOKEN_BYTES:
        raise AccessTokenError("the token is too large")
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_unb64url(head_b64))
        claims = json.loads(_unb64url(claims_b64))
        signature = _unb64url(sig_b64)
    except (ValueError, binascii.Error):
        raise AccessTokenError("the token is not a compact JWS") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AccessTokenError("the token is not a compact JWS")
    return header, claims, signature, f"{head_b64}.{claims_b64}".encode()


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT without any check (to route it, or after TokenReview verified it)."""
    try:
        return _split(token)[1]
    except AccessTokenError:
        return {}


class JWKSSource(Protocol):
    """Where the issuer's public keys come from."""

    async def keys(self, *, refresh: bool = False) -> list[dict[str, Any]]: ...


def _parse_jwks(raw: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("keys"), list):
        raise AccessTokenError(f"{where} is not a JWK set (no 'keys' list)")
    return [k for k in raw["keys"] if isinstance(k, dict)]


class JWKSFile:
    """A JWK set in a file (e.g. a mounted ConfigMap), read again when it changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    async def keys(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime
            if self._cached is None or self._cached[0] != mtime:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._cached = (mtime, _parse_jwks(raw, str(self.path)))
        except (OSError, ValueError) as err:
            raise AccessTokenError(f"cannot read the JWK set file: {type(err).__name__}") from None
        return self._cached[1]


class JWKSURL:
    """A JWK set served over HTTP(S), cached; fetched again on an unknown ``kid``."""

    def __init__(self, url: str, *, timeout: float = 5.0, verify: Any = True) -> None:
        self.url = url
        self._http = httpx.AsyncClient(timeout=timeout, verify=verify)
        self._keys: list[dict[str, Any]] = []
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def keys(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = not self._keys or age > CACHE_SECONDS
            if stale or (refresh and age > REFETCH_MIN_SECONDS):
                try:
                    response = await self._http.get(
                        self.url, headers={"Accept": "application/json"}
                    )
                    response.raise_for_status()
                    self._keys = _parse_jwks(response.json(), "the JWKS URL's answer")
                    self._fetched_at = time.monotonic()
                except (httpx.HTTPError, ValueError) as err:
                    if not self._keys:
                        raise AccessTokenError(
                            f"the issuer's keys cannot be fetched ({type(err).__name__})"
                        ) from None
            return self._keys

    async def close(self) -> None:
        await self._http.aclose()


class AccessTokenVerifier:
    """Verifies JWT access tokens of one issuer for one audience."""

    def __init__(
        self, issuer: str, audience: str, jwks: JWKSSource, *, leeway: int = LEEWAY_SECONDS
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.leeway = leeway

    def issued_here(self, token: str) -> bool:
        """Whether the token claims to come from this issuer (not yet verified)."""
        return unverified_claims(token).get("iss") == self.issuer

    async def verify(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """The token's claims once every check passed; AccessTokenError says which failed."""
        header, claims, signature, signed = _split(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AccessTokenError(f"algorithm {str(alg)[:16]!r} is not accepted")
        if header.get("typ") == "dpop+jwt":
            raise AccessTokenError("a DPoP proof is not an access token")
        await self._check_signature(header, alg, signature, signed)
        current = time.time() if now is None else now
        if claims.get("iss") != self.issuer:
            raise AccessTokenError("the token is from another issuer")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AccessTokenError("the token has no exp")
        if exp + self.leeway <= current:
            raise AccessTokenError("the token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf - self.leeway > current):
            raise AccessTokenError("the token is not valid yet (nbf)")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise AccessTokenError(f"the token is not for audience {self.audience!r}")
        return claims

    async def _check_signature(
        self, header: Mapping[str, Any], alg: str, signature: bytes, signed: bytes
    ) -> None:
        kid = header.get("kid")
        for refresh in (False, True):
            candidates = [
                k
                for k in await self.jwks.keys(refresh=refresh)
                if (kid is None or k.get("kid") == kid)
                and k.get("alg", alg) == alg
                and k.get("use", "sig") == "sig"
            ]
            if candidates or kid is None:
                break
        for jwk in candidates:
            try:
                verify_jws_signature(jws_public_key(jwk, alg), alg, signature, signed)
            except DPoPError:
                continue
            return
        if not candidates:
            raise AccessTokenError("no key of the issuer fits the token (kid/alg)")
        raise AccessTokenError("the token's signature does not verify")
