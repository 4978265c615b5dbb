"""Test keys and JWT access tokens of a test issuer (signed with ``cryptography``)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from secretgrants.dpop import b64url, private_jwk_public

ISSUER = "https://issuer.test.secretgrants.io"
AUDIENCE = "crud.secrets"
ALG = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}


def new_key(kty: str = "EC") -> Any:
    if kty == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kty == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str) -> dict[str, str]:
    jwk = private_jwk_public(key)
    return {**jwk, "kid": kid, "use": "sig", "alg": ALG[jwk["kty"]]}


def write_jwks(path: Path, keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": [public_jwk(k, kid) for kid, k in keys.items()]}))
    return path


def sign_jwt(key: Any, claims: dict[str, Any], *, kid: str | None, alg: str | None = None) -> str:
    alg = alg or ALG[private_jwk_public(key)["kty"]]
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "EdDSA":
        signature = key.sign(signed)
    else:  # "none" and other algorithms a verifier must refuse
        signature = b""
    return f"{signed.decode()}.{b64url(signature)}"


def access_token(
    key: Any,
    *,
    kid: str = "k1",
    namespace: str = "team",
    service_account: str = "app",
    uid: str | None = None,
    scope: str | list[str] | None = None,
    lifetime: int = 300,
    **extra: Any,
) -> str:
    """A token of :data:`ISSUER` for a ServiceAccount, with ``scope`` (str) or ``scp`` (list)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": f"system:serviceaccount:{namespace}:{service_account}",
        "aud": [AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
    }
    if uid is not None:
        claims["kubernetes.io"] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": uid},
        }
    if isinstance(scope, str):
        claims["scope"] = scope
    elif scope is not None:
        claims["scp"] = scope
    claims.update(extra)
    return sign_jwt(key, claims, kid=kid)
