"""Who is calling: a ServiceAccount token or an access token, and the scopes it carries.

A bearer token (``Authorization: Bearer`` or ``DPoP``) from the configured
issuer (SECRETS_JWT_ISSUER) is verified locally with the issuer's keys;
any other token goes to the apiserver's TokenReview with the secrets
audience. Either way the subject must be a ServiceAccount
(``system:serviceaccount:<namespace>:<name>``): the PDP decides about
ServiceAccounts, and the tenant guard needs the caller's namespace.

Without a token: 401, unless SECRETS_API_REQUIRE_AUTH=false, where
management calls act as the *anonymous caller*: the PDP is asked about
ServiceAccount :data:`ANONYMOUS_NAME` (no UID) in the operator's namespace,
under that namespace's tenant. The default-deny policy permits it nothing
until a rule names it. Grant reads always need a token (a grant is bound to
a ServiceAccount), and so does everything when SECRETS_ENFORCE_SCOPES=true
(scopes come from a token).

Scopes (SECRETS_ENFORCE_SCOPES=true) come only from verified access tokens
of the configured issuer; a TokenReview-verified token carries none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from secretgrants.secrets_api.access_tokens import (
    AccessTokenError,
    AccessTokenVerifier,
    unverified_claims,
)
from secretgrants.secrets_api.operations import Operation, missing_scopes, parse_scopes
from secretgrants.secrets_api.problems import Problem

__all__ = [
    "ANONYMOUS_NAME",
    "Authenticator",
    "Caller",
    "TokenReviewer",
]

ANONYMOUS_NAME: Final = "system.anonymous"
"""The ServiceAccount name the PDP sees for calls without a token (REQUIRE_AUTH=false)."""
SA_PREFIX: Final = "system:serviceaccount:"
REALM: Final = 'Bearer realm="secretgrants"'


class TokenReviewer(Protocol):
    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Caller:
    """An authenticated (or anonymous) caller. ``token`` is kept for DPoP's ``ath`` only."""

    namespace: str
    service_account: str
    uid: str
    token: str | None = field(default=None, repr=False)
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    scopes: frozenset[str] = frozenset()
    via: str = "anonymous"  # tokenreview | issuer | anonymous

    @property
    def anonymous(self) -> bool:
        return self.token is None

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.service_account}"


def unauthenticated(detail: str, code: str = "Unauthenticated") -> Problem:
    error = "" if code == "Unauthenticated" else ', error="invalid_token"'
    return Problem(401, code, detail, headers={"WWW-Authenticate": REALM + error})


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer|DPoP <token>``; None without the header."""
    header = headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in {"bearer", "dpop"} or not token.strip():
        raise unauthenticated("present a token as 'Authorization: Bearer <token>' (or DPoP)")
    return token.strip()


def _service_account(username: str) -> tuple[str, str]:
    if not username.startswith(SA_PREFIX):
        raise Problem(403, "NotAServiceAccount", "only ServiceAccounts may use the Secrets API")
    namespace, colon, name = username.removeprefix(SA_PREFIX).partition(":")
    if not colon or not namespace or not name:
        raise Problem(403, "NotAServiceAccount", "only ServiceAccounts may use the Secrets API")
    return namespace, name


def _kubernetes_uid(claims: Mapping[str, Any]) -> str:
    """The ServiceAccount UID Kubernetes-issued tokens carry in their ``kubernetes.io`` claim."""
    kube = claims.get("kubernetes.io")
    account = kube.get("serviceaccount") if isinstance(kube, Mapping) else None
    uid = account.get("uid") if isinstance(account, Mapping) else None
    return uid if isinstance(uid, str) else ""


class Authenticator:
    """Turns request headers into a :class:`Caller`, or a 401/403 problem."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        audience: str,
        *,
        require_auth: bool = True,
        enforce_scopes: bool = False,
        access_tokens: AccessTokenVerifier | None = None,
        anonymous_namespace: str = "secretgrants-system",
    ) -> None:
        self.reviewer = reviewer
        self.audience = audience
        self.require_auth = require_auth
        self.enforce_scopes = enforce_scopes
        self.access_tokens = access_tokens
        self.anonymous_namespace = anonymous_namespace

    async def authenticate(
        self, headers: Mapping[str, str], *, allow_anonymous: bool = True
    ) -> Caller:
        token = bearer_token(headers)
        if token is None:
            if self.require_auth or self.enforce_scopes or not allow_anonymous:
                raise unauthenticated("present a ServiceAccount token (Bearer or DPoP)")
            return Caller(
                namespace=self.anonymous_namespace, service_account=ANONYMOUS_NAME, uid=""
            )
        if self.access_tokens is not None and self.access_tokens.issued_here(token):
            return await self._from_issuer(token, self.access_tokens)
        return await self._from_review(token)

    async def _from_issuer(self, token: str, verifier: AccessTokenVerifier) -> Caller:
        try:
            claims = await verifier.verify(token)
        except AccessTokenError as err:
            raise unauthenticated(str(err), "InvalidToken") from None
        namespace, name = _service_account(str(claims.get("sub") or ""))
        return Caller(
            namespace=namespace,
            service_account=name,
            uid=_kubernetes_uid(claims),
            token=token,
            claims=claims,
            scopes=parse_scopes(claims),
            via="issuer",
        )

    async def _from_review(self, token: str) -> Caller:
        review = await self.reviewer.token_review(token, [self.audience])
        if not review.get("authenticated") or self.audience not in (review.get("audiences") or []):
            raise unauthenticated(
                f"the token is not valid for audience {self.audience!r} "
                "(mint one with `kubectl create token <sa> --audience ...`)",
                "InvalidToken",
            )
        user = review.get("user") or {}
        namespace, name = _service_account(str(user.get("username") or ""))
        return Caller(
            namespace=namespace,
            service_account=name,
            uid=str(user.get("uid") or ""),
            token=token,
            claims=unverified_claims(token),  # verified by the apiserver
            via="tokenreview",
        )

    def require_scopes(self, caller: Caller, operations: Iterable[Operation]) -> None:
        """403 InsufficientScope unless the caller's token carries every scope needed."""
        if not self.enforce_scopes:
            return
        missing = missing_scopes(caller.scopes, operations)
        if missing:
            needed = " ".join(missing)
            raise Problem(
                403,
                "InsufficientScope",
                f"the access token lacks scope(s) {needed}",
                extra={"requiredScopes": missing},
                headers={
                    "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed}"'
                },
            )
