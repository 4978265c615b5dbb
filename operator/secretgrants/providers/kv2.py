"""KV v2 on Vault or OpenBao, through hvac: the production provider.

URIs ``vault+kv2://<mount>/<path>`` and ``openbao+kv2://<mount>/<path>`` name
the KV v2 mount and the secret path under it. This module turns the
:class:`~secretgrants.providers.base.Provider` calls into KV v2 API calls and
keeps three promises the rest of the operator relies on:

Errors are ours, and say nothing secret.
    hvac exceptions carry the response body (``.text``, ``.json``) and the
    URL; a body can echo data. So no hvac or ``requests`` exception is ever
    ``str()``-ed, chained (``__cause__``) or left as ``__context__``: each
    failure is classified by type and status and re-raised, outside the
    ``except`` block, as a :mod:`secretgrants.errors` exception whose message
    is built here. 404 on a version tells deleted (``VersionDeleted``) from
    destroyed (``VersionDestroyed``) from absent (``SecretNotFound``); 401/403
    is ``ProviderDenied``; connection errors, timeouts, a sealed server, 429
    and 5xx are ``ProviderUnavailable`` (retried by the handlers).

hvac blocks; the operator does not.
    The two reads a grant decision makes (``read_metadata``, ``read``) run on
    the event loop (:mod:`.vault_http`, aiohttp). Every other call (logins,
    renewals, writes) runs in a small dedicated thread pool, on one
    ``hvac.Client`` (one ``requests`` session) per provider. Both use the
    configured timeout and fail the same way.

The token stays valid.
    Authentication is a :class:`VaultAuth` (static token, AppRole or the
    Kubernetes auth method). The provider logs in lazily, tracks the lease,
    and before a call made after 2/3 of the TTL renews the token (renew-self)
    or, when that is not possible, logs in again. A 403 is answered by one
    check: if the token itself is no longer valid (expired or revoked) the
    provider logs in again and retries once; if it still fails, or the token
    was valid and the policy said no, the call fails with ``ProviderDenied``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote

import aiohttp
import hvac
import hvac.exceptions
import requests

from secretgrants.errors import (
    KeyNotFound,
    ProviderDenied,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
    UnsupportedOperation,
    VersionDeleted,
    VersionDestroyed,
)
from secretgrants.providers.base import (
    CREATED_AT_KEY,
    CREATED_BY_KEY,
    OWNER_KEY,
    SecretData,
    SecretMetadata,
    VersionInfo,
    format_timestamp,
    parse_timestamp,
    to_text,
)
from secretgrants.providers.vault_http import VaultReads
from secretgrants.settings import Settings, VaultAuthMethod
from secretgrants.uri import SecretURI

__all__ = [
    "DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH",
    "AppRoleAuth",
    "AuthLease",
    "KV2Provider",
    "KubernetesAuth",
    "TokenAuth",
    "VaultAuth",
    "build_kv2_provider",
]

log = logging.getLogger("secretgrants.providers.kv2")

_T = TypeVar("_T")

DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH: Final = Path(
    "/var/run/secrets/kubernetes.io/serviceaccount/token"
)
"""Where the kubelet mounts the pod's ServiceAccount token."""

REFRESH_FRACTION: Final = 2 / 3
"""Renew (or log in again) once this much of the token's TTL has passed."""

CAS_ATTEMPTS: Final = 3
"""How often a check-and-set write is retried when another writer got in between."""

_OWNER_UPDATED_BY: Final = "owner_updated_by"
_OWNER_UPDATED_AT: Final = "owner_updated_at"

_HTTP_STATUS: Final[Mapping[type[Exception], int]] = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}


# ------------------------------------------------------------------ authentication


@dataclass(frozen=True)
class AuthLease:
    """A token and what Vault said about its lifetime. ``repr`` never shows the token."""

    token: str = field(repr=False)
    ttl: float
    """Seconds the token was valid for when obtained; 0 means it does not expire."""
    renewable: bool
    obtained_at: float = field(default_factory=time.monotonic)

    @property
    def refresh_at(self) -> float | None:
        """Monotonic time after which the token should be renewed; None if never."""
        if self.ttl <= 0:
            return None
        return self.obtained_at + self.ttl * REFRESH_FRACTION

    @property
    def expires_at(self) -> float | None:
        if self.ttl <= 0:
            return None
        return self.obtained_at + self.ttl


def _lease_from_auth(response: Any) -> AuthLease:
    """The lease in a login or renew response (``{"auth": {...}}``)."""
    auth = response["auth"]
    return AuthLease(
        token=str(auth["client_token"]),
        ttl=float(auth.get("lease_duration") or 0),
        renewable=bool(auth.get("renewable")),
    )


