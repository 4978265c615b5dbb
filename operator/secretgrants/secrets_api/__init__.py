"""The Secrets API: sender-bound grant reads and secret management through the PEP.

``GET /api/secrets/v1/namespaces/{namespace}/grants/{name}`` reads a grant
with ``delivery.mode: Api``; the management endpoints under
``/api/secrets/v1`` (secrets, metadata, keys, versions, bulk) write, rotate,
delete, undelete, destroy and re-own secrets, each asking the PDP about its
purpose after the tenant guard. The parts, one module each:

* :mod:`.problems` RFC 9457 problem documents with stable codes
* :mod:`.operations` endpoint -> PDP purpose and OAuth scope (pure)
* :mod:`.access_tokens` JWT access tokens of a configured issuer (JWKS)
* :mod:`.authentication` TokenReview or issuer tokens -> the caller; scopes
* :mod:`.binding` a request's DPoP proof; DPoP and mTLS sender binding (pure)
* :mod:`.replay` one-time token and proof identifiers (JTI anti-replay)
* :mod:`.reads` grant reads: binding, replay, uses
* :mod:`.management` guard, PDP, provider operation, audit
* :mod:`.models` request and response bodies
* :mod:`.openapi` the OpenAPI document
* :mod:`.server` the aiohttp routes (thin)
"""

from secretgrants.secrets_api.management import IndexTenants
from secretgrants.secrets_api.openapi import READ_PATH, openapi_document
from secretgrants.secrets_api.replay import ReplayCache
from secretgrants.secrets_api.server import SecretsAPI, api_ssl_context, settings_options

__all__ = [
    "READ_PATH",
    "IndexTenants",
    "ReplayCache",
    "SecretsAPI",
    "api_ssl_context",
    "openapi_document",
    "settings_options",
]
