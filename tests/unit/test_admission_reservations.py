"""A pod uses a delivery Secret only through a use the admission reserved for it.

What goes in: grant ``db`` (with and without a use limit, live and ended), pods
that went through the mutating webhook and pods whose author wrote the
``secretgrants.io/reservations`` annotation themselves (a pod without the inject
label never meets the mutating webhook), over the stand-in GrantStore of
``test_admission_reads``. What is asserted: the validating webhook
(``PodAdmission.validate``) accepts a grant with a use limit only with a
reservation the grant's status holds as pending, a grant without one only while
it is live, and only for a grant the pod asked the mutating webhook for; dry runs;
a ServiceAccount re-created under the bound name; that a created pod's reservations
annotation cannot be changed afterwards; and that another pod's pending reservation,
copied onto pods that ask for no grant or for others, mounts nothing (the mutating
webhook refuses an empty grants list and owns the reservations annotation).
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from secretgrants.admission import (
    ANNOTATION_RESERVATIONS,
    DRY_RUN_RESERVATION,
    AdmissionDenied,
    check_reservations_kept,
)
from secretgrants.audit import Auditor, MemorySink
from secretgrants.grant_reads import GrantReads
from secretgrants.injection import injection_patch
from secretgrants.uses import settle
from secretgrants.webhook import PodAdmission, WebhookServer, serving_cert
from secretgrants.webhook_config import VALIDATE_PATH, validating
from tests.unit.test_admission_reads import (
    NS,
    CountingStore,
    a_grant,
    a_pod,
    admission,
    mounted,
    reservations,
)

PAST = "2000-01-01T00:00:00Z"


def refused(reason: str, err: pytest.ExceptionInfo[AdmissionDenied]) -> str:
    assert err.value.reason == reason, err.value.message
    assert err.value.grant == "db"
    return err.value.message


async def test_a_forged_annotation_on_a_pod_the_mutating_webhook_never_saw_is_refused() -> None:
    """No inject label, so no mutating webhook: the pod's author wrote the annotation
    and mounted the delivery Secret themselves. Nothing was reserved or counted."""
    for grant in (a_grant(usesRemaining=2), a_grant()):  # with and without a use limit
        store = CountingStore(grant)
        with pytest.raises(AdmissionDenied) as err:
            await admission(store).validate(mounted("db=anything", inject=False), NS)
        assert "instead of mounting it directly" in refused("DirectMountNotAllowed", err)
        assert store.writes == 0 and store.grants["db"]["status"]["usesConsumed"] == 0


@pytest.mark.parametrize("rid", ["anything", "", DRY_RUN_RESERVATION, "0123456789abcdef"])
async def test_a_made_up_reservation_of_a_grant_with_a_use_limit_is_refused(rid: str) -> None:
    """Even with the inject label (say another mutating webhook wrote the annotation after
    ours), an id the grant does not hold as pending was not reserved by the admission."""
    store = CountingStore(a_grant(usesRemaining=2))
    with pytest.raises(AdmissionDenied) as err:
        await admission(store).validate(mounted(f"db={rid}"), NS)
    message = refused("DirectMountNotAllowed", err)
    assert "no use of it was reserved for this pod by the admission" in message
    assert store.writes == 0 and store.grants["db"]["status"]["usesConsumed"] == 0


@pytest.mark.parametrize("max_age", [5.0, 0.0], ids=["kept-copy", "fresh-reads"])
async def test_the_use_the_mutating_webhook_reserved_admits_the_pod(max_age: float) -> None:
    store = CountingStore(a_grant(usesRemaining=1))
    adm = admission(store, max_age=max_age)
    patch = await adm.mutate(a_pod(), NS, dry_run=False)
    status = store.grants["db"]["status"]
    assert status["phase"] == "Exhausted"  # this pod took the last use: it is still admitted
    await adm.validate(mounted(reservations(patch)), NS)


async def test_a_kept_copy_older_than_the_reservation_is_read_again() -> None:
    store = CountingStore(a_grant(usesRemaining=2))
    adm = admission(store)
    before = store.grants["db"]
    patch = await adm.mutate(a_pod(), NS, dry_run=False)
    adm.reads.put(NS, "db", before)  # a copy from before the reservation
    reads = store.reads
    await adm.validate(mounted(reservations(patch)), NS)
    assert store.reads == reads + 1


@pytest.mark.parametrize("max_uses", [2, 1])
async def test_a_confirmed_reservation_does_not_admit_a_second_pod(max_uses: int) -> None:
    """Once the operator found the first pod (the use confirmed, no longer pending), its
    reservation id, copied onto another pod, admits nothing."""
    store = CountingStore(a_grant(usesRemaining=max_uses))
    adm = admission(store)
    annotation = reservations(await adm.mutate(a_pod(), NS, dry_run=False))
    await adm.validate(mounted(annotation), NS)
    grant = store.grants["db"]
    rid = annotation.partition("=")[2]
    settled = settle(grant["status"], {rid}, window=dt.timedelta(seconds=30), generation=1)
    assert settled is not None and settled["reservations"] == []
    assert await store.replace_grant_status(NS, {**grant, "status": settled})
    adm.reads.forget(NS, "db")
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(mounted(annotation), NS)
    refused("DirectMountNotAllowed", err)
    assert store.grants["db"]["status"]["usesConsumed"] == 1


async def test_the_grant_must_be_named_by_the_annotation() -> None:
    store = CountingStore(a_grant(usesRemaining=2))
    adm = admission(store)
    annotation = reservations(await adm.mutate(a_pod(), NS, dry_run=False))
    other = annotation.replace("db=", "api=")
    for pod in (mounted(None), mounted(other)):
        with pytest.raises(AdmissionDenied) as err:
            await adm.validate(pod, NS)
        assert "instead of mounting it directly" in refused("DirectMountNotAllowed", err)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"phase": "Exhausted"}, "UsesExhausted"),
        ({"phase": "Expired"}, "GrantExpired"),
        ({"expiresAt": PAST}, "GrantExpired"),
        ({"phase": "Revoked"}, "GrantNotGranted"),
        ({"phase": "Denied"}, "GrantNotGranted"),
        ({"phase": "Exhausted", "usesRemaining": 0}, "DirectMountNotAllowed"),
    ],
)
async def test_an_ended_grants_secret_is_refused_through_a_forged_annotation(
    status: dict[str, Any], reason: str
) -> None:
    """An ended grant's Secret may still hold data until it is blanked: never mounted
    but through a use reserved in the same request (with or without a use limit)."""
    store = CountingStore(a_grant(**status))
    with pytest.raises(AdmissionDenied) as err:
        await admission(store).validate(mounted("db=anything"), NS)
    refused(reason, err)
    assert store.reads == 2  # refused on a fresh read, not on the kept copy alone


async def test_a_live_grant_without_a_use_limit_needs_no_reservation() -> None:
    """Nothing is counted for it, so there is nothing to find: the pod (which the
    mutating webhook saw: it has the inject label) is judged as the mutating webhook
    judges it (bound ServiceAccount, live grant)."""
    await admission(CountingStore(a_grant())).validate(mounted("db=anything"), NS)


async def test_a_dry_run_reservation_admits_a_dry_run_only() -> None:
    store = CountingStore(a_grant(usesRemaining=2))
    adm = admission(store)
    annotation = reservations(await adm.mutate(a_pod(), NS, dry_run=True))
    assert annotation == f"db={DRY_RUN_RESERVATION}" and store.writes == 0
    await adm.validate(mounted(annotation), NS, dry_run=True)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(mounted(annotation), NS)
    refused("DirectMountNotAllowed", err)
    store.grants["db"] = a_grant(phase="Exhausted", usesRemaining=0)
    adm.reads.forget(NS, "db")
    with pytest.raises(AdmissionDenied) as err:  # a dry run answers as a real one would
        await adm.validate(mounted(annotation), NS, dry_run=True)
    refused("UsesExhausted", err)


async def test_a_re_created_service_account_is_refused_at_mutate_and_validate() -> None:
    """The grant is bound to UID u1; the index now knows "app" as u2 (deleted and
    re-created): refused before the revocation, and no renewal is asked for."""
    renewals: list[str] = []

    async def renew(namespace: str, name: str) -> bool:
        renewals.append(name)
        return True

    def uid_is(uid: str | None) -> PodAdmission:
        return PodAdmission(
            store,
            audience=None,
            reads=GrantReads(max_age=5),
            renew=renew,
            service_account_uid=lambda namespace, sa: uid,
        )

    store = CountingStore(a_grant(usesRemaining=2))
    store.grants["db"]["spec"]["renewal"] = {"enabled": True}
    with pytest.raises(AdmissionDenied) as err:
        await uid_is("u2").mutate(a_pod(), NS, dry_run=False)
    assert "deleted and re-created" in refused("ServiceAccountMismatch", err)
    assert store.writes == 0
    annotation = reservations(await uid_is(None).mutate(a_pod(), NS, dry_run=False))  # unknown
    await uid_is("u1").validate(mounted(annotation), NS)
    with pytest.raises(AdmissionDenied) as err:
        await uid_is("u2").validate(mounted(annotation), NS)
    assert "deleted and re-created" in refused("ServiceAccountMismatch", err)
    store.grants["db"]["status"] |= {"phase": "Exhausted", "usesRemaining": 0}
    with pytest.raises(AdmissionDenied):
        await uid_is("u2").mutate(a_pod(), NS, dry_run=False)
    assert renewals == []  # an exhausted grant is renewed for its own ServiceAccount only


def with_annotations(**annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "annotations": annotations}, "spec": {}}


def test_a_created_pods_reservations_annotation_cannot_change() -> None:
    before = with_annotations(**{ANNOTATION_RESERVATIONS: "db=r1", "team": "a"})
    check_reservations_kept(with_annotations(**{ANNOTATION_RESERVATIONS: "db=r1"}), before)
    check_reservations_kept(with_annotations(other="x"), with_annotations())  # had none
    check_reservations_kept(with_annotations(**{ANNOTATION_RESERVATIONS: "db=x"}), None)
    for after in (with_annotations(team="a"), with_annotations(**{ANNOTATION_RESERVATIONS: ""})):
        with pytest.raises(AdmissionDenied) as err:
            check_reservations_kept(after, before)
        assert err.value.reason == "ReservationsImmutable"
        assert "cannot be changed or removed" in err.value.message


def review(operation: str, pod: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    request: dict[str, Any] = {"uid": operation, "namespace": NS, "operation": operation}
    request |= {"object": pod, "oldObject": old, "kind": {"kind": "Pod"}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def test_the_webhook_refuses_forged_creates_and_reservation_edits_and_audits_them() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    events = MemorySink()
    adm = PodAdmission(
        CountingStore(a_grant(usesRemaining=2)), audience=None, auditor=Auditor([events])
    )
    cert = serving_cert(None, dns_names=("localhost",), ips=("127.0.0.1",))
    before = with_annotations(**{ANNOTATION_RESERVATIONS: "db=r1"})
    async with TestClient(TestServer(WebhookServer(adm, cert).app(), host="127.0.0.1")) as client:

        async def answer(body: dict[str, Any]) -> dict[str, Any]:
            response = await (await client.post(VALIDATE_PATH, json=body)).json()
            return response["response"]  # type: ignore[no-any-return]

        created = await answer(review("CREATE", mounted("db=forged"), None))
        assert created["status"]["reason"] == "DirectMountNotAllowed"
        edited = await answer(review("UPDATE", with_annotations(), before))
        assert edited["allowed"] is False
        assert edited["status"]["reason"] == "ReservationsImmutable"
        assert (await answer(review("UPDATE", before, before)))["allowed"] is True
    assert [(e.type, e.reason, e.grant_name, e.correlation_id) for e in events.events] == [
        ("pod_denied", "DirectMountNotAllowed", "db", "CREATE"),
        ("pod_denied", "ReservationsImmutable", None, "UPDATE"),
    ]


def test_the_apiserver_calls_the_webhook_for_reservation_edits_only() -> None:
    uses, edits = validating("sg", {})["webhooks"]
    assert uses["name"] == "pods.validate.secretgrants.io"
    assert [(r["resources"], r["operations"]) for r in edits["rules"]] == [(["pods"], ["UPDATE"])]
    (condition,) = edits["matchConditions"]
    expression = condition["expression"]
    assert expression.count(f"'{ANNOTATION_RESERVATIONS}' in ") == 2
    assert "oldObject.metadata.annotations[" in expression
    assert edits["failurePolicy"] == "Fail" and edits["sideEffects"] == "NoneOnDryRun"


def patched(pod: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """``pod`` with the mutating webhook's JSON Patch applied (the ``add`` and ``remove``
    it uses: the apiserver's part between the two webhooks)."""
    out = copy.deepcopy(pod)
    for op in patch:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        target: Any = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "remove":
            del target[last]
        elif last == "-":
            target.append(op["value"])
        else:
            target[last] = op["value"]
    return out