@runtime_checkable
class VaultAuth(Protocol):
    """One way of getting a Vault token. ``login`` blocks and runs in the provider's pool.

    ``login`` may raise hvac or ``requests`` exceptions (the provider
    classifies them) or a :class:`~secretgrants.errors.ProviderError`.
    """

    @property
    def method(self) -> str:
        """``token``, ``approle`` or ``kubernetes``: for logs and messages."""
        ...

    @property
    def can_relogin(self) -> bool:
        """Whether logging in again can yield a new token (a static token cannot)."""
        ...

    def login(self, client: Any) -> AuthLease:
        """Obtain a token using ``client`` (an ``hvac.Client``) and return its lease."""
        ...


class TokenAuth:
    """A token given in the configuration. Renewed if renewable; never replaced."""

    method: Final = "token"
    can_relogin: Final = False

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token auth needs a token (VAULT_TOKEN)")
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth(token=<hidden>)"

    def login(self, client: Any) -> AuthLease:
        client.token = self._token
        try:
            info = client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            # A token without the default policy cannot look itself up; an
            # invalid one cannot either. Either way the first real call tells.
            log.debug("token lookup-self refused; lifetime unknown")
            return AuthLease(token=self._token, ttl=0, renewable=False)
        data = info["data"]
        return AuthLease(
            token=self._token,
            ttl=float(data.get("ttl") or 0),
            renewable=bool(data.get("renewable")),
        )


class AppRoleAuth:
    """The AppRole auth method: ``role_id`` and ``secret_id`` for a token."""

    method: Final = "approle"
    can_relogin: Final = True

    def __init__(self, role_id: str, secret_id: str, *, mount: str = "approle") -> None:
        if not role_id or not secret_id:
            raise ValueError("AppRole auth needs a role_id and a secret_id")
        self.role_id = role_id
        self._secret_id = secret_id
        self.mount = mount

    def __repr__(self) -> str:
        return f"AppRoleAuth(role_id={self.role_id!r}, secret_id=<hidden>, mount={self.mount!r})"

    def login(self, client: Any) -> AuthLease:
        response = client.auth.approle.login(
            role_id=self.role_id,
            secret_id=self._secret_id,
            use_token=False,
            mount_point=self.mount,
        )
        return _lease_from_auth(response)


class KubernetesAuth:
    """The Kubernetes auth method: a ServiceAccount JWT and a Vault role for a token.

    The JWT is read from ``token_path`` at every login, because projected
    tokens are rotated by the kubelet; or given once as ``jwt``.
    """

    method: Final = "kubernetes"
    can_relogin: Final = True

    def __init__(
        self,
        role: str,
        *,
        mount: str = "kubernetes",
        token_path: Path | str = DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH,
        jwt: str | None = None,
    ) -> None:
        if not role:
            raise ValueError("Kubernetes auth needs a role (VAULT_KUBERNETES_ROLE)")
        self.role = role
        self.mount = mount
        self.token_path = Path(token_path)
        self._jwt = jwt

    def __repr__(self) -> str:
        return (
            f"KubernetesAuth(role={self.role!r}, mount={self.mount!r}, "
            f"token_path={str(self.token_path)!r})"
        )

    def read_jwt(self) -> str:
        if self._jwt is not None:
            return self._jwt
        try:
            jwt = self.token_path.read_text().strip()
        except OSError as exc:
            problem = type(exc).__name__
            error: ProviderError = ProviderUnavailable(
                f"cannot read the ServiceAccount token file {str(self.token_path)!r} ({problem})"
            )
        else:
            if jwt:
                return jwt
            error = ProviderUnavailable(
                f"the ServiceAccount token file {str(self.token_path)!r} is empty"
            )
        raise error

    def login(self, client: Any) -> AuthLease:
        response = client.auth.kubernetes.login(
            role=self.role, jwt=self.read_jwt(), use_token=False, mount_point=self.mount
        )
        return _lease_from_auth(response)


# ------------------------------------------------------------------ error mapping


@dataclass(frozen=True)
class _Failed:
    """A caught hvac/requests exception, kept out of any exception chain."""

    exc: BaseException


def _status_of(exc: BaseException) -> int | None:
    for kind, status in _HTTP_STATUS.items():
        if isinstance(exc, kind):
            return status
    return None


