"""The Secrets API server: thin aiohttp routes over authentication, reads and management.

Each route authenticates the caller (:mod:`.authentication`), verifies its
DPoP proof when it uses DPoP (:func:`.binding.request_proof`; ``htu``
against the API's own URLs, :mod:`.origins`), parses its
input (400 ``InvalidRequest``), checks the scope of the operation when
SECRETS_ENFORCE_SCOPES is on, and hands over to :class:`.reads.GrantReader`
or :class:`.management.Manager`; a management call that changes a secret
first uses up its token's or proof's ``jti`` (:func:`.replay.use_once`).
Every answer that is not a 200 is an RFC 9457 problem (unknown routes and
methods too), and every refusal is audited. Request bodies are never
logged: writes carry values in.

TLS: the serving certificate of the webhook; with a client CA bundle
(SECRETGRANTS_API_CLIENT_CA), the server asks for a client certificate
(optional) and verifies it against that bundle only, for mTLS sender
binding of grant reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from secretgrants import tracing
from secretgrants.audit import Auditor, EventType, correlated
from secretgrants.audit import Effect as AuditEffect
from secretgrants.dpop import DPoPProof
from secretgrants.metrics import Metrics
from secretgrants.policy.base import PolicyDecisionPoint
from secretgrants.secrets_api.access_tokens import (
    JWKSURL,
    AccessTokenVerifier,
    JWKSFile,
    JWKSSource,
)
from secretgrants.secrets_api.authentication import Authenticator, Caller, TokenReviewer
from secretgrants.secrets_api.binding import certificate_thumbprint, request_proof
from secretgrants.secrets_api.management import (
    IndexTenants,
    ManagementCall,
    Manager,
    SaltSource,
    TenantLookup,
)
from secretgrants.secrets_api.models import (
    MAX_VERSIONS,
    BulkRequest,
    OwnerUpdate,
    SecretWrite,
    VersionsRequest,
)
from secretgrants.secrets_api.openapi import PATHS, READ_PATH, openapi_document
from secretgrants.secrets_api.operations import Operation, operation_for
from secretgrants.secrets_api.origins import PublicOrigins
from secretgrants.secrets_api.problems import Problem
from secretgrants.secrets_api.reads import GrantReader, GrantStore
from secretgrants.secrets_api.replay import (
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    DEFAULT_PER_OWNER,
    ReplayCache,
    use_once,
)

__all__ = ["APIStore", "SecretsAPI", "api_ssl_context", "settings_options"]

log = logging.getLogger("secretgrants.api")

MAX_BODY_BYTES: Final = 1 << 20
_M = TypeVar("_M", bound=BaseModel)


class APIStore(GrantStore, TokenReviewer):
    """What the API needs of Kubernetes: grants and TokenReview."""


def api_ssl_context(cert: Any, client_ca: Path | None = None) -> ssl.SSLContext:
    """The API's server context: the serving certificate, and mTLS against ``client_ca`` only."""
    if isinstance(cert, ssl.SSLContext):
        return cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # no certificate: no mTLS binding, not a refusal
    return ctx


def settings_options(cfg: Any) -> dict[str, Any]:
    """The SecretsAPI keyword arguments that come from the operator's settings."""
    verifier = None
    if cfg.secrets_jwt_issuer:
        jwks: JWKSSource
        if cfg.secrets_jwks_file is not None:
            jwks = JWKSFile(cfg.secrets_jwks_file)
        elif cfg.secrets_jwks_url:
            jwks = JWKSURL(cfg.secrets_jwks_url)
        else:
            raise ValueError("SECRETS_JWT_ISSUER needs SECRETS_JWKS_URL or SECRETS_JWKS_FILE")
        verifier = AccessTokenVerifier(cfg.secrets_jwt_issuer, cfg.secrets_audience, jwks)
    return {
        "require_auth": cfg.secrets_api_require_auth,
        "enforce_scopes": cfg.secrets_enforce_scopes,
        "access_tokens": verifier,
        "anonymous_namespace": cfg.operator_namespace,
        "client_ca": cfg.api_client_ca,
        "public_urls": cfg.api_public_urls,
        "one_time_quota": cfg.api_one_time_quota,
        "max_token_lifetime": cfg.api_max_token_lifetime_seconds,
    }


