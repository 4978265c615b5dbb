"""The pod admission webhook: an HTTPS server in the operator process, the PEP at the point of use.

``/mutate-pods`` checks each grant a pod names, reserves one use per grant
(compare-and-swap on the grant status), and injects the volumes.
``/validate-pods`` refuses pods that use a delivery Secret the admission did
not hand them (for a grant with a use limit: without a use reserved in the
grant's status), or in a container outside the grant's ``delivery.containers``,
at creation and when ephemeral containers are added (an UPDATE of
``pods/ephemeralcontainers``), and refuses updates of a created pod that change
its ``secretgrants.io/reservations`` annotation. The two sides are
``pod_mutation`` and ``pod_validation``, and decisions live in ``admission``,
``injection``, ``secret_use`` and ``uses``; this module serves TLS, joins the
two sides into one ``PodAdmission`` and answers AdmissionReviews.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from secretgrants import tracing
from secretgrants.admission import AdmissionDenied
from secretgrants.pki import new_ca
from secretgrants.pod_mutation import PodMutation
from secretgrants.pod_validation import PodValidation
from secretgrants.webhook_config import MUTATE_PATH, VALIDATE_PATH

__all__ = ["PodAdmission", "ServingCert", "WebhookServer", "serving_cert"]

log = logging.getLogger("secretgrants.webhook")


@dataclass(frozen=True)
class ServingCert:
    cert_file: Path
    key_file: Path
    ca_pem: bytes

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def serving_cert(
    cert_dir: Path | None, *, dns_names: tuple[str, ...], ips: tuple[str, ...]
) -> ServingCert:
    """Mounted files (tls.crt, tls.key, ca.crt, e.g. from cert-manager), else a fresh self-signed CA."""
    if cert_dir is not None:
        ca_file = cert_dir / "ca.crt"
        ca = ca_file.read_bytes() if ca_file.exists() else (cert_dir / "tls.crt").read_bytes()
        return ServingCert(cert_dir / "tls.crt", cert_dir / "tls.key", ca)
    ca_pair = new_ca("secretgrants-webhook-ca")
    leaf = ca_pair.issue(dns_names[0], dns_names=dns_names, ips=ips, server=True)
    directory = Path(tempfile.mkdtemp(prefix="secretgrants-webhook-"))
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(leaf.cert_pem + ca_pair.cert_pem)
    key_file.touch(mode=0o600)
    key_file.write_bytes(leaf.key_pem)
    return ServingCert(cert_file, key_file, ca_pair.cert_pem)


class PodAdmission(PodMutation, PodValidation):
    """The checks and the use accounting, over a GrantStore: both sides on one store, one
    set of kept reads and one auditor."""


def _review_response(uid: str, *, patch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def _review_denial(uid: str, denied: AdmissionDenied) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {
                "code": denied.code,
                "reason": denied.reason,
                "message": f"secretgrants: {denied.message}",
            },
        },
    }


class WebhookServer:
    """aiohttp over TLS; one AdmissionReview per request."""

    def __init__(self, admission: PodAdmission, cert: ServingCert) -> None:
        self.admission = admission
        self.cert = cert
        self._runner: web.AppRunner | None = None
        self.ssl_context: ssl.SSLContext | None = None  # once started
        self.latencies: list[float] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post(MUTATE_PATH, self._mutate)
        app.router.add_post(VALIDATE_PATH, self._validate)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self, address: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self.ssl_context = self.cert.ssl_context()
        site = web.TCPSite(self._runner, address, port, ssl_context=self.ssl_context)
        await site.start()
        log.info("admission webhook listening on https://%s:%d", address, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _mutate(self, request: web.Request) -> web.Response:
        with tracing.span(tracing.SPAN_ADMISSION, operation="mutate"):
            return await self._review(request, mutate=True)

    async def _validate(self, request: web.Request) -> web.Response:
        with tracing.span(tracing.SPAN_ADMISSION, operation="validate"):
            return await self._review(request, mutate=False)

    async def _review(self, request: web.Request, *, mutate: bool) -> web.Response:
        started = time.perf_counter()
        try:
            review = await request.json()
            req = review["request"]
            uid = str(req["uid"])
            pod = req.get("object") or {}
            namespace = str(req.get("namespace") or (pod.get("metadata") or {}).get("namespace"))
            # An UPDATE of a created pod (its metadata), or of pods/ephemeralcontainers
            # (an ephemeral container added): the pod, whole, before and after.
            update = req.get("operation") == "UPDATE"
            ephemeral = update and req.get("subResource") == "ephemeralcontainers"
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"title": "malformed AdmissionReview", "status": 400}, status=400
            )
        pod_name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get(
            "generateName", "?"
        )
        tracing.annotate(grant_namespace=namespace)
        dry_run, old = bool(req.get("dryRun")), req.get("oldObject")
        adm = self.admission
        try:
            patch = None
            if mutate:
                patch = await adm.mutate(pod, namespace, dry_run=dry_run, correlation_id=uid)
                log.info("pod %s/%s admitted with its grants", namespace, pod_name)
            elif ephemeral:
                await adm.validate_ephemeral(
                    pod, old, namespace, dry_run=dry_run, correlation_id=uid
                )
            elif update:
                await adm.validate_update(pod, old, namespace, dry_run=dry_run, correlation_id=uid)
            else:
                await adm.validate(pod, namespace, dry_run=dry_run, correlation_id=uid)
            body = _review_response(uid, patch=patch)
            tracing.annotate(allowed=True)
        except AdmissionDenied as denied:
            log.info("pod %s/%s denied: %s", namespace, pod_name, denied.reason)
            tracing.annotate(allowed=False, reason=denied.reason)
            body = _review_denial(uid, denied)
        except Exception:
            log.exception("admission of pod %s/%s failed", namespace, pod_name)
            tracing.annotate(allowed=False, reason="InternalError")
            body = _review_denial(
                uid,
                AdmissionDenied(
                    "InternalError", "the admission check failed; see the operator log", code=500
                ),
            )
        elapsed = time.perf_counter() - started
        self.admission.metrics.admission_latency.observe(elapsed)
        self.latencies.append(elapsed)
        del self.latencies[:-10_000]
        return web.json_response(body)
