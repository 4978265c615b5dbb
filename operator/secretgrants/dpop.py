"""DPoP proofs (RFC 9449) and JWK thumbprints (RFC 7638), with ``cryptography`` only.

Verification checks the proof JWT's type, algorithm (ES256, RS256, EdDSA),
embedded public JWK (never a private one), signature, ``htm``, ``htu``,
``iat`` window, ``jti`` presence and ``ath`` (the access token's hash). The
caller keeps the replay cache. Signing is here too, for the SDK and tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "PROOF_FUTURE_LEEWAY_SECONDS",
    "PROOF_MAX_AGE_SECONDS",
    "DPoPError",
    "DPoPProof",
    "b64url",
    "jwk_thumbprint",
    "jws_public_key",
    "private_jwk_public",
    "sign_proof",
    "verify_jws_signature",
    "verify_proof",
]

ALGORITHMS = frozenset({"ES256", "RS256", "EdDSA"})
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_PROOF_BYTES = 8192
PROOF_MAX_AGE_SECONDS = 60  # a proof is accepted until iat + this
PROOF_FUTURE_LEEWAY_SECONDS = 5  # and from iat - this: a clock a little ahead, no more


class DPoPError(Exception):
    """A proof is not acceptable; the message says which check failed (never a secret)."""


@dataclass(frozen=True)
class DPoPProof:
    jkt: str  # RFC 7638 thumbprint of the proof key
    jti: str
    iat: int


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    kty = jwk.get("kty")
    if kty not in _REQUIRED:
        raise DPoPError(f"unsupported JWK key type {str(kty)[:16]!r}")
    members = {k: jwk[k] for k in _REQUIRED[kty] if k in jwk}
    if len(members) != len(_REQUIRED[kty]):
        raise DPoPError("the JWK lacks required members")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return b64url(hashlib.sha256(canonical).digest())


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    if _PRIVATE_MEMBERS & set(jwk):
        raise DPoPError("the proof's JWK holds private key material")
    kty = jwk.get("kty")
    if alg == "ES256" and kty == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(_unb64url(jwk["x"]), "big")
        y = int.from_bytes(_unb64url(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if alg == "RS256" and kty == "RSA":
        n = int.from_bytes(_unb64url(jwk["n"]), "big")
        if n.bit_length() < 2048:
            raise DPoPError("RSA keys must have at least 2048 bits")
        return rsa.RSAPublicNumbers(int.from_bytes(_unb64url(jwk["e"]), "big"), n).public_key()
    if alg == "EdDSA" and kty == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_unb64url(jwk["x"]))
    raise DPoPError(f"the JWK does not fit algorithm {alg}")


def _verify(key: Any, alg: str, signature: bytes, signed: bytes) -> None:
    try:
        if alg == "ES256":
            if len(signature) != 64:
                raise DPoPError("bad ES256 signature length")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256":
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, signed)
    except InvalidSignature:
        raise DPoPError("the proof's signature does not verify") from None


def jws_public_key(jwk: dict[str, Any], alg: str) -> Any:
    """The public key of a JWK for ``alg`` (ES256, RS256, EdDSA); DPoPError when it does not fit.

    Shared with the access-token verifier of the Secrets API (keys from a JWKS).
    """
    try:
        return _public_key(jwk, alg)
    except (KeyError, ValueError, TypeError):
        raise DPoPError("the JWK is malformed") from None


def verify_jws_signature(key: Any, alg: str, signature: bytes, signed: bytes) -> None:
    """Check a compact JWS signature (raw R||S for ES256); DPoPError when it does not verify."""
    _verify(key, alg, signature, signed)


def normalise_htu(url: str) -> str:
    """The URL without query and fragment (RFC 9449 section 4.3), scheme and host lower-case."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))


def access_token_hash(access_token: str) -> str:
    return b64url(hashlib.sha256(access_token.encode()).digest())


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str | Callable[[str], bool],
    access_token: str | None,
    now: float | None = None,
    max_age_seconds: int = PROOF_MAX_AGE_SECONDS,
) -> DPoPProof:
    """Check a DPoP proof for this request; DPoPError says why it fails.

    ``url`` is the request's URL, or a check of ``htu`` by a server that knows its
    own public URLs (the URL of a request is built from the client's ``Host``).
    """
    if len(proof) > MAX_PROOF_BYTES:
        raise DPoPError("the proof is too large")
    try:
        head_b64, claims_b64, sig_b64 = proof.split(".")
        header = json.loads(_unb64url(head_b64))
        claims = json.loads(_unb64url(claims_b64))
        signature = _unb64url(sig_b64)
    except ValueError:
        raise DPoPError("the proof is not a compact JWS") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise DPoPError("the proof is not a compact JWS")
    if header.get("typ") != "dpop+jwt":
        raise DPoPError("the proof's typ must be dpop+jwt")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise DPoPError(f"algorithm {str(alg)[:16]!r} is not accepted")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise DPoPError("the proof carries no jwk")
    try:
        key = _public_key(jwk, alg)
    except (KeyError, ValueError, TypeError):
        raise DPoPError("the proof's jwk is malformed") from None
    _verify(key, alg, signature, f"{head_b64}.{claims_b64}".encode())
    if claims.get("htm") != method.upper():
        raise DPoPError("htm does not match the request method")
    htu = claims.get("htu")
    if not isinstance(htu, str) or not (
        url(normalise_htu(htu)) if callable(url) else normalise_htu(htu) == normalise_htu(url)
    ):
        raise DPoPError("htu does not match the request URL")
    iat = claims.get("iat")
    current = time.time() if now is None else now
    if (
        not isinstance(iat, int)
        or isinstance(iat, bool)
        or current - iat > max_age_seconds
        or iat - current > PROOF_FUTURE_LEEWAY_SECONDS
    ):
        # A proof from the future would stay fresh past a restart of the replay memory
        # (which refuses only what was issued before the start): refused beyond a leeway.
        raise DPoPError("iat is outside the accepted window")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
        raise DPoPError("the proof needs a jti")
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise DPoPError("ath does not match the access token")
    return DPoPProof(jkt=jwk_thumbprint(jwk), jti=jti, iat=iat)


def private_jwk_public(key: Any) -> dict[str, str]:
    """The public JWK of a private key (EC P-256, RSA or Ed25519)."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
    if isinstance(public, rsa.RSAPublicKey):
        rn = public.public_numbers()
        return {
            "kty": "RSA",
            "n": b64url(rn.n.to_bytes((rn.n.bit_length() + 7) // 8, "big")),
            "e": b64url(rn.e.to_bytes((rn.e.bit_length() + 7) // 8, "big")),
        }
    if isinstance(public, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives import serialization

        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    raise DPoPError("unsupported key type")


def sign_proof(
    key: Any,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    iat: int | None = None,
    jti: str | None = None,
) -> str:
    """A DPoP proof signed with ``key`` (for the SDK and the tests)."""
    jwk = private_jwk_public(key)
    alg = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}[jwk["kty"]]
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
    claims: dict[str, Any] = {
        "htm": method.upper(),
        "htu": normalise_htu(url),
        "iat": int(time.time()) if iat is None else iat,
        "jti": jti or str(uuid.uuid4()),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    signed = (
        f"{b64url(json.dumps(header, separators=(',', ':')).encode())}."
        f"{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
    )
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(signed.encode())
    return f"{signed}.{b64url(signature)}"
