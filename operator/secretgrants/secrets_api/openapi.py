"""The API's OpenAPI 3.1 document: served at ``/api/secrets/v1/openapi.json`` and committed.

Body schemas come from the pydantic models in :mod:`.models`, so the
document and the validation are one. Each operation lists the problem
codes it can answer with (those that change a secret also ``Replay``,
``TokenLifetimeTooLong``, ``TooManyOneTimeTokens`` and ``ReplayCacheFull``); the contract test drives the live API from this
document and checks every answer against it.
"""

from __future__ import annotations

from typing import Any, Final, get_args

from pydantic.json_schema import models_json_schema

from secretgrants.api_paths import API_BASE, PATHS, READ_PATH
from secretgrants.secrets_api import models
from secretgrants.secrets_api.operations import OPERATIONS, Operation

__all__ = ["API_BASE", "PATHS", "READ_PATH", "openapi_document"]

_REQUESTS = (models.SecretWrite, models.VersionsRequest, models.OwnerUpdate, models.BulkRequest)
_RESPONSES = (
    models.Done,
    models.Written,
    models.Metadata,
    models.MetadataDetail,
    models.Versions,
    models.Keys,
    models.BulkResult,
)

_PROBLEMS: Final = {
    "400": "InvalidRequest, InvalidSecretURI, or a tenant guard failure "
    "(MountNotAllowed, TenantNotFound, TenantConflict).",
    "401": "Unauthenticated or InvalidToken (WWW-Authenticate: Bearer); InvalidDPoPProof.",
    "403": "Denied, PDPUnavailable or UnknownObligation (with decisionId); "
    "InsufficientScope (WWW-Authenticate: Bearer error=insufficient_scope); NotAServiceAccount.",
    "404": "SecretNotFound or KeyNotFound; no such route.",
    "405": "MethodNotAllowed.",
    "410": "VersionDeleted or VersionDestroyed.",
    "413": "RequestTooLarge.",
    "501": "UnsupportedOperation: the provider cannot carry out the operation.",
    "502": "ProviderUnavailable or ProviderDenied: the provider failed.",
}
_CHANGE_PROBLEMS: Final = {
    **_PROBLEMS,
    "401": _PROBLEMS["401"] + " TokenLifetimeTooLong: the token lives longer than "
    "SECRETGRANTS_API_MAX_TOKEN_LIFETIME_SECONDS.",
    "403": _PROBLEMS["403"] + " Replay: this token's or DPoP proof's jti was used already.",
    "429": "TooManyOneTimeTokens: the namespace has as many one-time identifiers remembered "
    "as it may (Retry-After).",
    "503": "ReplayCacheFull: retry later.",
}
_READ_PROBLEMS: Final = {
    "400": "NotAnApiGrant: the grant does not use Api delivery.",
    "401": "Unauthenticated, InvalidToken, InvalidDPoPProof or TokenWithoutJTI.",
    "403": "ServiceAccountMismatch, SenderMismatch, Replay, GrantExpired, UsesExhausted, "
    "GrantNotGranted, InsufficientScope or NotAServiceAccount.",
    "404": "GrantNotFound, SecretNotFound or KeyNotFound.",
    "405": "MethodNotAllowed.",
    "409": "Conflict: too many concurrent reads; GrantChanging: the grant's spec changed "
    "since its last decision (retry).",
    "410": "VersionDeleted or VersionDestroyed.",
    "429": "TooManyOneTimeTokens: the namespace has as many one-time identifiers remembered "
    "as it may (Retry-After).",
    "501": "UnsupportedOperation: the provider cannot carry out the operation.",
    "502": "ProviderUnavailable or ProviderDenied: the provider failed.",
    "503": "ReplayCacheFull: retry later.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(which: dict[str, str]) -> dict[str, Any]:
    return {
        code: {
            "description": what,
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for code, what in which.items()
    }


_DPOP_HEADER: Final = {
    "name": "DPoP",
    "in": "header",
    "required": False,
    "description": "A DPoP proof (RFC 9449) for this request, with Authorization: DPoP.",
    "schema": {"type": "string"},
}


def _uri_param() -> dict[str, Any]:
    return {
        "name": "uri",
        "in": "query",
        "required": True,
        "description": "Canonical secret URI, percent-encoded ('#' as %23).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 2048},
        "example": models.EXAMPLE_URI,
    }


def _operation(
    op_id: str,
    summary: str,
    operations: list[Operation],
    ok: str,
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    purposes = sorted({OPERATIONS[o].purpose.value for o in operations})
    scopes = sorted({OPERATIONS[o].scope.value for o in operations})
    changes = any(OPERATIONS[o].changes for o in operations)
    once = (
        " A change uses up the token's jti, or the DPoP proof's with DPoP: a replay is a 403."
        if changes
        else ""
    )
    out: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "description": f"PDP purpose: {', '.join(purposes)}. OAuth scope "
        f"(SECRETS_ENFORCE_SCOPES=true): {', '.join(scopes)}.{once}",
        "x-purposes": purposes,
        "security": [{"serviceAccountToken": []}, {"accessToken": scopes}],
        "responses": {
            "200": {"description": "Done.", "content": {"application/json": {"schema": _ref(ok)}}},
            **_problems(_CHANGE_PROBLEMS if changes else _PROBLEMS),
        },
        "parameters": [*(params or []), _DPOP_HEADER],
    }
    if body:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return out


def _paths() -> dict[str, Any]:
    uri = _uri_param()
    versions = {
        "name": "versions",
        "in": "query",
        "required": False,
        "description": "Versions to delete (KV v2); required with destroy=true.",
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
            "minItems": 1,
            "maxItems": models.MAX_VERSIONS,
        },
    }
    destroy = {
        "name": "destroy",
        "in": "query",
        "required": False,
        "description": "Destroy the versions for good (purpose destroy_versions).",
        "schema": {"type": "boolean", "default": False},
    }
    read_md = [Operation.METADATA]
    return {
        READ_PATH: {
            "get": {
                "operationId": "readGrant",
                "summary": "Read the values of a grant with delivery.mode Api.",
                "description": "Bound to the grant's ServiceAccount; DPoP and mTLS sender binding. "
                "OAuth scope (SECRETS_ENFORCE_SCOPES=true): secrets.read.",
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in ("namespace", "name")
                ]
                + [_DPOP_HEADER],
                "security": [{"serviceAccountToken": []}, {"accessToken": ["secrets.read"]}],
                "responses": {
                    "200": {
                        "description": "The granted values (one use consumed).",
                        "content": {"application/json": {"schema": _ref("Read")}},
                    },
                    **_problems(_READ_PROBLEMS),
                },
            }
        },
        PATHS["secrets"]: {
            "post": _operation(
                "writeSecret",
                "Write a new version.",
                [Operation.WRITE],
                "Written",
                body="SecretWrite",
            ),
            "delete": _operation(
                "deleteSecret",
                "Delete the latest version or the given ones; destroy=true destroys them.",
                [Operation.DELETE, Operation.DESTROY],
                "Done",
                params=[uri, versions, destroy],
            ),
        },
        PATHS["rotate"]: {
            "post": _operation(
                "rotateSecret",
                "Write a new version of an existing secret.",
                [Operation.ROTATE],
                "Written",
                body="SecretWrite",
            )
        },
        PATHS["undelete"]: {
            "post": _operation(
                "undeleteVersions",
                "Restore soft-deleted versions.",
                [Operation.UNDELETE],
                "Done",
                body="VersionsRequest",
            )
        },
        PATHS["destroy_versions"]: {
            "post": _operation(
                "destroyVersions",
                "Destroy versions for good.",
                [Operation.DESTROY_VERSIONS],
                "Done",
                body="VersionsRequest",
            )
        },
        PATHS["metadata"]: {
            "get": _operation(
                "readMetadata", "Ownership and versions.", read_md, "Metadata", params=[uri]
            )
        },
        PATHS["metadata_detail"]: {
            "get": _operation(
                "readMetadataDetail",
                "Metadata with custom metadata and every version.",
                read_md,
                "MetadataDetail",
                params=[uri],
            )
        },
        PATHS["owner"]: {
            "post": _operation(
                "updateOwner",
                "Set the owner custom metadata.",
                [Operation.SET_OWNER],
                "Done",
                body="OwnerUpdate",
            )
        },
        PATHS["keys"]: {
            "get": _operation(
                "listKeys",
                "Names under a path (folders end with '/').",
                read_md,
                "Keys",
                params=[uri],
            )
        },
        PATHS["versions"]: {
            "get": _operation(
                "listVersions", "Versions of a secret (KV v2).", read_md, "Versions", params=[uri]
            )
        },
        PATHS["bulk"]: {
            "post": _operation(
                "bulk",
                "Up to 50 operations, each with its own purpose, guard and decision; "
                "per-operation status in the results.",
                [*(Operation(op) for op in _BULK_OPS), Operation.DESTROY],
                "BulkResult",
                body="BulkRequest",
            )
        },
    }