def _validation_detail(err: ValidationError) -> str:
    """Where and what, never the input (a write's input is a secret value)."""
    parts = []
    for item in err.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg')}")
    return "; ".join(parts)


def _invalid(detail: str) -> Problem:
    return Problem(400, "InvalidRequest", detail)


async def _body(request: web.Request, model: type[_M]) -> _M:
    try:
        raw = await request.read()
        data = json.loads(raw)
    except ValueError:
        raise _invalid("the body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _invalid(_validation_detail(err)) from None


def _query_uri(request: web.Request) -> str:
    values = request.query.getall("uri", [])
    if len(values) != 1 or not values[0]:
        raise _invalid("give the secret as one 'uri' query parameter")
    return values[0]


def _query_versions(request: web.Request) -> list[int] | None:
    raw = [v for item in request.query.getall("versions", []) for v in item.split(",")]
    if not raw:
        return None
    try:
        versions = [int(v) for v in raw]
    except ValueError:
        raise _invalid("versions are positive integers, comma separated") from None
    if any(not 1 <= v <= 2**31 - 1 for v in versions) or len(versions) > MAX_VERSIONS:
        raise _invalid(f"versions are 1 to {MAX_VERSIONS} positive integers")
    return versions


def _query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in {"true", "false", "1", "0"}:
        raise _invalid(f"{name} is true or false")
    return raw in {"true", "1"}


def _client_certificate(request: web.Request) -> str | None:
    """The verified client certificate's ``x5t#S256``, when the client presented one."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return certificate_thumbprint(der) if der else None


@web.middleware
async def _problems(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every non-200 answer is a problem document, routing errors and surprises included."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestTooLarge"}.get(
            exc.status, "InvalidRequest"
        )
        status = exc.status if exc.status in (404, 405, 413) else 400
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return Problem(status, code, exc.reason, headers=headers).response()
    except Exception as exc:  # a bug: answer 500 without details, log the type only
        log.error("Secrets API: unexpected %s on %s", type(exc).__name__, request.method)
        return Problem(500, "InternalError", "an unexpected error; see the operator log").response()


class SecretsAPI:
    """The HTTPS Secrets API of the operator."""

    def __init__(
        self,
        store: Any,
        providers: Any,
        *,
        audience: str,
        auditor: Auditor | None = None,
        metrics: Metrics | None = None,
        pdp: PolicyDecisionPoint | None = None,
        tenants: TenantLookup | None = None,
        salts: SaltSource | None = None,
        require_auth: bool = True,
        enforce_scopes: bool = False,
        access_tokens: AccessTokenVerifier | None = None,
        anonymous_namespace: str = "secretgrants-system",
        client_ca: Path | None = None,
        one_time_quota: int = DEFAULT_PER_OWNER,
        max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
        public_urls: Sequence[str] = (),
    ) -> None:
        self.auditor = auditor or Auditor()
        self.metrics = metrics or Metrics()
        self.client_ca = client_ca
        self.auth = Authenticator(
            store,
            audience,
            require_auth=require_auth,
            enforce_scopes=enforce_scopes,
            access_tokens=access_tokens,
            anonymous_namespace=anonymous_namespace,
        )
        self.reader = GrantReader(
            store, providers, self.metrics, ReplayCache(per_owner=one_time_quota)
        )
        self.manager = Manager(
            providers,
            pdp=pdp,
            tenants=tenants or IndexTenants({}, {}, None),
            salts=salts,
            auditor=self.auditor,
            metrics=self.metrics,
        )
        self.management_replays = ReplayCache(per_owner=one_time_quota)
        self.max_token_lifetime = max_token_lifetime
        self.origins = PublicOrigins(public_urls)  # what a DPoP proof's htu may name
        self._runner: web.AppRunner | None = None
        self.ssl_context: ssl.SSLContext | None = None  # once started

    @property
    def replays(self) -> Any:
        return self.reader.replays

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_problems])
        r = app.router
        r.add_get(READ_PATH, self._read)
        r.add_get(PATHS["openapi"], self._openapi)
        r.add_post(PATHS["secrets"], self._write)
        r.add_delete(PATHS["secrets"], self._delete)
        r.add_post(PATHS["rotate"], self._rotate)
        r.add_post(PATHS["undelete"], self._undelete)
        r.add_post(PATHS["destroy_versions"], self._destroy_versions)
        r.add_get(PATHS["metadata"], self._metadata)
        r.add_get(PATHS["metadata_detail"], self._metadata_detail)
        r.add_post(PATHS["owner"], self._owner)
        r.add_get(PATHS["keys"], self._keys)
        r.add_get(PATHS["versions"], self._versions)
        r.add_post(PATHS["bulk"], self._bulk)
        app.on_startup.append(self._wait_for_replay_memory)
        return app

    async def _wait_for_replay_memory(self, _: web.Application) -> None:
        """Serving starts at the replay memories' ``not_before`` (within a second of the
        start): every one-time identifier this process accepts was issued after it began
        to remember them."""
        ready = max(self.reader.replays.not_before, self.management_replays.not_before)
        await asyncio.sleep(max(0.0, ready - time.time()))

    async def start(self, address: str, port: int, cert: Any) -> None:
        """Serve on ``address:port`` with ``cert`` (a ServingCert, or a ready SSLContext)."""
        if not isinstance(cert, ssl.SSLContext):
            self.origins.load_certificate(Path(cert.cert_file).read_bytes())
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        ctx = self.ssl_context = api_ssl_context(cert, self.client_ca)
        await web.TCPSite(self._runner, address, port, ssl_context=ctx).start()
        mtls = " (mTLS optional)" if self.client_ca else ""
        log.info("Secrets API listening on https://%s:%d%s", address, port, mtls)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        jwks = getattr(self.auth.access_tokens, "jwks", None)
        if isinstance(jwks, JWKSURL):
            await jwks.close()

    def _proof(self, request: web.Request, caller: Caller) -> DPoPProof | None:
        """The request's DPoP proof, its ``htu`` checked against this API's own URLs (never
        against the URL the client's ``Host`` header makes)."""
        check = self.origins.for_path(request.url.raw_path)
        return request_proof(request.headers, method=request.method, url=check, caller=caller)

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    # -- grant reads -----------------------------------------------------------------

    async def _read(self, request: web.Request) -> web.Response:
        with (
            correlated(request.headers.get("X-Request-ID")),
            tracing.span(
                tracing.SPAN_SECRETS_API,
                grant_namespace=request.match_info["namespace"],
                grant_name=request.match_info["name"],
                operation="read",
            ),
        ):
            return await self._serve_read(request)

    async def _serve_read(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["name"]
        caller: Caller | None = None
        grant: dict[str, Any] = {}  # what the record names of the grant, once it is read
        try:
            caller = await self.auth.authenticate(request.headers, allow_anonymous=False)
            self.auth.require_scopes(caller, [Operation.READ])
            proof = self._proof(request, caller)
            body = await self.reader.read(
                caller,
                namespace,
                name,
                proof=proof,
                certificate=_client_certificate(request),
                audit=grant,
            )
        except Problem as problem:
            effect = AuditEffect.DENY if problem.status < 500 else AuditEffect.ERROR
            tracing.annotate(effect=effect.value, reason=problem.code)
            await self._audit_read(effect, problem.code, namespace, name, caller, grant)
            raise
        await self._audit_read(AuditEffect.PERMIT, "Read", namespace, name, caller, grant)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _audit_read(
        self,
        effect: AuditEffect,
        reason: str,
        namespace: str,
        name: str,
        caller: Caller | None,
        grant: Mapping[str, Any],
    ) -> None:
        """One ``grant_read`` record per read, permitted or refused."""
        await self.auditor.record(
            type=EventType.GRANT_READ,
            effect=effect,
            reason=reason,
            message="Secrets API read",
            purpose="read",
            grant_namespace=namespace,
            grant_name=name,
            subject=caller.username if caller else None,
            **grant,
        )

    # -- management ------------------------------------------------------------------

    async def _manage(
        self,
        request: web.Request,
        parse: Callable[[web.Request], Awaitable[ManagementCall]],
        operation: Operation,
    ) -> web.Response:
        """Authenticate, verify DPoP, parse, check the scope, use the jti once, carry out."""
        with (
            correlated(request.headers.get("X-Request-ID")),
            tracing.span(tracing.SPAN_SECRETS_API, operation=operation.value),
        ):
            return await self._serve_manage(request, parse, operation)

    async def _serve_manage(
        self,
        request: web.Request,
        parse: Callable[[web.Request], Awaitable[ManagementCall]],
        operation: Operation,
    ) -> web.Response:
        caller: Caller | None = None
        try:
            caller = await self.auth.authenticate(request.headers)
            proof = self._proof(request, caller)
            call = await parse(request)
            self.auth.require_scopes(caller, [call.operation])
            use_once(
                self.management_replays,
                caller,
                proof,
                [call.operation],
                max_token_lifetime=self.max_token_lifetime,
            )
        except Problem as problem:
            await self._audit_refusal(problem, operation.value, caller)
            raise
        body = await self.manager.run(caller, call)  # audits every outcome itself
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _audit_refusal(self, problem: Problem, what: str, caller: Caller | None) -> None:
        await self.auditor.record(
            type=EventType.API_REFUSED,
            effect=AuditEffect.DENY,
            reason=problem.code,
            message=f"Secrets API {what}",
            subject=caller.username if caller else None,
        )

    async def _write(self, request: web.Request) -> web.Response:
        async def parse(r: web.Request) -> ManagementCall:
            body = await _body(r, SecretWrite)
            return ManagementCall(Operation.WRITE, body.uri, data=body.data)

        return await self._manage(request, parse, Operation.WRITE)

    async def _rotate(self, request: web.Request) -> web.Response:
        async def parse(r: web.Request) -> ManagementCall:
            body = await _body(r, SecretWrite)
            return ManagementCall(Operation.ROTATE, body.uri, data=body.data)

        return await self._manage(request, parse, Operation.ROTATE)

    async def _delete(self, request: web.Request) -> web.Response:
        async def parse(r: web.Request) -> ManagementCall:
            uri, versions = _query_uri(r), _query_versions(r)
            destroy = _query_flag(r, "destroy")
            if destroy and versions is None:
                raise _invalid("destroy=true needs the versions to destroy")
            op = operation_for(Operation.DELETE, destroy=destroy)
            return ManagementCall(op, uri, versions=versions)

        return await self._manage(request, parse, Operation.DELETE)

    def _versions_route(
        self, operation: Operation
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            async def parse(r: web.Request) -> ManagementCall:
                body = await _body(r, VersionsRequest)
                return ManagementCall(operation, body.uri, versions=body.versions)

            return await self._manage(request, parse, operation)

        return route

    async def _undelete(self, request: web.Request) -> web.Response:
        return await self._versions_route(Operation.UNDELETE)(request)

    async def _destroy_versions(self, request: web.Request) -> web.Response:
        return await self._versions_route(Operation.DESTROY_VERSIONS)(request)

    def _query_route(
        self, operation: Operation
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            async def parse(r: web.Request) -> ManagementCall:
                return ManagementCall(operation, _query_uri(r))

            return await self._manage(request, parse, operation)

        return route

    async def _metadata(self, request: web.Request) -> web.Response:
        return await self._query_route(Operation.METADATA)(request)

    async def _metadata_detail(self, request: web.Request) -> web.Response:
        return await self._query_route(Operation.METADATA_DETAIL)(request)

    async def _keys(self, request: web.Request) -> web.Response:
        return await self._query_route(Operation.KEYS)(request)

    async def _versions(self, request: web.Request) -> web.Response:
        return await self._query_route(Operation.VERSIONS)(request)

    async def _owner(self, request: web.Request) -> web.Response:
        async def parse(r: web.Request) -> ManagementCall:
            body = await _body(r, OwnerUpdate)
            return ManagementCall(Operation.SET_OWNER, body.uri, owner=body.owner)

        return await self._manage(request, parse, Operation.SET_OWNER)

    async def _bulk(self, request: web.Request) -> web.Response:
        caller: Caller | None = None
        try:
            caller = await self.auth.authenticate(request.headers)
            proof = self._proof(request, caller)
            body = await _body(request, BulkRequest)
            operations = [ManagementCall.from_bulk(item).operation for item in body.operations]
            self.auth.require_scopes(caller, operations)
            use_once(
                self.management_replays,
                caller,
                proof,
                operations,
                max_token_lifetime=self.max_token_lifetime,
            )
        except Problem as problem:
            await self._audit_refusal(problem, "bulk", caller)
            raise
        results = await self.manager.run_bulk(caller, body.operations)
        payload = {"results": [r.model_dump(mode="json", by_alias=True) for r in results]}
        return web.json_response(payload, headers={"Cache-Control": "no-store"})
