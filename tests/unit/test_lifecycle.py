"""What the scheduler does with live grants (secretgrants.lifecycle), without a cluster.

The Kubernetes client is an in-memory stand-in that records the order of writes, the
indexes are plain dicts shaped like kopf's, and the PDP pass is a fake: the lifecycle
actions (revoke, expire, renew) are checked on their own; the e2e tests run them
against the real apiserver.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting  # kopf.warn/info need the operator's settings

from secretgrants.audit import Auditor, MemorySink
from secretgrants.lifecycle import Outcome, Tending
from secretgrants.metrics import Metrics
from secretgrants.restarts import RestartLimiter
from secretgrants.serial import GrantLocks
from secretgrants.tenancy import env_tenant

NS = "team-a"
URI = "yaml://dev/app/db#password"
SA_UID = "uid-1"


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def grant(
    name: str = "db",
    *,
    phase: str = "Granted",
    expires_in: float = 3600,
    sa_uid: str = SA_UID,
    renewal: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "secretUri": URI,
        "purpose": "read",
        "serviceAccountName": "app",
        "justification": "unit",
    }
    if renewal:
        spec["renewal"] = renewal
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
    return {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretGrantRequest",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
        "status": {
            "phase": phase,
            "observedGeneration": 1,
            "expiresAt": rfc3339(expires),
            "binding": {"serviceAccountName": "app", "serviceAccountUID": sa_uid},
            "delivery": {"mode": "Volume", "secretName": f"{name}-delivery"},
            "usesRemaining": 3,
        },
    }


class KubeStandIn:
    """The grant reads and the writes an ending makes, in memory, in order."""

    def __init__(self) -> None:
        self.grants: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.grants.get((namespace, name))

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        self.writes.append(("blank", name, annotations))
        return True

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        name = obj["metadata"]["name"]
        self.writes.append(("status", name, obj["status"]))
        self.grants[(namespace, name)]["status"] = obj["status"]
        return obj


class Authorize:
    def __init__(self, permitted: bool) -> None:
        self.permitted = permitted
        self.calls = 0

    async def __call__(self, memo: kopf.Memo, parsed: Any, outcome: Any, **kw: Any) -> Outcome:
        self.calls += 1
        return Outcome({"phase": "Granted"}, permitted=self.permitted)


@pytest.fixture(autouse=True)
def quiet_kopf_events() -> Iterator[None]:
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.CRITICAL  # no event queue here: post nothing
    token = posting.settings_var.set(settings)
    yield
    posting.settings_var.reset(token)


@pytest.fixture
def memo() -> kopf.Memo:
    memo = kopf.Memo()
    memo.fallback = env_tenant("tenant-a", ["yaml://dev"])
    memo.kube = KubeStandIn()
    memo.metrics = Metrics()
    memo.audit_memory = MemorySink()
    memo.audit = Auditor([memo.audit_memory])
    memo.restarts = RestartLimiter(300)
    memo.grant_locks = GrantLocks()
    return memo


@pytest.fixture
def indexes() -> dict[str, Any]:
    return {
        "service_accounts": {(NS, "app"): [SA_UID]},
        "namespace_labels": {NS: [{}]},
        "tenant_sources": {},
    }


def tending(memo: kopf.Memo, indexes: dict[str, Any], permitted: bool = True) -> Tending:
    return Tending(memo, indexes, Authorize(permitted), recheck_interval=30)


def observe(t: Tending, obj: dict[str, Any], type_: str | None = None) -> None:
    t.observe(type_, NS, obj["metadata"]["name"], obj["spec"], obj["status"])


def test_a_live_grant_is_scheduled_at_its_expiry_and_others_are_forgotten(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    obj = grant(expires_in=600)
    observe(t, obj)
    at = t.scheduler.deadline((NS, "db"))
    assert at is not None and abs(at - (time.time() + 600)) < 2
    observe(t, grant("renewing", renewal={"enabled": True, "beforeExpirySeconds": 100}))
    at = t.scheduler.deadline((NS, "renewing"))
    assert at is not None and abs(at - (time.time() + 3500)) < 2
    assert len(t) == 2
    observe(t, grant(phase="Expired"))
    observe(t, grant("renewing"), "DELETED")
    assert len(t) == 0 and len(t.scheduler) == 0


def test_an_overdue_or_rebound_grant_is_due_at_once(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    observe(t, grant("overdue", expires_in=-30))  # the operator was down at expiresAt
    observe(t, grant("rebound", sa_uid="uid-of-the-deleted-sa"))
    for name in ("overdue", "rebound"):
        at = t.scheduler.deadline((NS, name))
        assert at is not None and at <= time.time()


def test_the_sweep_names_grants_whose_guard_or_binding_fails_now(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    observe(t, grant("a"))
    observe(t, grant("b"))
    assert t.sweep() == []
    indexes["service_accounts"][(NS, "app")] = ["uid-2"]  # the SA was recreated
    assert sorted(t.sweep()) == [(NS, "a"), (NS, "b")]
    indexes["service_accounts"][(NS, "app")] = [SA_UID]
    memo.fallback = env_tenant("tenant-a", ["yaml://other"])  # the tenant changed
    assert sorted(t.sweep()) == [(NS, "a"), (NS, "b")]


async def test_an_expired_grant_is_blanked_first_then_marked_expired(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    obj = grant(expires_in=-1)
    memo.kube.grants[(NS, "db")] = obj
    assert await t.tend((NS, "db")) is None
    kinds = [(w[0], w[1]) for w in memo.kube.writes]
    assert kinds == [("blank", "db-delivery"), ("status", "db")]
    assert memo.kube.writes[0][2] == {"secretgrants.io/state": "expired"}
    assert obj["status"]["phase"] == "Expired" and obj["status"]["usesRemaining"] == 0
    assert [e.type.value for e in memo.audit_memory.events] == ["expired"]
    # a second pass (a restart mid-action, a duplicate wake) changes nothing
    assert await t.tend((NS, "db")) is None
    assert len(memo.kube.writes) == 2


async def test_a_grant_not_yet_due_is_left_alone_and_rescheduled(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    memo.kube.grants[(NS, "db")] = grant(expires_in=120)
    at = await t.tend((NS, "db"))
    assert at is not None and abs(at - (time.time() + 120)) < 2
    assert memo.kube.writes == []
    assert await t.tend((NS, "deleted-meanwhile")) is None


async def test_a_recreated_service_account_revokes(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    obj = grant()
    memo.kube.grants[(NS, "db")] = obj
    indexes["service_accounts"][(NS, "app")] = ["uid-2"]
    assert await t.tend((NS, "db")) is None
    assert [w[0] for w in memo.kube.writes] == ["blank", "status"]
    assert obj["status"]["phase"] == "Revoked"
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "recreated" in ready["message"]


async def test_a_tenant_that_stops_allowing_the_mount_revokes(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    t = tending(memo, indexes)
    obj = grant()
    memo.kube.grants[(NS, "db")] = obj
    memo.fallback = env_tenant("tenant-a", ["yaml://other"])
    assert await t.tend((NS, "db")) is None
    assert obj["status"]["phase"] == "Revoked"
    assert memo.kube.writes[0][2] == {"secretgrants.io/state": "revoked"}


async def test_renewal_is_asked_once_per_expiry_and_refusal_waits_for_expiry(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    authorize = Authorize(permitted=False)
    t = Tending(memo, indexes, authorize, recheck_interval=30)
    obj = grant(expires_in=20, renewal={"enabled": True, "beforeExpirySeconds": 60})
    memo.kube.grants[(NS, "db")] = obj
    at = await t.tend((NS, "db"))
    assert authorize.calls == 1
    assert at is not None and abs(at - (time.time() + 20)) < 2  # now only the expiry
    observe(t, obj)  # a watch event of the same grant keeps the refusal in mind
    scheduled = t.scheduler.deadline((NS, "db"))
    assert scheduled is not None and abs(scheduled - at) < 1
    await t.tend((NS, "db"))
    assert authorize.calls == 1 and memo.kube.writes == []


async def test_a_permitted_renewal_writes_the_new_status_and_looks_again_soon(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    authorize = Authorize(permitted=True)
    t = Tending(memo, indexes, authorize, recheck_interval=30)
    obj = grant(phase="Exhausted", renewal={"enabled": True})
    memo.kube.grants[(NS, "db")] = obj
    at = await t.tend((NS, "db"))
    assert authorize.calls == 1 and at is not None and at - time.time() < 2
    assert [(w[0], w[1]) for w in memo.kube.writes] == [("status", "db")]
    assert obj["status"]["phase"] == "Granted"
    assert [e.type.value for e in memo.audit_memory.events] == ["renewed"]


class PodsStandIn(KubeStandIn):
    """Adds the pod listing and the compare-and-swap status write that settling uses."""

    def __init__(self) -> None:
        super().__init__()
        self.pods: list[dict[str, Any]] = []

    async def list_pod_annotations(
        self, namespace: str, selector: str | None = None
    ) -> list[dict[str, Any]]:
        if selector is None:
            return self.pods
        key, _, value = selector.partition("=")  # as the apiserver filters by label
        return [p for p in self.pods if (p["metadata"].get("labels") or {}).get(key) == value]

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        self.writes.append(("replace", obj["metadata"]["name"], obj["status"]))
        self.grants[(namespace, obj["metadata"]["name"])] = obj
        return obj


async def test_reserved_uses_are_settled_by_the_scheduler_from_the_oldest_reservation(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    memo.kube = PodsStandIn()
    memo.config = type("Cfg", (), {"reservation_window_seconds": 30})()
    t = tending(memo, indexes)
    reserved_at = time.time() - 0.5
    obj = grant(expires_in=600)
    obj["status"]["reservations"] = [
        {"id": "r1", "reservedAt": rfc3339(dt.datetime.fromtimestamp(reserved_at, dt.UTC))}
    ]
    obj["status"]["usesConsumed"] = 1
    memo.kube.grants[(NS, "db")] = obj
    observe(t, obj)
    at = t.scheduler.deadline((NS, "db"))
    assert at is not None and abs(at - (reserved_at + 2.0)) < 1.1  # not at expiry, 600 s away
    observe(t, obj)  # another event (another pod admitted) does not push the settling back
    assert t.scheduler.deadline((NS, "db")) == at
    # due: no pod carries r1 yet, within the window -> nothing written, looked at again soon
    nxt = await t.tend((NS, "db"))
    assert memo.kube.writes == [] and nxt is not None and time.time() < nxt <= time.time() + 2.1
    # the pod appeared: the reservation is confirmed (the list emptied), the use stays counted
    memo.kube.pods = [{"metadata": {"annotations": {"secretgrants.io/reservations": "db=r1"}}}]
    await t.tend((NS, "db"))
    (write,) = memo.kube.writes
    assert write[0] == "replace" and write[2]["reservations"] == []
    assert write[2]["usesConsumed"] == 1
    observe(t, memo.kube.grants[(NS, "db")])
    at = t.scheduler.deadline((NS, "db"))
    assert at is not None and at > time.time() + 500  # back to its expiry


class Unavailable(Authorize):
    """The PDP does not answer for the first ``failures`` calls, then permits."""

    def __init__(self, failures: int) -> None:
        super().__init__(permitted=True)
        self.failures = failures

    async def __call__(self, memo: kopf.Memo, parsed: Any, outcome: Any, **kw: Any) -> Outcome:
        self.calls += 1
        if self.calls <= self.failures:
            ready = {"type": "Ready", "reason": "PDPUnavailable", "message": "no answer"}
            return Outcome({"phase": "Denied", "conditions": [ready]}, "PDP unavailable")
        return Outcome({"phase": "Granted"}, permitted=True)


async def test_a_renewal_the_pdp_could_not_answer_is_asked_again_with_backoff(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    authorize = Unavailable(failures=2)
    t = Tending(memo, indexes, authorize, recheck_interval=30)
    obj = grant(expires_in=300, renewal={"enabled": True, "beforeExpirySeconds": 600})
    memo.kube.grants[(NS, "db")] = obj
    first = await t.tend((NS, "db"))
    assert authorize.calls == 1 and first is not None and 4 < first - time.time() < 6
    second = await t.tend((NS, "db"))
    assert authorize.calls == 2 and second is not None and 9 < second - time.time() < 11
    assert memo.kube.writes == []  # nothing written while the PDP does not answer
    third = await t.tend((NS, "db"))
    assert authorize.calls == 3 and third is not None and third - time.time() < 2
    assert obj["status"]["phase"] == "Granted"
    assert [e.type.value for e in memo.audit_memory.events] == ["renewed"]


async def test_a_renewal_retry_is_never_later_than_the_expiry(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    authorize = Unavailable(failures=10)
    t = Tending(memo, indexes, authorize, recheck_interval=30)
    obj = grant(expires_in=3, renewal={"enabled": True, "beforeExpirySeconds": 600})
    memo.kube.grants[(NS, "db")] = obj
    at = await t.tend((NS, "db"))
    assert at is not None and at - time.time() < 3.5  # the expiry, not now + 5 s


async def test_a_use_stays_counted_when_its_pod_loses_the_inject_label(
    memo: kopf.Memo, indexes: dict[str, Any]
) -> None:
    """Every pod is looked at, not only those with the inject label: taking the label
    off a running pod must not make its use look unclaimed and give it back."""
    memo.kube = PodsStandIn()
    memo.config = type("Cfg", (), {"reservation_window_seconds": 30})()
    t = tending(memo, indexes)
    long_ago = rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60))  # past the window
    obj = grant(expires_in=600)
    obj["status"]["reservations"] = [
        {"id": "kept", "reservedAt": long_ago},
        {"id": "lost", "reservedAt": long_ago},
    ]
    obj["status"] |= {"usesConsumed": 2, "usesRemaining": 1}
    memo.kube.grants[(NS, "db")] = obj
    unlabelled = {"labels": {}, "annotations": {"secretgrants.io/reservations": "db=kept"}}
    memo.kube.pods = [{"metadata": {"name": "p", **unlabelled}}]
    await t.tend((NS, "db"))
    (write,) = memo.kube.writes
    assert write[2]["reservations"] == []  # "kept" confirmed, "lost" given back
    assert (write[2]["usesConsumed"], write[2]["usesRemaining"]) == (1, 2)
