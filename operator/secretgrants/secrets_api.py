"""The Secrets API: sender-bound reads of grants with ``delivery.mode: Api``.

``GET /api/secrets/v1/namespaces/{namespace}/grants/{name}`` with a
ServiceAccount token minted for the secrets audience (``Authorization:
Bearer`` or, with a DPoP proof, ``Authorization: DPoP``). The PEP checks, in
order: the token (TokenReview with the audience), the grant (Api delivery,
Granted, unexpired), the binding (same ServiceAccount name and UID), the
sender (DPoP key thumbprint once bound), replay (a token's ``jti`` without
DPoP, the proof's ``jti`` with it, each usable once), and uses (counted with
a compare-and-swap). Only then is the provider read. Every refusal is an RFC
9457 problem document with a stable code and is audited; no body or log
carries a value except the successful read's response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web

from secretgrants import tracing
from secretgrants.admission import AdmissionDenied
from secretgrants.api.common import now
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.audit import Auditor, EventType
from secretgrants.audit import Effect as AuditEffect
from secretgrants.delivery import select_keys
from secretgrants.dpop import DPoPError, verify_proof
from secretgrants.errors import SecretGrantsError
from secretgrants.metrics import Metrics
from secretgrants.redaction import register_secret
from secretgrants.uri import parse_secret_uri
from secretgrants.uses import consume

__all__ = ["READ_PATH", "ReplayCache", "SecretsAPI", "openapi_document"]

log = logging.getLogger("secretgrants.api")

READ_PATH: Final = "/api/secrets/v1/namespaces/{namespace}/grants/{name}"
PROBLEM_BASE: Final = "https://secretgrants.io/problems/"
MAX_CAS_ATTEMPTS: Final = 30


class APIStore(Protocol):
    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None: ...

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]: ...


@dataclass
class Problem(Exception):
    """An RFC 9457 problem: HTTP status, stable code, and a sentence for a person."""

    status: int
    code: str
    detail: str

    def response(self) -> web.Response:
        body = {
            "type": PROBLEM_BASE + self.code,
            "title": self.code,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        return web.json_response(
            body,
            status=self.status,
            content_type="application/problem+json",
            headers={"Cache-Control": "no-store"},
        )


class ReplayCache:
    """Identifiers used once, remembered until they could no longer be presented."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: dict[str, float] = {}
        self.max_entries = max_entries

    def first_use(self, key: str, until: float, now_: float | None = None) -> bool:
        current = time.time() if now_ is None else now_
        if len(self._seen) >= self.max_entries:
            self._seen = {k: v for k, v in self._seen.items() if v > current}
            if len(self._seen) >= self.max_entries:
                raise Problem(503, "ReplayCacheFull", "too many reads in flight; retry later")
        expiry = self._seen.get(key)
        if expiry is not None and expiry > current:
            return False
        self._seen[key] = until
        return True


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT the apiserver already verified (TokenReview)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _parse_expiry(raw: object) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


