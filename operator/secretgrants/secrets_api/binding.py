"""Sender binding of a grant: the DPoP key and the mTLS client certificate. Pure.

The first permitted read with a DPoP proof binds the grant to the proof
key's RFC 7638 thumbprint (``jkt``); the first with a client certificate
binds it to the certificate's SHA-256 thumbprint (``x5t#S256``, shown as
``status.binding.x5tS256``). Once bound, a read with another key or
certificate, or with none, is refused (``SenderMismatch``) for the rest of
the grant's life.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secretgrants.dpop import b64url
from secretgrants.secrets_api.problems import Problem

__all__ = ["Sender", "certificate_thumbprint", "check_sender"]


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
