"""Ephemeral containers (an UPDATE of pods/ephemeralcontainers) and the validating webhook.

What goes in: a pod admitted (or not) with grant ``db`` (a volume carrying its
delivery Secret, as the mutating webhook injects it), and the same pod with
ephemeral containers added. What is asserted: the pure decision
(``secret_use.check_ephemeral_use``), that it rests on the pod's volumes and
never on its annotations, which containers count as added, the webhook's
dispatch of such reviews, and the configuration that asks for them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from secretgrants.admission import ANNOTATION_RESERVATIONS, AdmissionDenied, pod_reservations
from secretgrants.audit import Auditor, MemorySink
from secretgrants.delivery import delivery_secret_name
from secretgrants.secret_use import (
    added_ephemeral_containers,
    check_ephemeral_use,
    container_secret_refs,
)
from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
from secretgrants.webhook_config import VALIDATE_PATH, mutating, validating
from tests.unit.test_admission_reads import NS, CountingStore, a_grant, admission

SECRET = delivery_secret_name("db")
AT = dt.datetime.now(dt.UTC)
BY_ENV = {"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "k"}}}]}
BY_ENV_FROM = {"envFrom": [{"secretRef": {"name": SECRET}}]}


def a_pod(
    sa: str = "app",
    carried: str | None = SECRET,
    *debug: dict[str, Any],
    annotation: str | None = None,
) -> dict[str, Any]:
    """A created pod running as ``sa``, whose volume ``sg-db`` carries Secret ``carried``
    (none when None), annotated ``secretgrants.io/reservations: annotation``, with
    ephemeral containers ``debug``."""
    annotations = {ANNOTATION_RESERVATIONS: annotation} if annotation else {}
    spec: dict[str, Any] = {"serviceAccountName": sa, "containers": [{"name": "app"}]}
    if carried:
        spec["volumes"] = [
            {"name": "sg-db", "projected": {"sources": [{"secret": {"name": carried}}]}}
        ]
    if debug:
        spec["ephemeralContainers"] = [{"name": f"dbg{i}", **c} for i, c in enumerate(debug)]
    return {"metadata": {"name": "p", "namespace": NS, "annotations": annotations}, "spec": spec}


def test_an_ephemeral_container_may_read_its_pods_own_live_grant() -> None:
    check_ephemeral_use("db", a_grant(), SECRET, a_pod(), AT)
    # Exhausted is live: the pod holds one of the uses, and keeps its value.
    check_ephemeral_use("db", a_grant(phase="Exhausted", usesRemaining=0), SECRET, a_pod(), AT)
    # Any volume carrying the Secret, whatever its name (the validating webhook checked it).
    direct = a_pod(carried=None)
    direct["spec"]["volumes"] = [{"name": "mine", "secret": {"secretName": SECRET}}]
    check_ephemeral_use("db", a_grant(), SECRET, direct, AT, service_account_uid="u1")


@pytest.mark.parametrize(
    ("grant", "pod", "reason", "words"),
    [
        (a_grant(), a_pod("other"), "ServiceAccountMismatch", "bound to another ServiceAccount"),
        (a_grant(), a_pod(carried=None), "EphemeralUseNotAllowed", "was not admitted with"),
        (
            a_grant(),
            a_pod(carried=delivery_secret_name("api")),
            "EphemeralUseNotAllowed",
            "none of its volumes carries that Secret",
        ),
        (  # the annotation is the pod owner's to write: it proves nothing
            a_grant(),
            a_pod(carried=None, annotation="db=abc"),
            "EphemeralUseNotAllowed",
            "was not admitted with",
        ),
        (a_grant(phase="Revoked"), a_pod(), "GrantNotGranted", "is Revoked, not Granted"),
        (a_grant(phase="Expired"), a_pod(), "GrantExpired", "has expired"),
        (a_grant(expiresAt="2000-01-01T00:00:00Z"), a_pod(), "GrantExpired", "has expired"),
    ],
)
def test_other_uses_are_refused_with_a_reason(
    grant: dict[str, Any], pod: dict[str, Any], reason: str, words: str
) -> None:
    with pytest.raises(AdmissionDenied) as err:
        check_ephemeral_use("db", grant, SECRET, pod, AT)
    assert err.value.reason == reason and err.value.grant == "db"
    assert words in err.value.message and "ephemeral container" in err.value.message


def test_a_re_created_service_account_may_not_read_the_grant_of_its_predecessor() -> None:
    check_ephemeral_use("db", a_grant(), SECRET, a_pod(), AT, service_account_uid=None)  # unknown
    with pytest.raises(AdmissionDenied) as err:
        check_ephemeral_use("db", a_grant(), SECRET, a_pod(), AT, service_account_uid="u2")
    assert err.value.reason == "ServiceAccountMismatch" and "re-created" in err.value.message
    assert err.value.message.startswith("an ephemeral container may not read Secret")


def test_only_added_containers_count_and_only_their_env() -> None:
    old = a_pod("app", SECRET, BY_ENV)
    new = a_pod("app", SECRET, BY_ENV, {"volumeMounts": [{"name": "sg-db", "mountPath": "/m"}]})
    assert added_ephemeral_containers(new, old) == [new["spec"]["ephemeralContainers"][1]]
    assert container_secret_refs(added_ephemeral_containers(new, old)) == set()
    assert added_ephemeral_containers(new, None) == new["spec"]["ephemeralContainers"]
    changed = a_pod("app", SECRET, BY_ENV_FROM)
    changed["spec"]["ephemeralContainers"][0]["name"] = "dbg0"  # same name, other content
    assert container_secret_refs(added_ephemeral_containers(changed, old)) == {SECRET}


def test_pod_reservations_are_read_per_grant() -> None:
    assert pod_reservations(a_pod(annotation="db=abc, api=def,")) == {"db": "abc", "api": "def"}
    assert pod_reservations(a_pod(annotation="db")) == {"db": ""}
    assert pod_reservations(a_pod()) == {}


async def test_validate_ephemeral_checks_the_added_containers_against_the_api() -> None:
    store = CountingStore(a_grant())
    adm = admission(store)
    before = a_pod("other", None)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(a_pod("other", None, BY_ENV), before, NS)
    assert err.value.reason == "ServiceAccountMismatch"
    await adm.validate_ephemeral(a_pod("other", None, {}), before, NS)  # no delivery Secret
    await adm.validate_ephemeral(a_pod("app", SECRET, BY_ENV_FROM), a_pod(), NS)
    # Already there: not judged again, even though the grant is no longer live.
    store.grants["db"] = a_grant(phase="Revoked")
    adm.reads.forget(NS, "db")
    old = a_pod("app", SECRET, BY_ENV)
    await adm.validate_ephemeral(a_pod("app", SECRET, BY_ENV, {}), old, NS)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(a_pod("app", SECRET, BY_ENV, BY_ENV), old, NS)
    assert err.value.reason == "GrantNotGranted"


async def test_a_forged_annotation_does_not_let_an_ephemeral_container_read_the_grant() -> None:
    """A pod created without the grant, whose owner wrote the reservations annotation
    afterwards (pod metadata can be edited): its volumes say it was not admitted with it."""
    adm = admission(CountingStore(a_grant()))
    before = a_pod("app", None, annotation="db=0123456789abcdef")
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(
            a_pod("app", None, BY_ENV, annotation="db=0123456789abcdef"), before, NS
        )
    assert err.value.reason == "EphemeralUseNotAllowed"


async def test_a_re_created_service_account_is_refused_when_the_index_knows_its_uid() -> None:
    store = CountingStore(a_grant())
    adm = PodAdmission(store, audience=None, service_account_uid=lambda ns, sa: "u2")
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate_ephemeral(a_pod("app", SECRET, BY_ENV), a_pod(), NS)
    assert err.value.reason == "ServiceAccountMismatch" and "re-created" in err.value.message


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
