"""Pure admission decisions and use accounting (admission, injection, secret_use, uses)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from secretgrants.admission import (
    ANNOTATION_RESERVATIONS,
    AdmissionDenied,
    check_grant_for_pod,
    pod_service_account,
    requested_grants,
    reservation_ids,
)
from secretgrants.injection import grant_mount, injection_patch
from secretgrants.secret_use import direct_secret_mounts
from secretgrants.uses import release, reserve, settle

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def a_grant(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Granted",
        "expiresAt": "2026-11-22T13:00:00Z",
        "usesConsumed": 0,
        "usesRemaining": 2,
        "binding": {"serviceAccountName": "app", "serviceAccountUID": "u1"},
        "delivery": {"secretName": "sg-db-1234", "keys": ["password", "user"]},
    }
    base.update(status)
    return {
        "metadata": {"name": "db", "generation": 1},
        "spec": {"secretUri": "vault+kv2://secret/app/db", "serviceAccountName": "app"},
        "status": base,
    }


def a_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"annotations": annotations or {}},
        "spec": {"containers": [{"name": "app"}, {"name": "side"}], **spec},
    }


def test_requested_grants_parses_and_dedupes() -> None:
    pod = a_pod({"secretgrants.io/grants": " db, api-key,db ,"})
    assert requested_grants(pod) == ["db", "api-key"]


@pytest.mark.parametrize(
    "value", [None, "  ", ",", " , ,", "Bad_Name", ",".join(f"g{i}" for i in range(17))]
)
def test_requested_grants_refuses_bad_annotations(value: str | None) -> None:
    pod = a_pod({} if value is None else {"secretgrants.io/grants": value})
    with pytest.raises(AdmissionDenied) as err:
        requested_grants(pod)
    assert err.value.code == 400


def test_service_account_defaults_to_default() -> None:
    assert pod_service_account(a_pod()) == "default"
    assert pod_service_account(a_pod(serviceAccountName="app")) == "app"


def test_a_granted_grant_admits_its_service_account() -> None:
    check_grant_for_pod("db", a_grant(), "app", AT)


@pytest.mark.parametrize(
    ("grant", "sa", "reason"),
    [
        (None, "app", "GrantNotFound"),
        (a_grant(phase="Denied"), "app", "GrantNotGranted"),
        (a_grant(phase="Pending"), "app", "GrantNotGranted"),
        (a_grant(phase="Revoked"), "app", "GrantNotGranted"),
        (a_grant(phase="Expired"), "app", "GrantExpired"),
        (a_grant(phase="Exhausted", usesRemaining=0), "app", "UsesExhausted"),
        (a_grant(), "other", "ServiceAccountMismatch"),
        (a_grant(expiresAt="2026-11-22T11:59:59Z"), "app", "GrantExpired"),
        (a_grant(usesRemaining=0), "app", "UsesExhausted"),
        (a_grant(delivery={}), "app", "NotDelivered"),
    ],
)
def test_refusals_have_a_reason(grant: dict[str, Any] | None, sa: str, reason: str) -> None:
    with pytest.raises(AdmissionDenied) as err:
        check_grant_for_pod("db", grant, sa, AT)
    assert err.value.reason == reason
    assert "secret/app/db" not in err.value.message  # never the path


def test_injection_patch_adds_volume_mounts_and_reservations() -> None:
    mount = grant_mount("db", a_grant(), audience=None)
    ops = injection_patch(a_pod(), [mount], {"db": "r1"})
    assert ops[0] == {"op": "add", "path": "/spec/volumes", "value": []}
    volume = ops[1]["value"]
    assert volume["name"] == "sg-db"
    assert volume["projected"]["sources"][0]["secret"]["name"] == "sg-db-1234"
    # optional: the kubelet then removes the files when the Secret is emptied at expiry
    # (with optional: false it fails the update and keeps the old value in the pod).
    assert volume["projected"]["sources"][0]["secret"]["optional"] is True
    assert [i["key"] for i in volume["projected"]["sources"][0]["secret"]["items"]] == [
        "password",
        "user",
    ]
    mounts = [op for op in ops if op["path"].endswith("volumeMounts/-")]
    assert {op["path"] for op in mounts} == {
        "/spec/containers/0/volumeMounts/-",
        "/spec/containers/1/volumeMounts/-",
    }
    assert all(op["value"]["readOnly"] for op in mounts)
    assert ops[-1] == {
        "op": "add",
        "path": "/metadata/annotations/secretgrants.io~1reservations",
        "value": "db=r1",
    }


def test_injection_patch_respects_chosen_containers_and_audience_token() -> None:
    grant = a_grant()
    grant["spec"]["delivery"] = {"containers": ["side"], "audienceToken": True}
    ops = injection_patch(a_pod(), [grant_mount("db", grant, audience="crud.secrets")], {})
    paths = [op["path"] for op in ops]
    assert "/spec/containers/1/volumeMounts/-" in paths
    assert "/spec/containers/0/volumeMounts/-" not in paths
    token = ops[1]["value"]["projected"]["sources"][1]["serviceAccountToken"]
    assert token["audience"] == "crud.secrets" and token["expirationSeconds"] == 600


def test_injection_patch_refuses_conflicts() -> None:
    mount = grant_mount("db", a_grant(), audience=None)
    with pytest.raises(AdmissionDenied, match="already has a volume"):
        injection_patch(a_pod(volumes=[{"name": "sg-db"}]), [mount], {})
    grant = a_grant()
    grant["spec"]["delivery"] = {"containers": ["ghost"]}
    with pytest.raises(AdmissionDenied, match="container 'ghost'"):
        injection_patch(a_pod(), [grant_mount("db", grant, audience=None)], {})


def test_direct_secret_mounts_sees_volumes_projections_and_env() -> None:
    pod = a_pod(
        volumes=[
            {"name": "a", "secret": {"secretName": "s1"}},
            {"name": "b", "projected": {"sources": [{"secret": {"name": "s2"}}]}},
        ],
        containers=[
            {
                "name": "app",
                "envFrom": [{"secretRef": {"name": "s3"}}],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s4", "key": "k"}}}],
            }
        ],
    )
    assert direct_secret_mounts(pod) == {"s1", "s2", "s3", "s4"}


def test_reservation_ids_are_read_per_grant() -> None:
    pods = [
        {"metadata": {"annotations": {ANNOTATION_RESERVATIONS: "db=r1,api=r2"}}},
        {"metadata": {"annotations": {ANNOTATION_RESERVATIONS: "db=r3"}}},
        {"metadata": {}},
    ]
    assert reservation_ids(pods, "db") == {"r1", "r3"}


def test_reserve_counts_until_exhausted() -> None:
    status = a_grant()["status"]
    one = reserve(status, "r1", generation=1, at=AT)
    assert (one["usesConsumed"], one["usesRemaining"], one["phase"]) == (1, 1, "Granted")
    two = reserve(one, "r2", generation=1, at=AT)
    assert (two["usesConsumed"], two["usesRemaining"], two["phase"]) == (2, 0, "Exhausted")
    assert [r["id"] for r in two["reservations"]] == ["r1", "r2"]
    assert two["conditions"][0]["reason"] == "Exhausted"
    with pytest.raises(AdmissionDenied) as err:
        reserve(two, "r3", generation=1, at=AT)
    assert err.value.reason == "UsesExhausted"
    assert status["usesConsumed"] == 0  # the input is not modified


def test_unlimited_grants_count_but_never_exhaust() -> None:
    status = a_grant(usesRemaining=None)["status"]
    for i in range(5):
        status = reserve(status, f"r{i}", generation=1, at=AT)
    assert status["usesConsumed"] == 5 and status["usesRemaining"] is None
    assert status["phase"] == "Granted"


def test_release_gives_uses_back_and_reopens_an_exhausted_grant() -> None:
    status = reserve(
        reserve(a_grant()["status"], "r1", generation=1, at=AT), "r2", generation=1, at=AT
    )
    back = release(status, {"r2"}, generation=1, at=AT)
    assert (back["usesConsumed"], back["usesRemaining"], back["phase"]) == (1, 1, "Granted")
    assert release(back, {"unknown"}, generation=1, at=AT) == back


def test_settle_confirms_seen_and_releases_stale_reservations() -> None:
    status = a_grant()["status"]
    status = reserve(status, "seen", generation=1, at=AT)
    status = reserve(status, "lost", generation=1, at=AT)
    window = dt.timedelta(seconds=30)
    assert settle(status, set(), window=window, generation=1, at=AT) is None  # too young
    out = settle(status, {"seen"}, window=window, generation=1, at=AT + window)
    assert out is not None
    assert out["reservations"] == []
    assert (out["usesConsumed"], out["usesRemaining"], out["phase"]) == (1, 1, "Granted")