class SecretsAPI:
    def __init__(
        self,
        store: APIStore,
        providers: Any,
        *,
        audience: str,
        auditor: Auditor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.audience = audience
        self.auditor = auditor or Auditor()
        self.metrics = metrics or Metrics()
        self.replays = ReplayCache()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 10)
        app.router.add_get(READ_PATH, self._read)
        app.router.add_get("/api/secrets/v1/openapi.json", self._openapi)
        return app

    async def start(self, address: str, port: int, ssl_context: Any) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, address, port, ssl_context=ssl_context).start()
        log.info("Secrets API listening on https://%s:%d", address, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def _read(self, request: web.Request) -> web.Response:
        with tracing.span(
            tracing.SPAN_SECRETS_API,
            grant_namespace=request.match_info["namespace"],
            grant_name=request.match_info["name"],
            operation="read",
        ):
            return await self._serve_read(request)

    async def _serve_read(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["name"]
        subject: str | None = None
        try:
            body, subject = await self._authorized_read(request, namespace, name)
        except Problem as problem:
            await self._audit(
                AuditEffect.DENY if problem.status < 500 else AuditEffect.ERROR,
                problem.code,
                namespace,
                name,
                subject,
            )
            return problem.response()
        await self._audit(AuditEffect.PERMIT, "Read", namespace, name, subject)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _audit(
        self, effect: AuditEffect, reason: str, namespace: str, name: str, subject: str | None
    ) -> None:
        tracing.annotate(effect=effect.value, reason=reason)
        await self.auditor.record(
            type=EventType.USE_RESERVED if effect is AuditEffect.PERMIT else EventType.POD_DENIED,
            effect=effect,
            reason=reason,
            message="Secrets API read",
            grant_namespace=namespace,
            grant_name=name,
            subject=subject,
        )

    async def _authenticate(self, request: web.Request) -> tuple[str, str, str, dict[str, Any]]:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in {"bearer", "dpop"} or not token.strip():
            raise Problem(401, "Unauthenticated", "present a ServiceAccount token (Bearer or DPoP)")
        token = token.strip()
        review = await self.store.token_review(token, [self.audience])
        if not review.get("authenticated") or self.audience not in (review.get("audiences") or []):
            raise Problem(
                401,
                "InvalidToken",
                f"the token is not valid for audience {self.audience!r} "
                "(mint one with `kubectl create token <sa> --audience ...`)",
            )
        user = review.get("user") or {}
        username = str(user.get("username") or "")
        if not username.startswith("system:serviceaccount:"):
            raise Problem(403, "NotAServiceAccount", "only ServiceAccount tokens may read grants")
        return token, username, str(user.get("uid") or ""), _claims(token)

    async def _authorized_read(
        self, request: web.Request, namespace: str, name: str
    ) -> tuple[dict[str, Any], str]:
        token, username, sa_uid, claims = await self._authenticate(request)
        _, _, sa_ns_name = username.partition("system:serviceaccount:")
        sa_namespace, _, sa_name = sa_ns_name.partition(":")
        proof_header = request.headers.get("DPoP")
        proof = None
        if proof_header:
            try:
                proof = verify_proof(
                    proof_header, method=request.method, url=str(request.url), access_token=token
                )
            except DPoPError as err:
                raise Problem(401, "InvalidDPoPProof", str(err)) from None

        for _attempt in range(MAX_CAS_ATTEMPTS):
            grant = await self.store.read_grant(namespace, name)
            if grant is None:
                raise Problem(404, "GrantNotFound", f"SecretGrantRequest {name!r} does not exist")
            status = grant.get("status") or {}
            spec = SecretGrantRequestSpec.model_validate(grant.get("spec") or {})
            self._check_grant(spec, status, name, sa_namespace, sa_name, sa_uid, namespace)
            binding = status.get("binding") or {}
            expires = _parse_expiry(status.get("expiresAt"))
            until = expires.timestamp() if expires else time.time() + 3600
            if proof is not None:
                if binding.get("jkt") and binding["jkt"] != proof.jkt:
                    raise Problem(403, "SenderMismatch", "the grant is bound to another DPoP key")
                replay_key = f"{namespace}/{name}/dpop/{proof.jti}"
            else:
                if binding.get("jkt"):
                    raise Problem(
                        403, "SenderMismatch", "the grant is bound to a DPoP key: send a proof"
                    )
                jti = claims.get("jti")
                if not isinstance(jti, str) or not jti:
                    raise Problem(
                        401,
                        "TokenWithoutJTI",
                        "without DPoP, each read needs a fresh token with a jti",
                    )
                replay_key = f"{namespace}/{name}/token/{jti}"
            if not self.replays.first_use(replay_key, until):
                raise Problem(403, "Replay", "this token or proof was already used")
            try:
                updated = consume(
                    status,
                    generation=(grant.get("metadata") or {}).get("generation"),
                    jkt=proof.jkt if proof else None,
                )
            except AdmissionDenied as denied:
                raise Problem(403, denied.reason, denied.message) from None
            if (
                await self.store.replace_grant_status(namespace, {**grant, "status": updated})
                is not None
            ):
                break
            self.replays._seen.pop(replay_key, None)  # the use was not counted: let it retry
            await asyncio.sleep(0.005)
        else:
            raise Problem(409, "Conflict", "too many concurrent reads of this grant; retry")
        self.metrics.uses.inc()
        values, version = await self._values(spec)
        return {
            "data": values,
            "version": version,
            "expiresAt": status.get("expiresAt"),
            "usesRemaining": updated.get("usesRemaining"),
        }, username

    @staticmethod
    def _check_grant(
        spec: SecretGrantRequestSpec,
        status: Mapping[str, Any],
        name: str,
        sa_namespace: str,
        sa_name: str,
        sa_uid: str,
        namespace: str,
    ) -> None:
        if spec.delivery.mode.value != "Api":
            raise Problem(400, "NotAnApiGrant", f"SecretGrantRequest {name!r} delivers by Volume")
        phase = status.get("phase")
        expires = _parse_expiry(status.get("expiresAt"))
        if phase == "Expired" or (expires is not None and expires <= now()):
            raise Problem(403, "GrantExpired", f"SecretGrantRequest {name!r} has expired")
        if phase == "Exhausted":
            raise Problem(403, "UsesExhausted", f"SecretGrantRequest {name!r} has no uses left")
        if phase != "Granted":
            raise Problem(403, "GrantNotGranted", f"SecretGrantRequest {name!r} is {phase}")
        binding = status.get("binding") or {}
        if (
            sa_namespace != namespace
            or binding.get("serviceAccountName") != sa_name
            or binding.get("serviceAccountUID") != sa_uid
        ):
            raise Problem(
                403,
                "ServiceAccountMismatch",
                f"SecretGrantRequest {name!r} is bound to another ServiceAccount",
            )

    async def _values(self, spec: SecretGrantRequestSpec) -> tuple[dict[str, str], int | None]:
        uri = parse_secret_uri(spec.secret_uri)
        try:
            provider = self.providers.provider_for(uri)
            with tracing.span(tracing.SPAN_PROVIDER, provider=uri.scheme, operation="read"):
                data = await provider.read(uri.without_fragment(), spec.version)
            values = select_keys(data.data, spec, uri.fragment)
        except SecretGrantsError as err:
            self.metrics.errors.labels(err.reason.value).inc()
            raise Problem(err.status or 502, err.reason.value, err.message) from None
        for value in values.values():
            register_secret(value)
        return values, data.version


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (served, and committed as docs/openapi.json)."""
    problem = {"$ref": "#/components/schemas/Problem"}
    responses: dict[str, Any] = {
        "200": {
            "description": "The granted values (one use consumed).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Read"}}},
        }
    }
    for code, what in {
        "400": "The grant does not use Api delivery.",
        "401": "No, invalid or wrong-audience token; bad DPoP proof; token without jti.",
        "403": "Binding, sender, replay, expiry, exhaustion or PDP refusal.",
        "404": "No such grant.",
        "409": "Too many concurrent reads.",
        "501": "The provider cannot carry out the operation.",
        "502": "The provider failed.",
    }.items():
        responses[code] = {
            "description": what,
            "content": {"application/problem+json": {"schema": problem}},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "secretgrants Secrets API", "version": "v1"},
        "paths": {
            READ_PATH: {
                "get": {
                    "operationId": "readGrant",
                    "summary": "Read the values of a grant with delivery.mode Api.",
                    "parameters": [
                        {
                            "name": "namespace",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "DPoP",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "security": [{"serviceAccountToken": []}],
                    "responses": responses,
                }
            }
        },
        "components": {
            "securitySchemes": {
                "serviceAccountToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Read": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "object", "additionalProperties": {"type": "string"}},
                        "version": {"type": ["integer", "null"]},
                        "expiresAt": {"type": ["string", "null"], "format": "date-time"},
                        "usesRemaining": {"type": ["integer", "null"]},
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                    },
                },
            },
        },
    }
