"""The operator's Kubernetes client: the few reads and writes the handlers need.

JSON over the REST paths on one aiohttp session per client, on the event loop:
no threads and no model classes (the ``kubernetes`` package costs ~35 MB and a
thread hop per call). Only this module talks to the API, kopf's own watching
aside, and both log in through :func:`login` (registered with kopf in
``handlers``), so they use the same credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import json
import logging
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import kopf

from secretgrants import __version__, kubeconfig
from secretgrants.api.common import GROUP, VERSION

__all__ = ["CONNECTIONS", "KubeAPIError", "KubeClient", "Login", "WatchEvent", "login"]

log = logging.getLogger("secretgrants.kube")

CONNECTIONS: Final = 32  # concurrent requests (one HTTP/1.1 connection each) per client
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=60, sock_connect=10)
MAX_MESSAGE: Final = 1000  # characters of a Status message kept in an error
MERGE_PATCH: Final = "application/merge-patch+json"
# Pods' metadata only: the apiserver leaves out spec and status (kubectl does the same).
METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
METADATA: Final = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"  # each watch event
LIST_PAGE: Final = 500  # objects per page of a list the operator pages through
MAX_WATCH_LINE: Final = 16 << 20  # bytes of one watch event (a pod's metadata is far less)

_GRANTS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/secretgrantrequests"
_ADMISSION = "/apis/admissionregistration.k8s.io/v1"
_WORKLOADS: Final = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}


# One event of a watch: its type (ADDED, MODIFIED, DELETED, BOOKMARK) and the object's metadata.
WatchEvent = tuple[str, dict[str, Any]]


class KubeAPIError(Exception):
    """A failed API call: the HTTP status, and the reason and message of the Status body.

    Never the request body (a Secret's values, a token under review): only what
    the apiserver said about it.
    """

    def __init__(
        self, status: int, reason: str = "", message: str = "", *, method: str, path: str
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{method} {path}: {status} {reason}: {message}".rstrip(": "))

    @classmethod
    def from_response(
        cls, status: int, http_reason: str | None, body: bytes, *, method: str, path: str
    ) -> KubeAPIError:
        try:
            doc = json.loads(body)
        except ValueError:  # a proxy's HTML page, or nothing: the status line only
            doc = None
        if isinstance(doc, dict) and doc.get("kind") == "Status":
            reason = str(doc.get("reason") or http_reason or "")
            message = str(doc.get("message") or "")[:MAX_MESSAGE]
            return cls(status, reason, message, method=method, path=path)
        return cls(status, http_reason or "", method=method, path=path)


@dataclasses.dataclass(frozen=True)
class Login:
    """Connection settings for kopf and :class:`KubeClient`, and where their token is re-read."""

    info: kopf.ConnectionInfo
    token_file: Path | None = None


def login() -> Login:
    """In a pod, the ServiceAccount; else the kubeconfig's current context; for a user with
    a credential plugin, the ``kubernetes`` package through kopf (``runner`` lets it load)."""
    try:
        conn = kubeconfig.load()
    except kubeconfig.PluginRequired as err:
        info = kopf.login_via_client(logger=log, settings=kopf.OperatorSettings())
        if info is None:  # the package was kept out of this process, or is not installed
            raise kopf.LoginError(f"{err}: that needs the kubernetes package") from None
        return Login(info)
    except kubeconfig.ConfigError as err:
        raise kopf.LoginError(str(err)) from None
    info = kopf.ConnectionInfo(
        server=conn.server,
        ca_path=conn.ca_path,
        ca_data=conn.ca_data,
        insecure=conn.insecure,
        certificate_path=conn.certificate_path,
        certificate_data=conn.certificate_data,
        private_key_path=conn.private_key_path,
        private_key_data=conn.private_key_data,
        username=conn.username,
        password=conn.password,
        token=conn.token,
        default_namespace=conn.namespace,
        proxy_url=conn.proxy_url,
    )
    return Login(info, Path(conn.token_file) if conn.token_file else None)


class _Authorization:
    """The ``Authorization`` header of a login, its token re-read when the file changes."""

    def __init__(self, creds: Login) -> None:
        self.creds = creds
        self._stamp = self._mtime()
        self.headers = creds.info.as_http_headers()

    def _mtime(self) -> int | None:
        if self.creds.token_file is None:
            return None
        try:
            return self.creds.token_file.stat().st_mtime_ns
        except OSError:
            return None

    def current(self) -> dict[str, str]:
        if self.creds.token_file is not None:
            stamp = self._mtime()
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                token = kubeconfig.read_token(self.creds.token_file)
                info = dataclasses.replace(self.creds.info, token=token)
                self.creds = Login(info, self.creds.token_file)
                self.headers = info.as_http_headers()
        return self.headers


def _jsonable(obj: Any) -> Any:
    """What the ``kubernetes`` package's serializer made of non-JSON values."""
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, uuid.UUID | decimal.Decimal):
        return str(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} to the API")