def _vault_errors(exc: BaseException) -> list[str]:
    """Vault's ``errors`` strings, for classification only: never put into a message."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list):
        return [e for e in errors if isinstance(e, str)]
    return []


def _is_cas_mismatch(exc: BaseException) -> bool:
    return isinstance(exc, hvac.exceptions.InvalidRequest) and any(
        "check-and-set" in e for e in _vault_errors(exc)
    )


def _version_metadata(exc: BaseException) -> Mapping[str, Any] | None:
    """The ``data.metadata`` that Vault sends with a 404 for a deleted or destroyed version."""
    body = getattr(exc, "json", None)
    if not isinstance(body, Mapping):
        return None
    data = body.get("data")
    if not isinstance(data, Mapping):
        return None
    metadata = data.get("metadata")
    return metadata if isinstance(metadata, Mapping) else None


def _version_info(number: int, raw: Mapping[str, Any]) -> VersionInfo:
    return VersionInfo(
        version=number,
        created_time=parse_timestamp(raw.get("created_time")),
        deletion_time=parse_timestamp(raw.get("deletion_time")),
        destroyed=bool(raw.get("destroyed")),
    )


def _custom(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): to_text(v) for k, v in raw.items()}


def _check_versions(versions: Sequence[int], what: str) -> list[int]:
    out = list(versions)
    if not out:
        raise ValueError(f"{what} needs at least one version")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what}: versions are positive integers")
    return out


def _check_data(data: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise TypeError("secret keys must be non-empty strings")
        if not isinstance(value, str):
            # Name the key and the type, never the value.
            raise TypeError(f"the value of key {key!r} is a {type(value).__name__}, not a string")
        out[key] = value
    return out


def _fragment_update(uri: SecretURI, data: Mapping[str, str]) -> dict[str, str] | None:
    """For a ``#key`` write: the one key to change (checked); None for a whole-secret write."""
    if uri.fragment is None:
        return None
    if set(data) != {uri.fragment}:
        raise UnsupportedOperation(
            f"a write to '#{uri.fragment}' changes that one key: give exactly that key"
        )
    return dict(data)


# ------------------------------------------------------------------ provider


