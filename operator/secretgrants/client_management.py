"""The SDK's management methods: one thin method per endpoint of the Secrets API.

Each method sends what the endpoint takes (:mod:`secretgrants.secrets_api.models`,
``docs/openapi.json``) and returns its JSON answer as is (camelCase keys, e.g.
``{"decisionId": ..., "version": 2}``); a refusal raises
:class:`~secretgrants.client.SecretsAPIError`. The transport
(:class:`~secretgrants.client.SecretsClient`) signs a fresh DPoP proof or asks
for a fresh token per request.

Retries: only calls that change nothing (metadata, keys, versions, and a bulk
of those only) are retried on 502/503. A write, rotate, delete, undelete,
destroy or owner change is sent once: a 502 can come after the provider
carried it out (a rotate retried would make two versions), and the caller
knows best whether to send it again. The paths are written out here (the SDK
does not import the server); a unit test holds them to the server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from secretgrants.api_paths import API_BASE, PATHS

__all__ = ["API_BASE", "PATHS", "READ_ONLY_OPS", "ManagementMethods"]

READ_ONLY_OPS: Final = frozenset({"metadata", "metadata_detail", "keys", "versions"})
"""Bulk ``op`` values that change nothing: a bulk of only these is retried."""


class ManagementMethods:
    """Mixed into :class:`~secretgrants.client.SecretsClient`, which supplies ``_request``."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        retry: bool,
    ) -> Any:
        raise NotImplementedError

    def write(self, uri: str, data: Mapping[str, str]) -> dict[str, Any]:
        """A new version (``uri#key``: that one key); ``{"decisionId", "version"}``."""
        return self._send("POST", "secrets", {"uri": uri, "data": dict(data)})

    def rotate(self, uri: str, data: Mapping[str, str]) -> dict[str, Any]:
        """A new version of an existing secret; ``{"decisionId", "version"}``."""
        return self._send("POST", "rotate", {"uri": uri, "data": dict(data)})

    def delete(
        self, uri: str, versions: Sequence[int] | None = None, *, destroy: bool = False
    ) -> dict[str, Any]:
        """Delete the latest version or ``versions``; ``destroy=True`` destroys them (needs them)."""
        params = {"uri": uri}
        if versions is not None:
            params["versions"] = ",".join(str(v) for v in versions)
        if destroy:
            params["destroy"] = "true"
        result: dict[str, Any] = self._request(
            "DELETE", PATHS["secrets"], params=params, retry=False
        )
        return result

    def undelete(self, uri: str, versions: Sequence[int]) -> dict[str, Any]:
        return self._send("POST", "undelete", {"uri": uri, "versions": list(versions)})

    def destroy_versions(self, uri: str, versions: Sequence[int]) -> dict[str, Any]:
        return self._send("POST", "destroy_versions", {"uri": uri, "versions": list(versions)})

    def set_owner(self, uri: str, owner: str) -> dict[str, Any]:
        return self._send("POST", "owner", {"uri": uri, "owner": owner})

    def metadata(self, uri: str) -> dict[str, Any]:
        """Owner and versions (never values): ``currentVersion``, ``owner``, ``createdBy``, ..."""
        return self._query("metadata", uri)

    def metadata_detail(self, uri: str) -> dict[str, Any]:
        """:meth:`metadata` with ``customMetadata`` and ``versions``."""
        return self._query("metadata_detail", uri)

    def keys(self, uri: str) -> dict[str, Any]:
        """The names under a path (folders end with '/'): ``{"decisionId", "keys"}``."""
        return self._query("keys", uri)

    def versions(self, uri: str) -> dict[str, Any]:
        """``{"decisionId", "currentVersion", "versions"}`` (501 for unversioned stores)."""
        return self._query("versions", uri)

    def bulk(self, operations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Up to 50 operations (``{"op", "uri", ...}``), each decided on its own.

        The answer's ``results``, in order: a refused item does not raise, it has its
        ``status`` and ``code`` (a refusal of the whole request, such as 401, raises).
        """
        items = [dict(op) for op in operations]
        retry = all(item.get("op") in READ_ONLY_OPS for item in items)
        body = self._request("POST", PATHS["bulk"], body={"operations": items}, retry=retry)
        results: list[dict[str, Any]] = body["results"]
        return results

    def _send(self, method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A call that changes a secret: sent once."""
        result: dict[str, Any] = self._request(method, PATHS[path], body=body, retry=False)
        return result

    def _query(self, path: str, uri: str) -> dict[str, Any]:
        """A call that changes nothing: retried on 502/503."""
        result: dict[str, Any] = self._request("GET", PATHS[path], params={"uri": uri}, retry=True)
        return result
