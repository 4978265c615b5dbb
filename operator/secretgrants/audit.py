"""Non-leaky audit identifiers.

``resource_ref = HMAC-SHA256(tenant_salt, canonical_uri)``: the same secret
gives the same reference within a tenant, so forensics can correlate uses,
but the reference reveals neither the path nor the key. Without a salt there
is no reference at all; it never falls back to the plain URI.
"""

from __future__ import annotations

import hashlib
import hmac

from secretgrants.uri import SecretURI

__all__ = ["resource_ref"]


def resource_ref(salt: bytes | None, uri: SecretURI) -> str | None:
    if not salt:
        return None
    digest = hmac.new(salt, uri.format().encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest}"