def _session_for(url: str, verify: bool | str) -> requests.Session:
    """A requests session that reads the environment once, not on every call.

    By default requests looks up proxies, ~/.netrc and a CA bundle in the environment
    for every request: about 8 % of the operator's CPU per grant (py-spy, bench/grants.py).
    The proxy for ``url`` (HTTPS_PROXY, NO_PROXY, ...) is resolved here instead.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.trust_env = False
    session.verify = verify  # hvac takes the session's over its own ``verify`` argument
    return session


def _env_ca_bundle() -> bool | str:
    """The CA bundle requests would take from the environment when told to verify."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class KV2Provider:
    """KV v2 over hvac for one server (Vault or OpenBao). See the module docstring.

    What each operation needs of the token's policy, beyond the obvious
    capability on ``<mount>/data/<path>``: ``rotate`` reads
    ``<mount>/metadata/<path>`` (to require an existing secret and to write
    with check-and-set); a ``#key`` write reads the data (it changes one key
    and keeps the others, with check-and-set); the first write and
    ``update_owner`` patch ``<mount>/metadata/<path>`` (custom metadata,
    best-effort for the first write). ``delete``, ``undelete`` and
    ``destroy_versions`` are idempotent, as in Vault: they do not check that
    the versions exist.
    """

    def __init__(
        self,
        url: str,
        auth: VaultAuth,
        *,
        provider: Literal["vault", "openbao"] = "vault",
        namespace: str | None = None,
        timeout: float = 5.0,
        verify: bool | str = True,
        max_workers: int = 4,
    ) -> None:
        self._provider = provider
        self._label = "Vault" if provider == "vault" else "OpenBao"
        self._ca_setting = "VAULT_CACERT" if provider == "vault" else "OPENBAO_CACERT"
        self.url = url
        self.auth = auth
        self.timeout = timeout
        verify = _env_ca_bundle() if verify is True else verify
        # token="" so that hvac never picks VAULT_TOKEN or ~/.vault-token up by itself.
        self._client = hvac.Client(
            url=url,
            token="",
            namespace=namespace,
            timeout=timeout,
            verify=verify,
            session=_session_for(url, verify),
        )
        self._reads = VaultReads(url, namespace=namespace, timeout=timeout, verify=verify)
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"sg-{provider}-kv2"
        )
        self._auth_lock = threading.Lock()
        self._lease: AuthLease | None = None
        self._generation = 0
        self._closed = False
        self.logins = 0
        """How many logins succeeded (for metrics and tests)."""
        self.renewals = 0
        """How many renew-self calls succeeded."""

    def __repr__(self) -> str:
        return f"KV2Provider(provider={self._provider!r}, url={self.url!r}, auth={self.auth!r})"

    @property
    def name(self) -> str:
        return self._provider

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._closed:
            raise ProviderUnavailable(f"the {self._label} provider is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    @staticmethod
    def _attempt(fn: Callable[[], _T]) -> _T | _Failed:
        try:
            return fn()
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            return _Failed(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An answer of an unexpected shape; classified, never shown.
            return _Failed(exc)

    @staticmethod
    async def _attempt_async(fn: Callable[[], Awaitable[_T]]) -> _T | _Failed:
        try:
            return await fn()
        except (hvac.exceptions.VaultError, aiohttp.ClientError, TimeoutError) as exc:
            return _Failed(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return _Failed(exc)

    def _translate(
        self,
        op: str,
        exc: BaseException,
        not_found: Callable[[BaseException], ProviderError] | None = None,
    ) -> ProviderError:
        """Our error for an hvac/requests exception. Reads type and status, never the text."""
        label = self._label
        if isinstance(exc, requests.exceptions.SSLError | aiohttp.ClientSSLError):
            return ProviderUnavailable(
                f"{label}'s TLS certificate was not accepted ({op}): check "
                f"{self._ca_setting} names the CA that signs it"
            )
        if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
            return ProviderUnavailable(f"{label} did not answer {op} within {self.timeout:g}s")
        if isinstance(exc, requests.exceptions.ConnectionError | aiohttp.ClientConnectionError):
            return ProviderUnavailable(f"{label} is unreachable ({op})")
        if isinstance(exc, requests.exceptions.RequestException | aiohttp.ClientError):
            return ProviderUnavailable(f"{label} request failed ({op}): {type(exc).__name__}")
        if isinstance(exc, KeyError | TypeError | ValueError | AttributeError):
            return ProviderUnavailable(f"{label} sent an answer of unexpected shape ({op})")
        status = _status_of(exc)
        if status == 404:
            return not_found(exc) if not_found else SecretNotFound(f"{op}: secret not found")
        if status in (401, 403):
            return ProviderDenied(f"{label} denied {op} (permission denied)")
        if status == 400:
            return ProviderDenied(f"{label} rejected {op} as an invalid request (HTTP 400)")
        if status == 503:
            return ProviderUnavailable(f"{label} is sealed or unavailable ({op}, HTTP 503)")
        if status is not None:
            return ProviderUnavailable(f"{label} failed {op} (HTTP {status})")
        return ProviderUnavailable(f"{label} failed {op} ({type(exc).__name__})")

    def _login_locked(self) -> None:
        result = self._attempt(lambda: self.auth.login(self._client))
        if isinstance(result, _Failed):
            error = self._translate_login(result.exc)
            self._lease = None
            raise error
        self._lease = result
        self._client.token = result.token
        self._generation += 1
        self.logins += 1
        log.info(
            "logged in to %s with %s auth (ttl %ss, renewable %s)",
            self._label,
            self.auth.method,
            f"{result.ttl:g}",
            result.renewable,
        )

    def _translate_login(self, exc: BaseException) -> ProviderError:
        status = _status_of(exc)
        if status in (400, 401, 403):
            return ProviderDenied(
                f"{self._label} refused the {self.auth.method} login "
                "(check the credentials, the role and the auth mount)"
            )
        if status == 404:
            return ProviderDenied(
                f"{self._label} has no {self.auth.method} auth method at the configured mount"
            )
        return self._translate(f"{self.auth.method} login", exc)

    def _renew_locked(self, lease: AuthLease) -> bool:
        result = self._attempt(lambda: self._client.auth.token.renew_self())
        if isinstance(result, _Failed):
            log.info("renewing the %s token failed (%s)", self._label, type(result.exc).__name__)
            return False
        try:
            renewed = AuthLease(
                token=lease.token,
                ttl=float(result["auth"].get("lease_duration") or 0),
                renewable=bool(result["auth"].get("renewable")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        if 0 < renewed.ttl < 1:
            return False  # at its max TTL: a new login is better
        self._lease = renewed
        self.renewals += 1
        log.debug("renewed the %s token (ttl %ss)", self._label, f"{renewed.ttl:g}")
        return True

    def _ensure_token(self) -> int:
        """Log in, renew or log in again as the lease requires; return the token generation."""
        with self._auth_lock:
            lease = self._lease
            if lease is None:
                self._login_locked()
                return self._generation
            refresh_at = lease.refresh_at
            now = time.monotonic()
            if refresh_at is None or now < refresh_at:
                return self._generation
            expires_at = lease.expires_at
            still_valid = expires_at is None or now < expires_at
            # A static token is worth a renewal attempt even when it may just have
            # lapsed (Vault rounds TTLs down); a new login is better for the others.
            worth_renewing = still_valid or not self.auth.can_relogin
            if lease.renewable and worth_renewing and self._renew_locked(lease):
                return self._generation
            if self.auth.can_relogin:
                self._login_locked()
            elif lease.renewable:
                # A static token that cannot be renewed any more: stop trying at every
                # call; it works until Vault says otherwise.
                self._lease = replace(lease, renewable=False)
            return self._generation

    def _token_is_valid(self) -> bool:
        result = self._attempt(lambda: self._client.auth.token.lookup_self())
        return not isinstance(result, _Failed)

    def _relogin_after_denial(self, generation: int, exc: BaseException) -> bool:
        """After a 403: log in again if the token is dead; True if a retry is worthwhile.

        Vault says ``invalid token`` among its errors for an expired or revoked
        token; when it does not, a lookup-self tells a dead token from a
        policy refusal.
        """
        if not self.auth.can_relogin:
            return False
        with self._auth_lock:
            if self._generation != generation:
                return True  # someone else logged in meanwhile
            dead = any("invalid token" in e for e in _vault_errors(exc))
            if not dead and self._token_is_valid():
                return False  # the token is fine: the policy said no
            log.info(
                "the %s token was rejected (expired or revoked); logging in again", self._label
            )
            self._login_locked()
            return True

    def _call_sync(
        self,
        op: str,
        fn: Callable[[Any], _T],
        not_found: Callable[[BaseException], ProviderError] | None = None,
    ) -> _T:
        """Run ``fn(client)`` with a valid token, one re-login on a dead token, our errors."""
        generation = self._ensure_token()
        result = self._attempt(lambda: fn(self._client))
        if isinstance(result, _Failed) and isinstance(
            result.exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized
        ):
            if self._relogin_after_denial(generation, result.exc):
                result = self._attempt(lambda: fn(self._client))
        if isinstance(result, _Failed):
            error = self._translate(op, result.exc, not_found)
            del result
            raise error
        return result

    async def _call(
        self,
        op: str,
        fn: Callable[[Any], _T],
        not_found: Callable[[BaseException], ProviderError] | None = None,
    ) -> _T:
        return await self._run(lambda: self._call_sync(op, fn, not_found))

    def _settled_generation(self) -> int | None:
        """The token generation when the token needs nothing now (no login, no renewal)."""
        lease = self._lease
        if lease is None:
            return None
        refresh_at = lease.refresh_at
        if refresh_at is not None and time.monotonic() >= refresh_at:
            return None
        return self._generation

    async def _get(
        self,
        op: str,
        path_format: str,
        not_found: Callable[[BaseException], ProviderError],
        params: Mapping[str, str] | None = None,
        **path: str,
    ) -> Any:
        """``_call_sync`` for a GET on the event loop: the same token rules, the same errors."""
        if self._closed:
            raise ProviderUnavailable(f"the {self._label} provider is closed")
        generation = self._settled_generation()
        if generation is None:  # a login or a renewal first: hvac, in the pool
            generation = await self._run(self._ensure_token)

        def get() -> Awaitable[Any]:
            return self._reads.get(path_format, self._client.token, params, **path)

        result = await self._attempt_async(get)
        if isinstance(result, _Failed) and isinstance(
            result.exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized
        ):
            denied = result.exc
            if await self._run(lambda: self._relogin_after_denial(generation, denied)):
                result = await self._attempt_async(get)
            del denied
        if isinstance(result, _Failed):
            error = self._translate(op, result.exc, not_found)
            del result
            raise error
        return result

    def _body(self, response: Any, op: str) -> Mapping[str, Any]:
        """The ``data`` object of a JSON answer; ``ProviderUnavailable`` for anything else."""
        body = response.get("data") if isinstance(response, Mapping) else None
        if not isinstance(body, Mapping):
            raise ProviderUnavailable(f"{self._label} sent an answer of unexpected shape ({op})")
        return body

    def _kv(self) -> Any:
        return self._client.secrets.kv.v2

    # -- reads ---------------------------------------------------------------------

    async def read(self, uri: SecretURI, version: int | None = None) -> SecretData:
        if version is not None:
            _check_versions([version], "read")
        response = await self._get(
            "read",
            "{mount}/data/{path}",
            self._read_not_found(version),
            None if version is None else {"version": str(version)},
            mount=uri.mount,
            path=uri.path,
        )
        return self._read_answer(response, uri, version)

    def _read_sync(self, uri: SecretURI, version: int | None) -> SecretData:
        response = self._call_sync(
            "read",
            lambda _: self._kv().read_secret_version(
                path=uri.path,
                version=version,
                mount_point=uri.mount,
                raise_on_deleted_version=True,
            ),
            self._read_not_found(version),
        )
        return self._read_answer(response, uri, version)

    @staticmethod
    def _read_not_found(version: int | None) -> Callable[[BaseException], ProviderError]:
        which = "the latest version" if version is None else f"version {version}"

        def not_found(exc: BaseException) -> ProviderError:
            meta = _version_metadata(exc)
            if meta is not None:
                number = meta.get("version")
                shown = f"version {number}" if isinstance(number, int) else which
                if version is None and isinstance(number, int):
                    shown = f"the latest version ({number})"
                if meta.get("destroyed"):
                    return VersionDestroyed(f"read: {shown} of the secret is destroyed")
                if meta.get("deletion_time"):
                    return VersionDeleted(f"read: {shown} of the secret is deleted")
            if version is None:
                return SecretNotFound("read: secret not found")
            return SecretNotFound(f"read: {which} of the secret does not exist")

        return not_found

    def _read_answer(self, response: Any, uri: SecretURI, version: int | None) -> SecretData:
        which = "the latest version" if version is None else f"version {version}"
        body = self._body(response, "read")
        meta = body.get("metadata") or {}
        if not isinstance(meta, Mapping):
            raise ProviderUnavailable(f"{self._label} sent secret metadata of unexpected shape")
        number = meta.get("version")
        number = number if isinstance(number, int) else version
        info = _version_info(number, meta) if number is not None else None
        raw = body.get("data")
        if info is not None and info.destroyed:
            raise VersionDestroyed(f"read: {which} of the secret is destroyed")
        if info is not None and info.deletion_time is not None:
            raise VersionDeleted(f"read: {which} of the secret is deleted")
        if raw is None:
            raise SecretNotFound(f"read: {which} of the secret holds no data")
        if not isinstance(raw, Mapping):
            raise ProviderUnavailable(f"{self._label} sent secret data of unexpected shape")
        data = {str(k): to_text(v) for k, v in raw.items()}
        if uri.fragment is not None:
            if uri.fragment not in data:
                raise KeyNotFound(f"read: key {uri.fragment!r} is not in the secret")
            data = {uri.fragment: data[uri.fragment]}
        return SecretData(
            data=data,
            version=number,
            metadata=info,
            custom_metadata=_custom(meta.get("custom_metadata")),
        )

    async def read_metadata(self, uri: SecretURI) -> SecretMetadata:
        op = "read_metadata"
        response = await self._get(
            op,
            "{mount}/metadata/{path}",
            lambda _: SecretNotFound(f"{op}: secret not found"),
            mount=uri.mount,
            path=uri.path,
        )
        return self._metadata_answer(response, op)

    def _read_metadata_sync(self, uri: SecretURI, op: str = "read_metadata") -> SecretMetadata:
        response = self._call_sync(
            op,
            lambda _: self._kv().read_secret_metadata(path=uri.path, mount_point=uri.mount),
            lambda _: SecretNotFound(f"{op}: secret not found"),
        )
        return self._metadata_answer(response, op)

    def _metadata_answer(self, response: Any, op: str) -> SecretMetadata:
        body = self._body(response, op)
        versions: dict[int, VersionInfo] = {}
        raw_versions = body.get("versions") or {}
        if isinstance(raw_versions, Mapping):
            for key, raw in raw_versions.items():
                try:
                    number = int(key)
                except (TypeError, ValueError):
                    continue
                if isinstance(raw, Mapping):
                    versions[number] = _version_info(number, raw)
        custom = _custom(body.get("custom_metadata"))
        current = body.get("current_version")
        oldest = body.get("oldest_version")
        return SecretMetadata(
            current_version=current if isinstance(current, int) else None,
            versions=dict(sorted(versions.items())),
            oldest_version=oldest if isinstance(oldest, int) else None,
            created_time=parse_timestamp(body.get("created_time")),
            updated_time=parse_timestamp(body.get("updated_time")),
            custom_metadata=custom,
            **SecretMetadata.ownership(custom),  # type: ignore[arg-type]
        )

    async def list_keys(self, uri: SecretURI) -> list[str]:
        def run() -> list[str]:
            response = self._call_sync(
                "list_keys",
                lambda _: self._kv().list_secrets(path=uri.path, mount_point=uri.mount),
                lambda _: _EmptyList("list_keys: nothing under the path"),
            )
            keys = self._body(response, "list_keys").get("keys")
            if not isinstance(keys, list):
                raise ProviderUnavailable(f"{self._label} sent a list of unexpected shape")
            return sorted(str(k) for k in keys)

        try:
            return await self._run(run)
        except _EmptyList:
            # Vault answers 404 for a folder with nothing under it.
            return []

    # -- writes --------------------------------------------------------------------

    async def write(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> int:
        clean = _check_data(data)
        return await self._run(lambda: self._write_sync(uri, clean, actor, require_existing=False))

    async def rotate(self, uri: SecretURI, data: Mapping[str, str], *, actor: str) -> int:
        clean = _check_data(data)
        return await self._run(lambda: self._write_sync(uri, clean, actor, require_existing=True))

    def _write_sync(
        self, uri: SecretURI, data: dict[str, str], actor: str, *, require_existing: bool
    ) -> int:
        op = "rotate" if require_existing else "write"
        update = _fragment_update(uri, data)
        for _ in range(CAS_ATTEMPTS):
            cas: int | None = None
            payload = data
            if require_existing:
                current = self._read_metadata_sync(uri, op).current_version
                if not current:
                    raise SecretNotFound(f"{op}: secret not found (no version to rotate)")
                cas = current
            if update is not None:
                cas, payload = self._merged(uri, update, op)
                if require_existing and cas == 0:
                    raise SecretNotFound(f"{op}: secret not found (no version to rotate)")
            result = self._attempt_write(uri, payload, cas, op)
            if result is None:
                continue  # check-and-set lost against another writer: read again
            if result == 1:
                self._stamp_creation(uri, actor)
            return result
        raise ProviderUnavailable(
            f"{op}: the secret kept changing under concurrent writes; try again"
        )

    def _merged(
        self, uri: SecretURI, update: dict[str, str], op: str
    ) -> tuple[int, dict[str, str]]:
        """(cas, data) for a one-key write: the latest readable data with ``update`` applied."""
        try:
            latest = self._read_sync(uri.without_fragment(), None)
        except SecretNotFound:
            try:
                meta = self._read_metadata_sync(uri, op)
            except SecretNotFound:
                return 0, dict(update)
            return meta.current_version or 0, dict(update)
        except (VersionDeleted, VersionDestroyed):
            meta = self._read_metadata_sync(uri, op)
            return meta.current_version or 0, dict(update)
        return latest.version or 0, {**latest.data, **update}

    def _attempt_write(
        self, uri: SecretURI, payload: dict[str, str], cas: int | None, op: str
    ) -> int | None:
        """The new version, or None when check-and-set did not match."""
        generation = self._ensure_token()

        def call() -> Any:
            return self._kv().create_or_update_secret(
                path=uri.path, secret=payload, cas=cas, mount_point=uri.mount
            )

        result = self._attempt(call)
        if isinstance(result, _Failed) and isinstance(
            result.exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized
        ):
            if self._relogin_after_denial(generation, result.exc):
                result = self._attempt(call)
        if isinstance(result, _Failed):
            if cas is not None and _is_cas_mismatch(result.exc):
                return None
            error = self._translate(op, result.exc)
            del result
            raise error
        version = self._body(result, op).get("version")
        if not isinstance(version, int):
            raise ProviderUnavailable(f"{self._label} answered {op} without a version number")
        return version

    def _patch_custom_metadata(self, uri: SecretURI, op: str, values: Mapping[str, str]) -> None:
        """Merge ``values`` into the secret's custom metadata (JSON merge patch, Vault >= 1.9)."""
        url = f"/v1/{quote(uri.mount)}/metadata/{quote(uri.path)}"
        self._call_sync(
            op,
            lambda client: client.adapter.request(
                "patch",
                url,
                headers={"Content-Type": "application/merge-patch+json"},
                json={"custom_metadata": dict(values)},
            ),
            lambda _: SecretNotFound(f"{op}: secret not found"),
        )

    def _stamp_creation(self, uri: SecretURI, actor: str) -> None:
        """Best-effort: who wrote the first version, and when."""
        stamp = {CREATED_BY_KEY: actor, CREATED_AT_KEY: format_timestamp(dt.datetime.now(dt.UTC))}
        try:
            self._patch_custom_metadata(uri, "write", stamp)
        except ProviderError as exc:
            log.warning(
                "could not stamp created_by/created_at on a new %s secret: %s",
                self._label,
                exc.message,
            )

    async def update_owner(self, uri: SecretURI, owner: str, *, actor: str) -> None:
        if not isinstance(owner, str) or not owner:
            raise ValueError("owner must be a non-empty string")

        def run() -> None:
            self._read_metadata_sync(uri, "update_owner")  # SecretNotFound if absent
            self._patch_custom_metadata(
                uri,
                "update_owner",
                {
                    OWNER_KEY: owner,
                    _OWNER_UPDATED_BY: actor,
                    _OWNER_UPDATED_AT: format_timestamp(dt.datetime.now(dt.UTC)),
                },
            )

        await self._run(run)

    async def delete(self, uri: SecretURI, versions: Sequence[int] | None = None) -> None:
        if versions is None:
            await self._call(
                "delete",
                lambda _: self._kv().delete_latest_version_of_secret(
                    path=uri.path, mount_point=uri.mount
                ),
            )
            return
        numbers = _check_versions(versions, "delete")
        await self._call(
            "delete",
            lambda _: self._kv().delete_secret_versions(
                path=uri.path, versions=numbers, mount_point=uri.mount
            ),
        )

    async def undelete(self, uri: SecretURI, versions: Sequence[int]) -> None:
        numbers = _check_versions(versions, "undelete")
        await self._call(
            "undelete",
            lambda _: self._kv().undelete_secret_versions(
                path=uri.path, versions=numbers, mount_point=uri.mount
            ),
        )

    async def destroy_versions(self, uri: SecretURI, versions: Sequence[int]) -> None:
        numbers = _check_versions(versions, "destroy_versions")
        await self._call(
            "destroy_versions",
            lambda _: self._kv().destroy_secret_versions(
                path=uri.path, versions=numbers, mount_point=uri.mount
            ),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        self._client.adapter.close()
        await self._reads.close()


class _EmptyList(SecretNotFound):
    """Internal: LIST found nothing (Vault's 404 for an empty folder)."""


# ------------------------------------------------------------------ factory


def build_kv2_provider(
    settings: Settings,
    provider: Literal["vault", "openbao"] = "vault",
    *,
    kubernetes_token_path: Path | str = DEFAULT_SERVICE_ACCOUNT_TOKEN_PATH,
    approle_mount: str = "approle",
) -> KV2Provider:
    """A KV v2 provider for ``vault`` (auth per ``VAULT_AUTH_METHOD``) or ``openbao`` (token).

    Raises ``ValueError`` naming the missing setting when the configuration
    is incomplete.
    """
    if provider == "openbao":
        if not settings.openbao_url:
            raise ValueError("the openbao provider needs OPENBAO_URL")
        if settings.openbao_token is None:
            raise ValueError("the openbao provider needs OPENBAO_TOKEN")
        return KV2Provider(
            settings.openbao_url,
            TokenAuth(settings.openbao_token.get_secret_value()),
            provider="openbao",
            timeout=settings.provider_timeout_seconds,
            verify=_ca(settings.openbao_ca_cert, "OPENBAO_CACERT"),
        )
    if not settings.vault_url:
        raise ValueError("the vault provider needs VAULT_URL (or VAULT_ADDR)")
    auth: VaultAuth
    method = settings.vault_auth_method
    if method == VaultAuthMethod.TOKEN:
        if settings.vault_token is None:
            raise ValueError("VAULT_AUTH_METHOD=token needs VAULT_TOKEN")
        auth = TokenAuth(settings.vault_token.get_secret_value())
    elif method == VaultAuthMethod.APPROLE:
        if not settings.vault_role_id or settings.vault_secret_id is None:
            raise ValueError("VAULT_AUTH_METHOD=approle needs VAULT_ROLE_ID and VAULT_SECRET_ID")
        auth = AppRoleAuth(
            settings.vault_role_id,
            settings.vault_secret_id.get_secret_value(),
            mount=approle_mount,
        )
    elif method == VaultAuthMethod.KUBERNETES:
        if not settings.vault_kubernetes_role:
            raise ValueError("VAULT_AUTH_METHOD=kubernetes needs VAULT_KUBERNETES_ROLE")
        auth = KubernetesAuth(
            settings.vault_kubernetes_role,
            mount=settings.vault_kubernetes_mount,
            token_path=kubernetes_token_path,
        )
    else:  # pragma: no cover - the enum is closed
        raise ValueError(f"unknown VAULT_AUTH_METHOD {method!r}")
    return KV2Provider(
        settings.vault_url,
        auth,
        provider="vault",
        namespace=settings.vault_namespace,
        timeout=settings.provider_timeout_seconds,
        verify=_ca(settings.vault_ca_cert, "VAULT_CACERT"),
    )


def _ca(path: Path | None, setting: str) -> bool | str:
    """The CA bundle to verify the server with: the setting's file or directory, or the default."""
    if path is None:
        return True
    if not path.exists():
        raise ValueError(f"{setting} names {str(path)!r}, which does not exist")
    return str(path)