_BULK_OPS: Final = get_args(models.BulkOp)  # the operations a bulk item may name (one list)


def _schemas() -> dict[str, Any]:
    pairs: list[tuple[Any, Any]] = [(m, "validation") for m in _REQUESTS]
    pairs += [(m, "serialization") for m in _RESPONSES]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["Read"] = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
            "version": {"type": ["integer", "null"]},
            "expiresAt": {"type": ["string", "null"], "format": "date-time"},
            "usesRemaining": {"type": ["integer", "null"]},
        },
    }
    schemas["Problem"] = {
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "decisionId": {"type": "string"},
            "requiredScopes": {"type": "array", "items": {"type": "string"}},
        },
    }
    return dict(sorted(schemas.items()))


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (served, and committed as docs/openapi.json)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "secretgrants Secrets API",
            "version": "v1",
            "description": "Grant reads and secret management through the secretgrants PEP: "
            "tenant guard, PDP decision per purpose, optional OAuth scopes. "
            "Errors are RFC 9457 problem documents with a stable code.",
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "serviceAccountToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A ServiceAccount token for SECRETS_AUDIENCE (TokenReview).",
                },
                "accessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT access token of SECRETS_JWT_ISSUER with scopes.",
                },
            },
            "schemas": _schemas(),
        },
    }