async def pending_id(adm: PodAdmission) -> str:
    """The id of a use reserved for another pod, still pending (not yet confirmed): in the
    grant's ``status.reservations`` for anyone who may read it, for the 30 s window."""
    return reservations(await adm.mutate(a_pod(), NS, dry_run=False)).partition("=")[2]


def replaying(rid: str, grants: str) -> dict[str, Any]:
    """A pod that copies another pod's pending reservation of ``db`` and mounts ``db``'s
    delivery Secret directly, asking the mutating webhook for ``grants``."""
    pod = mounted(f"db={rid}")
    pod["metadata"]["annotations"]["secretgrants.io/grants"] = grants
    return pod


@pytest.mark.parametrize("grants", [",", " , ,"])
async def test_a_pod_that_names_no_grant_is_refused_by_the_mutating_webhook(grants: str) -> None:
    store = CountingStore(a_grant(usesRemaining=3))
    adm = admission(store)
    rid = await pending_id(adm)
    with pytest.raises(AdmissionDenied) as err:
        await adm.mutate(replaying(rid, grants), NS, dry_run=False)
    assert err.value.reason == "NoGrantsRequested" and err.value.code == 400
    assert store.grants["db"]["status"]["usesConsumed"] == 1


def test_the_mutating_webhook_removes_a_reservations_annotation_it_did_not_write() -> None:
    pod = mounted("db=0123456789abcdef")
    assert patched(pod, injection_patch(pod, [], {}))["metadata"]["annotations"] == {
        "secretgrants.io/grants": "db"
    }
    assert not [op for op in injection_patch(a_pod(), [], {}) if "reservations" in op["path"]]
    written = patched(pod, injection_patch(pod, [], {"api": "fedcba9876543210"}))
    assert written["metadata"]["annotations"][ANNOTATION_RESERVATIONS] == "api=fedcba9876543210"


