"""Pod admission's API traffic: kept copies of grants, and no write for grants without a use limit.

A stand-in GrantStore counts the reads and writes the admission makes; the
checks themselves are the real ones (secretgrants.webhook.PodAdmission).
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from secretgrants.admission import ANNOTATION_RESERVATIONS, LABEL_INJECT, AdmissionDenied
from secretgrants.delivery import delivery_secret_name
from secretgrants.grant_reads import GrantReads
from secretgrants.webhook import PodAdmission

NS = "team"
FAR = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")


def a_grant(name: str = "db", **status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Granted",
        "expiresAt": FAR,
        "usesConsumed": 0,
        "usesRemaining": None,
        "binding": {"serviceAccountName": "app", "serviceAccountUID": "u1"},
        "delivery": {"secretName": delivery_secret_name(name), "keys": ["password"]},
    }
    base.update(status)
    return {
        "metadata": {"name": name, "namespace": NS, "generation": 1, "resourceVersion": "1"},
        "spec": {"secretUri": "vault+kv2://secret/app/db", "serviceAccountName": "app"},
        "status": base,
    }


def a_pod(grants: str = "db", sa: str = "app", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": {"secretgrants.io/grants": grants}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}], **spec},
    }


class CountingStore:
    """Grants in a dict; counts GETs and status writes, bumps resourceVersion on each write."""

    def __init__(self, *grants: dict[str, Any]) -> None:
        self.grants = {g["metadata"]["name"]: g for g in grants}
        self.reads = 0
        self.writes = 0

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        grant = self.grants.get(name)
        return copy.deepcopy(grant) if grant is not None else None

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        self.writes += 1
        name = obj["metadata"]["name"]
        current = self.grants[name]
        if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            return None  # 409
        written = copy.deepcopy(obj)
        written["metadata"]["resourceVersion"] = str(
            int(current["metadata"]["resourceVersion"]) + 1
        )
        self.grants[name] = written
        return copy.deepcopy(written)

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(g) for g in self.grants.values()]


def admission(store: CountingStore, max_age: float = 5.0) -> PodAdmission:
    return PodAdmission(store, audience=None, reads=GrantReads(max_age=max_age))


async def test_a_grant_without_a_use_limit_is_mounted_with_no_write() -> None:
    store = CountingStore(a_grant())
    patch = await admission(store).mutate(a_pod(), NS, dry_run=False)
    assert store.writes == 0 and store.reads == 1
    assert store.grants["db"]["status"]["usesConsumed"] == 0
    marker = [op for op in patch if ANNOTATION_RESERVATIONS.replace("/", "~1") in op["path"]]
    assert marker and marker[0]["value"].startswith("db=")  # the validating webhook's evidence


async def test_a_grant_with_a_use_limit_counts_each_pod() -> None:
    store = CountingStore(a_grant(usesRemaining=2))
    adm = admission(store)
    await adm.mutate(a_pod(), NS, dry_run=False)
    await adm.mutate(a_pod(), NS, dry_run=False)
    status = store.grants["db"]["status"]
    assert (status["usesConsumed"], status["usesRemaining"], status["phase"]) == (
        2,
        0,
        "Exhausted",
    )
    assert store.writes == 2
    assert store.reads == 1  # the second pod started from the object the first write returned
    with pytest.raises(AdmissionDenied) as err:
        await adm.mutate(a_pod(), NS, dry_run=False)
    assert err.value.reason == "UsesExhausted"


def reservations(patch: list[dict[str, Any]]) -> str:
    """The reservations annotation the mutating webhook's ``patch`` writes."""
    path = "/metadata/annotations/" + ANNOTATION_RESERVATIONS.replace("/", "~1")
    return str(next(op["value"] for op in patch if op["path"] == path))


def mounted(
    annotation: str | None, sa: str = "app", grant: str = "db", *, inject: bool = True
) -> dict[str, Any]:
    """A pod that uses ``grant``'s delivery Secret (a ``secret`` volume), annotated with
    ``annotation`` as its reservations, with the inject label (or not), as the validating
    webhook sees it."""
    pod = a_pod(grant, sa=sa)
    if inject:
        pod["metadata"]["labels"] = {LABEL_INJECT: "true"}
    if annotation is not None:
        pod["metadata"]["annotations"][ANNOTATION_RESERVATIONS] = annotation
    pod["spec"]["volumes"] = [{"name": "v", "secret": {"secretName": delivery_secret_name(grant)}}]
    return pod


async def test_kept_copies_serve_the_next_pods_and_the_validating_webhook() -> None:
    store = CountingStore(a_grant())
    adm = admission(store)
    for _ in range(5):
        patch = await adm.mutate(a_pod(), NS, dry_run=False)
    await adm.validate(mounted(reservations(patch)), NS)
    assert store.reads == 1 and store.writes == 0


async def test_without_kept_copies_every_check_reads() -> None:
    store = CountingStore(a_grant())
    adm = admission(store, max_age=0)
    for _ in range(3):
        await adm.mutate(a_pod(), NS, dry_run=False)
    assert store.reads == 3


async def test_a_kept_copy_never_refuses_a_pod_the_api_would_admit() -> None:
    store = CountingStore(a_grant(binding={"serviceAccountName": "old"}))
    adm = admission(store)
    with pytest.raises(AdmissionDenied):
        await adm.mutate(a_pod(), NS, dry_run=False)
    store.grants["db"] = a_grant()  # rebound to "app" since; the kept copy says "old"
    await adm.mutate(a_pod(), NS, dry_run=False)
    assert store.reads == 2


async def test_the_validating_webhook_refuses_only_on_a_fresh_read() -> None:
    store = CountingStore(a_grant(binding={"serviceAccountName": "old"}))
    adm = admission(store)
    with pytest.raises(AdmissionDenied):
        await adm.mutate(a_pod(), NS, dry_run=False)  # keeps the "old" copy
    store.grants["db"] = a_grant()  # rebound to "app" since; the kept copy says "old"
    await adm.validate(mounted("db=r"), NS)  # no use limit: no reservation to find
    assert store.reads == 2
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(mounted(None, sa="intruder"), NS)
    assert err.value.reason == "ServiceAccountMismatch"


async def test_a_watch_event_of_another_version_drops_the_kept_copy() -> None:
    store = CountingStore(a_grant())
    adm = admission(store)
    await adm.mutate(a_pod(), NS, dry_run=False)
    adm.reads.changed(NS, "db", "1")  # the version kept: still good
    await adm.mutate(a_pod(), NS, dry_run=False)
    assert store.reads == 1
    store.grants["db"] = a_grant(phase="Expired")
    adm.reads.changed(NS, "db", "2")
    with pytest.raises(AdmissionDenied) as err:
        await adm.mutate(a_pod(), NS, dry_run=False)
    assert err.value.reason == "GrantExpired" and store.reads == 2


def test_kept_copies_age_out_and_stay_bounded() -> None:
    clock = [0.0]
    reads = GrantReads(max_age=2.0, size=3, clock=lambda: clock[0])
    reads.put(NS, "a", a_grant("a"))
    clock[0] = 1.9
    assert reads.get(NS, "a") is not None
    clock[0] = 2.1
    assert reads.get(NS, "a") is None
    for name in "bcde":
        reads.put(NS, name, a_grant(name))
    assert len(reads) == 3 and reads.get(NS, "b") is None and reads.get(NS, "e") is not None
    reads.put(NS, "e", None)
    assert reads.get(NS, "e") is None
    assert GrantReads(max_age=0).get(NS, "a") is None
