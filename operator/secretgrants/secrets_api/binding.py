"""Sender binding: a request's DPoP proof, and a grant's DPoP key and mTLS certificate. Pure.

A request uses DPoP when it carries a ``DPoP`` header or the ``DPoP``
authorization scheme, or when its access token is bound to a key
(``cnf.jkt``, RFC 9449 section 6); its proof must then verify for this
request (:func:`request_proof`, grant reads and management alike), by the
token's key when the token names one, or the request is a 401
``InvalidDPoPProof``.

The first permitted read with a DPoP proof binds the grant to the proof
key's RFC 7638 thumbprint (``jkt``); the first with a client certificate
binds it to the certificate's SHA-256 thumbprint (``x5t#S256``, shown as
``status.binding.x5tS256``). Once bound, a read with another key or
certificate, or with none, is refused (``SenderMismatch``) for the rest of
the grant's life.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from secretgrants.dpop import DPoPError, DPoPProof, b64url, verify_proof
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.problems import Problem

__all__ = ["Sender", "certificate_thumbprint", "check_sender", "request_proof"]


def _invalid_proof(detail: str) -> Problem:
    return Problem(401, "InvalidDPoPProof", detail)


def _bound_key(claims: Mapping[str, Any]) -> str | None:
    """The key thumbprint an access token is bound to (``cnf.jkt``), if any."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    return jkt if isinstance(jkt, str) and jkt else None


def request_proof(
    headers: Mapping[str, str], *, method: str, url: str | Callable[[str], bool], caller: Caller
) -> DPoPProof | None:
    """The request's verified DPoP proof; None for a request that does not use DPoP.

    ``url``: the request's URL, or the server's check of a proof's ``htu``
    (:meth:`.origins.PublicOrigins.for_path`).
    """
    header = headers.get("DPoP")
    scheme = headers.get("Authorization", "").partition(" ")[0].lower()
    bound = _bound_key(caller.claims)
    if not header:
        if scheme == "dpop" or bound is not None:
            raise _invalid_proof("a DPoP-bound request needs a proof in the DPoP header")
        return None
    try:
        proof = verify_proof(header, method=method, url=url, access_token=caller.token)
    except DPoPError as err:
        raise _invalid_proof(str(err)) from None
    if bound is not None and proof.jkt != bound:
        raise _invalid_proof("the proof's key is not the key the token is bound to (cnf.jkt)")
    return proof


def certificate_thumbprint(der: bytes) -> str:
    """``x5t#S256`` (RFC 8705): base64url of the SHA-256 of the DER certificate."""
    return b64url(hashlib.sha256(der).digest())


@dataclass(frozen=True)
class Sender:
    """What proves who sends a request: a DPoP key thumbprint, a certificate thumbprint."""

    jkt: str | None = None
    x5t_s256: str | None = None


def _mismatch(detail: str) -> Problem:
    return Problem(403, "SenderMismatch", detail)


def check_sender(binding: Mapping[str, Any], sender: Sender) -> Sender:
    """Refuse a sender that differs from the grant's binding; return what this use binds anew."""
    bound_jkt = binding.get("jkt")
    if bound_jkt and sender.jkt != bound_jkt:
        raise _mismatch(
            "the grant is bound to a DPoP key: send a proof with it"
            if sender.jkt is None
            else "the grant is bound to another DPoP key"
        )
    bound_x5t = binding.get("x5tS256")
    if bound_x5t and sender.x5t_s256 != bound_x5t:
        raise _mismatch(
            "the grant is bound to a client certificate: present it (mTLS)"
            if sender.x5t_s256 is None
            else "the grant is bound to another client certificate"
        )
    return Sender(
        jkt=sender.jkt if not bound_jkt else None,
        x5t_s256=sender.x5t_s256 if not bound_x5t else None,
    )
