"""KubeClient's requests and error mapping, against a scripted apiserver on 127.0.0.1.

What goes in: a real HTTP server (aiohttp) answering by method and path, and a
login the test controls. What is asserted: the paths, verbs and content types
each method sends (a merge patch whose null removes ``data``), which statuses
become None/False, re-login on 401 and on a rotated token file, and that no
request body (a Secret's value, a reviewed token) reaches an exception; and
what ``login`` hands kopf. The real apiserver's answers are in the e2e tests.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web

from secretgrants.kube import KubeAPIError, KubeClient, Login, login

SECRET = "S3cr3t-VALUE-kube"
TOKEN_UNDER_REVIEW = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
GRANTS = "/apis/secretgrants.io/v1alpha1/namespaces/ns/secretgrantrequests"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Answer = tuple[int, Any]


@dataclass
class StubAPI:
    """Answers (method, path) with scripted (status, JSON) pairs, in order; records requests."""

    routes: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.routes[(method, path)] = list(answers)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                json.loads(raw) if raw else None,
            )
        )
        answers = self.routes.get((request.method, request.path)) or [(404, status(404))]
        code, body = answers.pop(0) if len(answers) > 1 else answers[0]
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=code, text=text, content_type="application/json")


def status(code: int, reason: str = "NotFound", message: str = "not found") -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


@pytest.fixture
async def api() -> AsyncIterator[StubAPI]:
    stub = StubAPI()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stub.url = f"http://127.0.0.1:{port}"
    yield stub
    await runner.cleanup()


def fixed(url: str) -> Callable[[], Login]:
    return lambda: Login(kopf.ConnectionInfo(server=url, token="t1"))


@pytest.fixture
async def kube(api: StubAPI) -> AsyncIterator[KubeClient]:
    client = KubeClient(login=fixed(api.url), name="test")
    yield client
    await client.aclose()


# Error mapping: pure.


def test_a_status_body_gives_reason_and_message() -> None:
    body = json.dumps(status(422, "Invalid", 'Secret "sg-x" is invalid: data[k]: bad')).encode()
    err = KubeAPIError.from_response(
        422, "Unprocessable Entity", body, method="POST", path="/api/v1/namespaces/n/secrets"
    )
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.message == 'Secret "sg-x" is invalid: data[k]: bad'
    assert str(err).startswith("POST /api/v1/namespaces/n/secrets: 422 Invalid: Secret")


def test_a_body_that_is_not_a_status_is_left_out() -> None:
    page = f"<html>upstream echoed {SECRET}</html>".encode()
    err = KubeAPIError.from_response(502, "Bad Gateway", page, method="PUT", path="/x")
    assert (err.status, err.reason, err.message) == (502, "Bad Gateway", "")
    assert SECRET not in str(err)
    assert str(err) == "PUT /x: 502 Bad Gateway"


def test_long_messages_are_cut() -> None:
    body = json.dumps(status(500, "InternalError", "x" * 5000)).encode()
    err = KubeAPIError.from_response(500, "", body, method="GET", path="/")
    assert len(err.message) == 1000


# Requests.


async def test_upsert_creates_then_replaces_on_conflict(api: StubAPI, kube: KubeClient) -> None:
    secrets = "/api/v1/namespaces/ns/secrets"
    api.on("POST", secrets, (409, status(409, "AlreadyExists", "exists")))
    api.on("PUT", f"{secrets}/sg-a", (200, {"kind": "Secret"}))
    body = {"metadata": {"name": "sg-a"}, "data": {"k": base64.b64encode(b"v").decode()}}
    await kube.upsert_secret("ns", body)
    assert [(s.method, s.path) for s in api.seen] == [("POST", secrets), ("PUT", f"{secrets}/sg-a")]
    assert api.seen[1].body == body
    assert api.seen[0].headers["Authorization"] == "Bearer t1"
    assert api.seen[0].headers["User-Agent"].startswith("secretgrants/")


async def test_no_request_body_reaches_the_error(api: StubAPI, kube: KubeClient) -> None:
    api.on("POST", "/api/v1/namespaces/ns/secrets", (500, status(500, "InternalError", "boom")))
    value = base64.b64encode(SECRET.encode()).decode()
    with pytest.raises(KubeAPIError) as err:
        await kube.upsert_secret("ns", {"metadata": {"name": "sg-a"}, "data": {"k": value}})
    shown = f"{err.value} {err.value!r} {err.value.args} {vars(err.value)}"
    assert SECRET not in shown and value not in shown
    assert err.value.status == 500

    api.on("POST", "/apis/authentication.k8s.io/v1/tokenreviews", (403, status(403, "Forbidden")))
    with pytest.raises(KubeAPIError) as review:
        await kube.token_review(TOKEN_UNDER_REVIEW, ["aud"])
    assert TOKEN_UNDER_REVIEW not in f"{review.value} {review.value!r} {vars(review.value)}"


async def test_blank_secret_is_a_merge_patch_whose_null_removes_data(
    api: StubAPI, kube: KubeClient
) -> None:
    path = "/api/v1/namespaces/ns/secrets/sg-a"
    api.on("PATCH", path, (200, {"kind": "Secret"}))
    assert await kube.blank_secret("ns", "sg-a", {"secretgrants.io/state": "revoked"}) is True
    seen = api.seen[-1]
    assert seen.headers["Content-Type"] == "application/merge-patch+json"
    assert seen.body == {
        "data": None,
        "metadata": {"annotations": {"secretgrants.io/state": "revoked"}},
    }
    assert await kube.blank_secret("ns", "gone", {}) is False  # 404


async def test_grant_reads_and_status_writes(api: StubAPI, kube: KubeClient) -> None:
    grant = {"metadata": {"name": "g", "resourceVersion": "7"}, "status": {"phase": "Granted"}}
    api.on("GET", f"{GRANTS}/g", (200, grant))
    api.on(
        "PUT",
        f"{GRANTS}/g/status",
        (200, {**grant, "metadata": {"resourceVersion": "8"}}),
        (409, status(409, "Conflict")),
    )
    api.on("PATCH", f"{GRANTS}/g/status", (200, grant))
    api.on("GET", GRANTS, (200, {"items": [grant]}))
    assert await kube.read_grant("ns", "g") == grant
    assert await kube.read_grant("ns", "absent") is None
    assert (await kube.replace_grant_status("ns", grant) or {})["metadata"][
        "resourceVersion"
    ] == "8"
    assert await kube.replace_grant_status("ns", grant) is None  # conflict
    await kube.patch_grant_status("ns", "g", {"phase": "Expired"})
    patch = api.seen[-1]
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.body == {"status": {"phase": "Expired"}}
    assert await kube.list_grants("ns") == [grant]


async def test_other_errors_are_raised(api: StubAPI, kube: KubeClient) -> None:
    api.on("GET", f"{GRANTS}/g", (403, status(403, "Forbidden", "no")))
    with pytest.raises(KubeAPIError, match="403 Forbidden: no"):
        await kube.read_grant("ns", "g")


async def test_pods_are_listed_as_metadata_only(api: StubAPI, kube: KubeClient) -> None:
    pods = {
        "kind": "PartialObjectMetadataList",
        "items": [
            {"metadata": {"name": "p1", "annotations": {"a": "1"}, "uid": "u"}},
            {"metadata": {"name": "p2"}},
        ],
    }
    api.on("GET", "/api/v1/namespaces/ns/pods", (200, pods))
    found = await kube.list_pod_annotations("ns", "secretgrants.io/inject=true")
    assert found == [
        {"metadata": {"name": "p1", "annotations": {"a": "1"}}},
        {"metadata": {"name": "p2", "annotations": {}}},
    ]
    seen = api.seen[-1]
    assert seen.query == {"labelSelector": "secretgrants.io/inject=true", "limit": "500"}
    assert seen.headers["Accept"].startswith("application/json;as=PartialObjectMetadataList")
    assert len(await kube.list_pod_annotations("ns")) == 2
    assert api.seen[-1].query == {"limit": "500"}  # every pod of the namespace


async def test_a_namespaces_pods_are_listed_page_by_page(api: StubAPI, kube: KubeClient) -> None:
    first = {"metadata": {"continue": "next"}, "items": [{"metadata": {"name": "p1"}}]}
    last = {"metadata": {}, "items": [{"metadata": {"name": "p2"}}]}
    api.on("GET", "/api/v1/namespaces/ns/pods", (200, first), (200, last))
    found = await kube.list_pod_annotations("ns")
    assert [p["metadata"]["name"] for p in found] == ["p1", "p2"]
    assert [(s.query.get("limit"), s.query.get("continue")) for s in api.seen] == [
        ("500", None),
        ("500", "next"),
    ]


async def test_labelled_pods_are_listed_page_by_page_and_watched_from_the_list(
    api: StubAPI, kube: KubeClient
) -> None:
    first = {"metadata": {"continue": "next", "resourceVersion": "7"}, "items": [
        {"metadata": {"name": "p1", "namespace": "a", "annotations": {"x": "1"}}},
    ]}  # fmt: skip
    last = {"metadata": {"resourceVersion": "7"}, "items": [{"metadata": {"name": "p2"}}]}
    api.on("GET", "/api/v1/pods", (200, first), (200, last))
    pods, version = await kube.list_pod_metadata(None, "secretgrants.io/inject=true")
    assert [p["name"] for p in pods] == ["p1", "p2"] and version == "7"
    assert [s.query.get("continue") for s in api.seen] == [None, "next"]
    assert api.seen[0].query["labelSelector"] == "secretgrants.io/inject=true"
    assert api.seen[0].headers["Accept"].startswith("application/json;as=PartialObjectMetadataList")
    events = [
        {"type": "ADDED", "object": {"metadata": {"name": "p3", "resourceVersion": "8"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
        {"type": "DELETED", "object": {"metadata": {"name": "p3", "resourceVersion": "10"}}},
    ]
    stream = "".join(json.dumps(e) + "\n" for e in events)
    api.on("GET", "/api/v1/namespaces/ns/pods", (200, stream))
    async with kube.watch_pod_metadata("ns", "secretgrants.io/inject=true", "7") as watch:
        got = [(type_, meta.get("resourceVersion")) async for type_, meta in watch]
    assert got == [("ADDED", "8"), ("BOOKMARK", "9"), ("DELETED", "10")]
    seen = api.seen[-1]
    assert seen.query == {
        "watch": "true",
        "labelSelector": "secretgrants.io/inject=true",
        "resourceVersion": "7",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }
    assert seen.headers["Accept"].startswith("application/json;as=PartialObjectMetadata;")


async def test_a_watch_too_far_behind_or_refused_raises(api: StubAPI, kube: KubeClient) -> None:
    expired = {"type": "ERROR", "object": status(410, "Expired", "too old resource version")}
    api.on("GET", "/api/v1/pods", (200, json.dumps(expired) + "\n"))
    with pytest.raises(KubeAPIError, match="410 Expired: too old") as raised:
        async with kube.watch_pod_metadata(None, "l=v", "1") as watch:
            async for _ in watch:
                pass
    assert raised.value.status == 410
    api.on("GET", "/api/v1/pods", (403, status(403, "Forbidden", "cannot watch pods")))
    with pytest.raises(KubeAPIError, match="403 Forbidden") as raised:
        async with kube.watch_pod_metadata(None, "l=v", "1"):
            raise AssertionError("entered a refused watch")
    assert raised.value.status == 403


async def test_small_reads(api: StubAPI, kube: KubeClient) -> None:
    api.on("GET", "/api/v1/namespaces/ns/serviceaccounts/app", (200, {"metadata": {"uid": "u-1"}}))
    api.on("GET", "/api/v1/namespaces/ns/secrets/salt", (200, {"data": {"k": "c2FsdA=="}}))
    api.on(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        (201, {"status": {"authenticated": True}}),
    )
    assert await kube.service_account_uid("ns", "app") == "u-1"
    assert await kube.service_account_uid("ns", "absent") is None
    assert await kube.read_secret_key("ns", "salt", "k") == b"salt"
    assert await kube.read_secret_key("ns", "salt", "other") is None
    assert await kube.read_secret_key("ns", "absent", "k") is None
    assert await kube.token_review("tok", ["aud"]) == {"authenticated": True}
    assert api.seen[-1].body["spec"] == {"token": "tok", "audiences": ["aud"]}


async def test_events_webhooks_and_workloads(api: StubAPI, kube: KubeClient) -> None:
    api.on("POST", "/api/v1/namespaces/ns/events", (201, {}))
    involved = {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "ns", "uid": "u"}
    await kube.post_event(involved, type_="Normal", reason="Granted", message="m")
    event = api.seen[-1].body
    assert event["metadata"] == {"generateName": "p.", "namespace": "ns"}
    assert event["firstTimestamp"].endswith("Z")

    hooks = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    api.on("POST", hooks, (409, status(409, "AlreadyExists")))
    api.on("PATCH", f"{hooks}/sg", (200, {}))
    body = {"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "sg"}, "webhooks": []}
    await kube.apply_webhook_configuration(body)
    assert (api.seen[-1].method, api.seen[-1].body) == ("PATCH", body)
    assert api.seen[-1].headers["Content-Type"] == "application/merge-patch+json"

    mutating = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/sg"
    api.on("DELETE", mutating, (200, {}))
    await kube.delete_webhook_configurations("sg")  # the validating one is a 404: fine
    assert [s.path for s in api.seen[-2:]] == [mutating, f"{hooks}/sg"]

    api.on("PATCH", "/apis/apps/v1/namespaces/ns/statefulsets/db", (200, {}))
    assert await kube.patch_workload("ns", "StatefulSet", "db", {"spec": {}}) is True
    assert await kube.patch_workload("ns", "Deployment", "absent", {"spec": {}}) is False


# Credentials.


async def test_a_401_logs_in_again_once(api: StubAPI) -> None:
    logins = itertools.count(1)
    client = KubeClient(
        login=lambda: Login(kopf.ConnectionInfo(server=api.url, token=f"t{next(logins)}"))
    )
    api.on("GET", f"{GRANTS}/g", (401, status(401, "Unauthorized")), (200, {"metadata": {}}))
    try:
        assert await client.read_grant("ns", "g") == {"metadata": {}}
        assert [s.headers["Authorization"] for s in api.seen] == ["Bearer t1", "Bearer t2"]
        api.on("GET", f"{GRANTS}/g", (401, status(401, "Unauthorized")))
        with pytest.raises(KubeAPIError, match="401"):  # still refused: no loop
            await client.read_grant("ns", "g")
        assert [s.headers["Authorization"] for s in api.seen[2:]] == ["Bearer t2", "Bearer t3"]
    finally:
        await client.aclose()


async def test_a_rotated_token_file_is_read_again(api: StubAPI, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    client = KubeClient(
        login=lambda: Login(kopf.ConnectionInfo(server=api.url, token="first"), token_file)
    )
    api.on("GET", f"{GRANTS}/g", (200, {}))
    try:
        await client.read_grant("ns", "g")
        token_file.write_text("second\n")
        stamp = token_file.stat().st_mtime_ns + 1_000_000_000
        os.utime(token_file, ns=(stamp, stamp))
        await client.read_grant("ns", "g")
    finally:
        await client.aclose()
    assert [s.headers["Authorization"] for s in api.seen] == ["Bearer first", "Bearer second"]


# The login kopf and KubeClient share.


def test_login_maps_the_kubeconfig_onto_kopf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-file")
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "n"}}
                ],
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://x:6443",
                            "certificate-authority-data": "Q0E=",
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"tokenFile": "token"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    creds = login()
    assert creds.info == kopf.ConnectionInfo(
        server="https://x:6443",
        ca_data="Q0E=",
        insecure=False,
        token="from-file",
        default_namespace="n",
    )
    assert creds.token_file == tmp_path / "token"


def test_a_plugin_user_without_the_package_cannot_log_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
                "users": [{"name": "u", "user": {"exec": {"command": "get-token"}}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # what the runner does otherwise
    with pytest.raises(
        kopf.LoginError, match="'exec' credential plugin: that needs the kubernetes"
    ):
        login()


def test_no_configuration_is_a_login_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kopf.LoginError, match="no kubeconfig"):
        login()
