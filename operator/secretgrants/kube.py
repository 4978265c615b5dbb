"""The operator's Kubernetes client: the few reads and writes the handlers need.

The official ``kubernetes`` client is blocking, so every call runs in a
thread. Only this module talks to the API (kopf's own watching aside).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes

from secretgrants.api.common import GROUP, VERSION

# The official client's partial type hints disagree with its dict bodies; use it untyped.
_k8s: Any = kubernetes
client: Any = _k8s.client
config: Any = _k8s.config
ApiException: Any = _k8s.client.exceptions.ApiException

__all__ = ["IO_THREADS", "KubeClient"]

_T = TypeVar("_T")

IO_THREADS = 32  # the default executor's size (set at start) and the connection pool's


class KubeClient:
    """Reads ServiceAccounts, writes delivery Secrets and grant status."""

    def __init__(self, *, threads: int | None = None, name: str = "kube") -> None:
        """``threads``: a dedicated pool (the webhook and the API use one, so that pod
        admission never queues behind background work); the loop's default pool otherwise."""
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"secretgrants-{name}")
            if threads
            else None
        )
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        # Admission and status writes run concurrently in threads: one connection each.
        configuration.connection_pool_maxsize = threads or IO_THREADS
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    async def _run(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def post_event(
        self, involved: dict[str, str], *, type_: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid)."""
        stamp = dt.datetime.now(dt.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{involved['name']}.",
                "namespace": involved["namespace"],
            },
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

        def call() -> None:
            self._core.create_namespaced_event(involved["namespace"], body)

        await self._run(call)

    async def service_account_uid(self, namespace: str, name: str) -> str | None:
        def call() -> str | None:
            try:
                sa = self._core.read_namespaced_service_account(name, namespace)
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            return str(sa.metadata.uid)

        return await self._run(call)

    async def upsert_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the Secret, or replace its data, labels and annotations if it exists."""
        name = body["metadata"]["name"]

        def call() -> None:
            try:
                self._core.create_namespaced_secret(namespace, body)
            except ApiException as err:
                if err.status != 409:
                    raise
                self._core.replace_namespaced_secret(name, namespace, body)

        await self._run(call)

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        """Empty the Secret's data (kubelets keep the last content of a deleted Secret)."""

        def call() -> bool:
            patch = {"data": None, "metadata": {"annotations": annotations}}
            try:
                self._core.patch_namespaced_secret(name, namespace, patch)
            except ApiException as err:
                if err.status == 404:
                    return False
                raise
            return True

        return await self._run(call)

    async def patch_grant_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        def call() -> None:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "secretgrantrequests", name, {"status": status}
            )

        await self._run(call)

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        def call() -> dict[str, Any] | None:
            try:
                obj = self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "secretgrantrequests", name
                )
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            return dict(obj)

        return await self._run(call)

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Write ``obj``'s status at the resourceVersion it was read at.

        Returns the object as written (its new resourceVersion), or None on a conflict.
        """

        def call() -> dict[str, Any] | None:
            try:
                written = self._custom.replace_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    "secretgrantrequests",
                    obj["metadata"]["name"],
                    obj,
                )
            except ApiException as err:
                if err.status == 409:
                    return None
                raise
            return dict(written)

        return await self._run(call)

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]:
        def call() -> list[dict[str, Any]]:
            out = self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "secretgrantrequests"
            )
            return list(out.get("items") or [])

        return await self._run(call)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """One key of one Secret (only tenant salts, in the operator's namespace)."""

        def call() -> bytes | None:
            try:
                secret = self._core.read_namespaced_secret(name, namespace)
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            raw = (secret.data or {}).get(key)
            return base64.b64decode(raw) if raw else None

        return await self._run(call)

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The apiserver's verdict on a bearer token for these audiences (TokenReview status)."""

        def call() -> dict[str, Any]:
            body = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences},
            }
            review = client.AuthenticationV1Api(self._api).create_token_review(body)
            return dict(self._api.sanitize_for_serialization(review.status) or {})

        return await self._run(call)

    async def list_pod_annotations(
        self, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]:
        """Pods' metadata only (name and annotations), for reservation bookkeeping."""

        def call() -> list[dict[str, Any]]:
            pods = self._core.list_namespaced_pod(namespace, label_selector=label_selector)
            return [
                {"metadata": {"name": p.metadata.name, "annotations": p.metadata.annotations or {}}}
                for p in pods.items
            ]

        return await self._run(call)

    async def apply_webhook_configuration(self, body: dict[str, Any]) -> None:
        """Create the (Mutating|Validating)WebhookConfiguration, or bring it to ``body``."""
        admission = client.AdmissionregistrationV1Api(self._api)
        mutating = body["kind"] == "MutatingWebhookConfiguration"
        create = (
            admission.create_mutating_webhook_configuration
            if mutating
            else admission.create_validating_webhook_configuration
        )
        patch = (
            admission.patch_mutating_webhook_configuration
            if mutating
            else admission.patch_validating_webhook_configuration
        )

        def call() -> None:
            try:
                create(body)
            except ApiException as err:
                if err.status != 409:
                    raise
                patch(body["metadata"]["name"], body)

        await self._run(call)

    async def apply_cluster_object(self, plural: str, body: dict[str, Any]) -> bool:
        """Create a cluster-scoped object of ``body``'s apiVersion, or merge-patch it to ``body``.

        False when the cluster has no such resource (404) or forbids it (403).
        """
        group, version = body["apiVersion"].split("/")

        def call() -> bool:
            try:
                self._custom.create_cluster_custom_object(group, version, plural, body)
            except ApiException as err:
                if err.status in (403, 404):
                    return False
                if err.status != 409:
                    raise
                try:
                    self._custom.patch_cluster_custom_object(
                        group, version, plural, body["metadata"]["name"], body
                    )
                except ApiException as again:
                    if again.status in (403, 404):
                        return False
                    raise
            return True

        return await self._run(call)

    async def delete_webhook_configurations(self, name: str) -> None:
        admission = client.AdmissionregistrationV1Api(self._api)

        def call() -> None:
            for delete in (
                admission.delete_mutating_webhook_configuration,
                admission.delete_validating_webhook_configuration,
            ):
                try:
                    delete(name)
                except ApiException as err:
                    if err.status != 404:
                        raise

        await self._run(call)

    async def patch_workload(
        self, namespace: str, kind: str, name: str, body: dict[str, Any]
    ) -> bool:
        """Patch a Deployment, StatefulSet or DaemonSet; False when it does not exist."""
        apps = client.AppsV1Api(self._api)
        patch = {
            "Deployment": apps.patch_namespaced_deployment,
            "StatefulSet": apps.patch_namespaced_stateful_set,
            "DaemonSet": apps.patch_namespaced_daemon_set,
        }[kind]

        def call() -> bool:
            try:
                patch(name, namespace, body)
            except ApiException as err:
                if err.status == 404:
                    return False
                raise
            return True

        return await self._run(call)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
