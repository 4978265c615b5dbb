"""The Secrets API's routes: one table for the server, its OpenAPI document and the SDK.

Constants only, importing nothing, so the SDK does not pull the server (aiohttp) in.
"""

from __future__ import annotations

from typing import Final

__all__ = ["API_BASE", "PATHS", "READ_PATH"]

API_BASE: Final = "/api/secrets/v1"
READ_PATH: Final = API_BASE + "/namespaces/{namespace}/grants/{name}"
PATHS: Final = {
    "secrets": API_BASE + "/secrets",
    "rotate": API_BASE + "/secrets/rotate",
    "undelete": API_BASE + "/secrets/undelete",
    "destroy_versions": API_BASE + "/secrets/destroy-versions",
    "metadata": API_BASE + "/metadata",
    "metadata_detail": API_BASE + "/metadata/detail",
    "owner": API_BASE + "/metadata/owner",
    "keys": API_BASE + "/keys",
    "versions": API_BASE + "/versions",
    "bulk": API_BASE + "/bulk",
    "openapi": API_BASE + "/openapi.json",
}