@pytest.mark.parametrize("grants", [",", "api", "Bad_Name"])
async def test_a_pending_reservation_of_a_grant_the_pod_did_not_request_is_refused(
    grants: str,
) -> None:
    """The pod as the validating webhook would see it had the mutating webhook let its
    author's annotation through: the grant is not among those it asked for, so the use
    was not reserved for it, pending or not."""
    store = CountingStore(a_grant(usesRemaining=3), a_grant("api"))
    adm = admission(store)
    rid = await pending_id(adm)
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(replaying(rid, grants), NS)
    assert "instead of mounting it directly" in refused("DirectMountNotAllowed", err)


@pytest.mark.parametrize("grants", [",", "api"])
async def test_a_copied_pending_reservation_mounts_nothing_through_both_webhooks(
    grants: str,
) -> None:
    """The attack, end to end: N pods copying one pending id, each a direct ``secret``
    volume of ``db``'s delivery Secret, would all have been admitted for one use."""
    store = CountingStore(a_grant(usesRemaining=3), a_grant("api"))
    adm = admission(store)
    rid = await pending_id(adm)
    pod = replaying(rid, grants)
    try:
        pod = patched(pod, await adm.mutate(pod, NS, dry_run=False))
    except AdmissionDenied as denied:
        assert denied.reason == "NoGrantsRequested"
        return
    assert ANNOTATION_RESERVATIONS not in pod["metadata"]["annotations"] or (
        f"db={rid}" not in pod["metadata"]["annotations"][ANNOTATION_RESERVATIONS]
    )
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(pod, NS)
    refused("DirectMountNotAllowed", err)
    assert store.grants["db"]["status"]["usesConsumed"] == 1
