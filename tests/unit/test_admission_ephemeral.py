"""Ephemeral containers (an UPDATE of pods/ephemeralcontainers) and the validating webhook.

What goes in: a pod admitted (or not) with grant ``db``, and the same pod with
ephemeral containers added. What is asserted: the pure decision
(``admission.check_ephemeral_use``), which containers count as added, the
webhook's dispatch of such reviews, and the configuration that asks for them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from secretgrants.admission import (
    ANNOTATION_RESERVATIONS,
    AdmissionDenied,
    added_ephemeral_containers,
    check_ephemeral_use,
    container_secret_refs,
    injected_grants,
)
from secretgrants.audit import Auditor, MemorySink
from secretgrants.delivery import delivery_secret_name
from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
from secretgrants.webhook_config import VALIDATE_PATH, mutating, validating
from tests.unit.test_admission_reads import NS, CountingStore, a_grant, admission

SECRET = delivery_secret_name("db")
AT = dt.datetime.now(dt.UTC)
BY_ENV = {"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "k"}}}]}
BY_ENV_FROM = {"envFrom": [{"secretRef": {"name": SECRET}}]}


def a_pod(
    sa: str = "app", injected: str | None = "db=abc", *debug: dict[str, Any]
) -> dict[str, Any]:
    """A created pod running as ``sa``, with ephemeral containers ``debug``."""
    annotations = {ANNOTATION_RESERVATIONS: injected} if injected else {}
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "app"}]}
    if debug:
        spec["ephemeralContainers"] = [{"name": f"dbg{i}", **c} for i, c in enumerate(debug)]
    return {"metadata": {"name": "p", "namespace": NS, "annotations": annotations}, "spec": spec}


def test_an_ephemeral_container_may_read_its_pods_own_live_grant() -> None:
    check_ephemeral_use("db", a_grant(), SECRET, "app", {"db"}, AT)
    # Exhausted is live: the pod holds one of the uses, and keeps its value.
    check_ephemeral_use(
        "db", a_grant(phase="Exhausted", usesRemaining=0), SECRET, "app", {"db"}, AT
    )


@pytest.mark.parametrize(
    ("grant", "sa", "injected", "reason", "words"),
    [
        (a_grant(), "other", {"db"}, "ServiceAccountMismatch", "bound to another ServiceAccount"),
        (a_grant(), "app", set(), "EphemeralUseNotAllowed", "was not admitted with"),
        (a_grant(), "app", {"api"}, "EphemeralUseNotAllowed", "was not admitted with"),
        (a_grant(phase="Revoked"), "app", {"db"}, "GrantNotGranted", "is Revoked, not Granted"),
        (a_grant(phase="Expired"), "app", {"db"}, "GrantExpired", "has expired"),
        (a_grant(expiresAt="2000-01-01T00:00:00Z"), "app", {"db"}, "GrantExpired", "has expired"),
    ],
)
def test_other_uses_are_refused_with_a_reason(
    grant: dict[str, Any], sa: str, injected: set[str], reason: str, words: str
) -> None:
    with pytest.raises(AdmissionDenied) as err:
        check_ephemeral_use("db", grant, SECRET, sa, injected, AT)
    assert err.value.reason == reason and err.value.grant == "db"
    assert words in err.value.message and "ephemeral container" in err.value.message


def test_only_added_containers_count_and_only_their_env() -> None:
    old = a_pod("app", "db=abc", BY_ENV)
    new = a_pod("app", "db=abc", BY_ENV, {"volumeMounts": [{"name": "sg-db", "mountPath": "/m"}]})
    assert added_ephemeral_containers(new, old) == [new["spec"]["ephemeralContainers"][1]]
    assert container_secret_refs(added_ephemeral_containers(new, old)) == set()
    assert added_ephemeral_containers(new, None) == new["spec"]["ephemeralContainers"]
    changed = a_pod("app", "db=abc", BY_ENV_FROM)
    changed["spec"]["ephemeralContainers"][0]["name"] = "dbg0"  # same name, other content
    assert container_secret_refs(added_ephemeral_containers(changed, old)) == {SECRET}


def test_injected_grants_are_read_from_the_reservations() -> None:
    assert injected_grants(a_pod(injected="db=abc, api=def")) == {"db", "api"}
    assert injected_grants(a_pod(injected=None)) == set()


async def test_validate_ephemeral_checks_the_added_containers_against_the_api() -> None:
    store = CountingStore(a_grant())
    adm = admission(store)
    before = a_pod("other", None)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(a_pod("other", None, BY_ENV), before, NS)
    assert err.value.reason == "ServiceAccountMismatch"
    await adm.validate_ephemeral(a_pod("other", None, {}), before, NS)  # no delivery Secret
    await adm.validate_ephemeral(a_pod("app", "db=abc", BY_ENV_FROM), a_pod(), NS)
    # Already there: not judged again, even though the grant is no longer live.
    store.grants["db"] = a_grant(phase="Revoked")
    adm.reads.forget(NS, "db")
    old = a_pod("app", "db=abc", BY_ENV)
    await adm.validate_ephemeral(a_pod("app", "db=abc", BY_ENV, {}), old, NS)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(a_pod("app", "db=abc", BY_ENV, BY_ENV), old, NS)
    assert err.value.reason == "GrantNotGranted"


def review(operation: str, pod: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    request: dict[str, Any] = {"uid": operation, "namespace": NS, "operation": operation}
    request |= {"object": pod, "oldObject": old}
    if operation == "UPDATE":
        request |= {"subResource": "ephemeralcontainers", "kind": {"kind": "Pod"}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def test_the_webhook_answers_ephemeral_container_updates_and_audits_refusals() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    events = MemorySink()
    adm = PodAdmission(CountingStore(a_grant()), audience=None, auditor=Auditor([events]))
    cert = serving_cert(None, dns_names=("localhost",), ips=("127.0.0.1",))
    server = WebhookServer(adm, cert)
    intruder = a_pod("other", None)
    async with TestClient(TestServer(server.app(), host="127.0.0.1")) as client:

        async def allowed(body: dict[str, Any]) -> dict[str, Any]:
            answer = await (await client.post(VALIDATE_PATH, json=body)).json()
            return answer["response"]  # type: ignore[no-any-return]

        refused = await allowed(review("UPDATE", a_pod("other", None, BY_ENV), intruder))
        assert refused["allowed"] is False
        assert refused["status"]["reason"] == "ServiceAccountMismatch"
        assert refused["status"]["message"].startswith("secretgrants: an ephemeral container")
        assert (await allowed(review("UPDATE", a_pod("other", None, {}), intruder)))["allowed"]
        # A pod CREATE is judged as before: the whole pod, volumes included.
        direct = a_pod("app", None)
        direct["spec"]["volumes"] = [{"name": "v", "secret": {"secretName": SECRET}}]
        created = await allowed(review("CREATE", direct, None))
        assert created["status"]["reason"] == "DirectMountNotAllowed"
    assert [(e.type, e.reason, e.pod, e.grant_name, e.correlation_id) for e in events.events] == [
        ("pod_denied", "ServiceAccountMismatch", "p", "db", "UPDATE"),
        ("pod_denied", "DirectMountNotAllowed", "p", "db", "CREATE"),
    ]


def test_only_the_validating_webhook_sees_ephemeral_container_updates() -> None:
    def rules(config: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        return [
            (tuple(r["resources"]), tuple(r["operations"])) for r in config["webhooks"][0]["rules"]
        ]

    assert rules(validating("sg", {})) == [
        (("pods",), ("CREATE",)),
        (("pods/ephemeralcontainers",), ("UPDATE",)),
    ]
    assert rules(mutating("sg", {})) == [(("pods",), ("CREATE",))]
    expression = validating("sg", {})["webhooks"][0]["matchConditions"][0]["expression"]
    assert "object.spec.ephemeralContainers.exists(" in expression