def _name(value: str) -> str:
    return quote(value, safe="")


def _pods(namespace: str | None) -> str:
    return "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{_name(namespace)}/pods"


async def _watch_events(response: aiohttp.ClientResponse, path: str) -> AsyncIterator[WatchEvent]:
    """The events of a watch response: one JSON document per line."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        if len(buffer) > MAX_WATCH_LINE and b"\n" not in buffer:
            raise KubeAPIError(0, "WatchEventTooLarge", method="WATCH", path=path)
        if b"\n" not in chunk:
            continue  # an event that spans chunks: split once it is complete
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield _watch_event(json.loads(line), path)
    if buffer.strip():
        yield _watch_event(json.loads(buffer), path)


def _watch_event(event: Mapping[str, Any], path: str) -> WatchEvent:
    obj = event.get("object") or {}
    type_ = str(event.get("type") or "")
    if type_ == "ERROR":  # a Status: 410 Gone when the resourceVersion is too old
        raise KubeAPIError(
            int(obj.get("code") or 500),
            str(obj.get("reason") or ""),
            str(obj.get("message") or "")[:MAX_MESSAGE],
            method="WATCH",
            path=path,
        )
    return type_, dict(obj.get("metadata") or {})


class KubeClient:
    """Reads ServiceAccounts and grants, writes delivery Secrets and grant status."""

    def __init__(
        self,
        *,
        connections: int = CONNECTIONS,
        name: str = "kube",
        login: Callable[[], Login] = login,
        timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT,
    ) -> None:
        """``connections``: at most this many requests at once (pod admission and the
        Secrets API get a client of their own, so that they never queue behind background
        work). The session opens on first use, inside the running loop."""
        self._connections = connections
        self._name = name
        self._login = login
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._auth: _Authorization | None = None
        self._server = ""
        self._lock = asyncio.Lock()

    async def _open(self) -> tuple[aiohttp.ClientSession, _Authorization]:
        if self._session is not None and self._auth is not None:
            return self._session, self._auth
        async with self._lock:
            if self._session is None or self._auth is None:
                creds = await asyncio.to_thread(self._login)
                info = creds.info
                self._auth = _Authorization(creds)
                self._server = info.server.rstrip("/")
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=self._connections, ssl=info.as_ssl_context()
                    ),
                    timeout=self._timeout,
                    headers={"User-Agent": f"secretgrants/{__version__} ({self._name})"},
                    proxy=info.proxy_url,
                    trust_env=info.trust_env,
                )
            return self._session, self._auth

    async def _relogin(self, failed: _Authorization) -> None:
        """After a 401: log in again (a rotated token, an expired plugin token)."""
        async with self._lock:
            if self._auth is failed:
                self._auth = _Authorization(await asyncio.to_thread(self._login))

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        session, auth = await self._open()
        data = None if body is None else json.dumps(body, default=_jsonable).encode()
        for attempt in range(2):
            headers = {**auth.current(), "Accept": accept}
            if data is not None:
                headers["Content-Type"] = content_type
            async with session.request(
                method, self._server + path, data=data, headers=headers, params=params
            ) as response:
                raw = await response.read()
                if response.status == 401 and attempt == 0:
                    await self._relogin(auth)
                    auth = self._auth or auth
                    continue
                if response.status >= 400:
                    raise KubeAPIError.from_response(
                        response.status, response.reason, raw, method=method, path=path
                    )
                return json.loads(raw) if raw else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_event(
        self, involved: dict[str, str], *, type_: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "secretgrants"},
            "reportingComponent": "secretgrants.io/operator",
            "reportingInstance": "secretgrants",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._call("POST", f"/api/v1/namespaces/{_name(namespace)}/events", body)

    async def service_account_uid(self, namespace: str, name: str) -> str | None:
        path = f"/api/v1/namespaces/{_name(namespace)}/serviceaccounts/{_name(name)}"
        sa = await self._get_if_present(path)
        return str(sa["metadata"]["uid"]) if sa is not None else None

    async def upsert_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the Secret, or replace its data, labels and annotations if it exists."""
        secrets = f"/api/v1/namespaces/{_name(namespace)}/secrets"
        try:
            await self._call("POST", secrets, body)
        except KubeAPIError as err:
            if err.status != 409:
                raise
            await self._call("PUT", f"{secrets}/{_name(body['metadata']['name'])}", body)

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        """Empty the Secret's data (kubelets keep the last content of a deleted Secret)."""
        patch = {"data": None, "metadata": {"annotations": annotations}}  # null removes data
        path = f"/api/v1/namespaces/{_name(namespace)}/secrets/{_name(name)}"
        return await self._merge_patch_if_present(path, patch)

    async def patch_grant_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = f"{_GRANTS.format(ns=_name(namespace))}/{_name(name)}/status"
        await self._call("PATCH", path, {"status": status}, content_type=MERGE_PATCH)

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_if_present(f"{_GRANTS.format(ns=_name(namespace))}/{_name(name)}")

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Write ``obj``'s status at the resourceVersion it was read at.

        Returns the object as written (its new resourceVersion), or None on a conflict.
        """
        name = _name(obj["metadata"]["name"])
        try:
            written = await self._call(
                "PUT", f"{_GRANTS.format(ns=_name(namespace))}/{name}/status", obj
            )
        except KubeAPIError as err:
            if err.status == 409:
                return None
            raise
        return dict(written)

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]:
        out = await self._call("GET", _GRANTS.format(ns=_name(namespace)))
        return list(out.get("items") or [])

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """One key of one Secret (only tenant salts, in the operator's namespace)."""
        path = f"/api/v1/namespaces/{_name(namespace)}/secrets/{_name(name)}"
        secret = await self._get_if_present(path)
        if secret is None:
            return None
        raw = (secret.get("data") or {}).get(key)
        return b64decode(raw) if raw else None

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The apiserver's verdict on a bearer token for these audiences (TokenReview status)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        review = await self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        return dict(review.get("status") or {})

    async def list_pod_annotations(
        self, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Pods' metadata only (name and annotations), for reservation bookkeeping, page by
        page (a namespace of many pods is never one response held whole)."""
        params = {"limit": str(LIST_PAGE)}
        if label_selector:
            params["labelSelector"] = label_selector
        found: list[dict[str, Any]] = []
        while True:
            page = await self._call(
                "GET",
                f"/api/v1/namespaces/{_name(namespace)}/pods",
                accept=f"{METADATA_LIST},application/json",
                params=params,
            )
            found += [
                {
                    "metadata": {
                        "name": (p.get("metadata") or {}).get("name"),
                        "annotations": (p.get("metadata") or {}).get("annotations") or {},
                    }
                }
                for p in page.get("items") or []
            ]
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return found
            params["continue"] = str(cont)

    async def list_pod_metadata(
        self, namespace: str | None, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The metadata of the pods that match ``label_selector`` (in every namespace when
        ``namespace`` is None), page by page, and the resourceVersion to watch from."""
        path = _pods(namespace)
        params = {"labelSelector": label_selector, "limit": str(LIST_PAGE)}
        found: list[dict[str, Any]] = []
        while True:
            page = await self._call(
                "GET", path, accept=f"{METADATA_LIST},application/json", params=params
            )
            found += [dict(p.get("metadata") or {}) for p in page.get("items") or []]
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return found, str(meta.get("resourceVersion") or "")
            params["continue"] = str(meta["continue"])

    @contextlib.asynccontextmanager
    async def watch_pod_metadata(
        self,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """One watch request for the metadata of the pods that match ``label_selector``,
        from ``resource_version``, with bookmarks; entered once the apiserver accepted it.

        Yields the events (type and metadata) until the apiserver ends the watch (after
        ``timeout_seconds``). A failed request, and an ERROR event (410 Gone: the
        resourceVersion is too old to resume from), raise :class:`KubeAPIError`.
        """
        session, auth = await self._open()
        path = _pods(namespace)
        params = {
            "watch": "true",
            "labelSelector": label_selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        headers = {**auth.current(), "Accept": f"{METADATA},application/json"}
        # No total time: the stream lasts timeout_seconds; silence well past it is a dead peer.
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 30)
        async with session.get(
            self._server + path, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status >= 400:
                raw = await response.read()
                if response.status == 401:
                    await self._relogin(auth)  # the next watch logs in again
                raise KubeAPIError.from_response(
                    response.status, response.reason, raw, method="WATCH", path=path
                )
            yield _watch_events(response, path)

    async def apply_webhook_configuration(self, body: dict[str, Any]) -> None:
        """Create the (Mutating|Validating)WebhookConfiguration, or bring it to ``body``."""
        kind = body["kind"].lower() + "s"  # mutatingwebhookconfigurations, validating...
        try:
            await self._call("POST", f"{_ADMISSION}/{kind}", body)
        except KubeAPIError as err:
            if err.status != 409:
                raise
            path = f"{_ADMISSION}/{kind}/{_name(body['metadata']['name'])}"
            await self._call("PATCH", path, body, content_type=MERGE_PATCH)

    async def apply_cluster_object(self, plural: str, body: dict[str, Any]) -> bool:
        """Create a cluster-scoped object of ``body``'s apiVersion, or merge-patch it to ``body``.

        False when the cluster has no such resource (404) or forbids it (403).
        """
        collection = f"/apis/{body['apiVersion']}/{plural}"
        try:
            try:
                await self._call("POST", collection, body)
            except KubeAPIError as err:
                if err.status != 409:
                    raise
                path = f"{collection}/{_name(body['metadata']['name'])}"
                await self._call("PATCH", path, body, content_type=MERGE_PATCH)
        except KubeAPIError as err:
            if err.status in (403, 404):
                return False
            raise
        return True

    async def delete_webhook_configurations(self, name: str) -> None:
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            try:
                await self._call("DELETE", f"{_ADMISSION}/{kind}/{_name(name)}")
            except KubeAPIError as err:
                if err.status != 404:
                    raise

    async def patch_workload(
        self, namespace: str, kind: str, name: str, body: dict[str, Any]
    ) -> bool:
        """Patch a Deployment, StatefulSet or DaemonSet; False when it does not exist."""
        path = f"/apis/apps/v1/namespaces/{_name(namespace)}/{_WORKLOADS[kind]}/{_name(name)}"
        return await self._merge_patch_if_present(path, body)

    async def _get_if_present(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist (404)."""
        try:
            obj = await self._call("GET", path)
        except KubeAPIError as err:
            if err.status == 404:
                return None
            raise
        return dict(obj)

    async def _merge_patch_if_present(self, path: str, body: dict[str, Any]) -> bool:
        """Merge-patch the object at ``path``; False when it does not exist (404)."""
        try:
            await self._call("PATCH", path, body, content_type=MERGE_PATCH)
        except KubeAPIError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
