"""One writer at a time per grant (secretgrants.serial): the races between the spec
handler, renewals, expiry and revocations, driven step by step.

What goes in: the real handlers and lifecycle code (``reconcile_grant``, the
scheduler's ``Tending.tend``, admission's ``renew_now``, ``revoke_on_delete``,
``service_account_gone``) with the real decision pass (``authorize_and_deliver``,
the built-in PDP, the YAML provider), over an in-memory apiserver that keeps
``resourceVersion`` and refuses a stale compare-and-swap as the real one does (409),
and keeps the delivery Secrets' data. A race is forced by holding one writer on an
``asyncio.Event`` (in its PDP call, or in a Secret write) while another runs. What
is asserted: the final phase, and that a grant whose phase is not live has a
delivery Secret without data.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from secretgrants import handlers
from secretgrants.audit import Auditor, MemorySink
from secretgrants.delivery import delivery_secret_name
from secretgrants.grants import LIVE_PHASES
from secretgrants.lifecycle import Tending, renew_now
from secretgrants.metrics import Metrics
from secretgrants.policy import BuiltinPDP, BuiltinPolicy
from secretgrants.policy.model import AccessRequest, Decision
from secretgrants.providers import ProviderRegistry, YAMLFileProvider
from secretgrants.reconcile import authorize_and_deliver
from secretgrants.restarts import RestartLimiter
from secretgrants.salts import SaltResolver
from secretgrants.serial import (
    RENEWABLE_PHASES,
    GrantLocks,
    merge_patch,
    must_blank,
    renewal_blocked,
)
from secretgrants.settings import Settings
from secretgrants.tenancy import env_tenant
from tests.unit.test_lifecycle import quiet_kopf_events  # noqa: F401 (autouse: Events post nothing)

NS = "team-a"
SA_UID = "sa-uid-1"
ALLOWED = "yaml://dev/app/db#password"
DENIED = "yaml://dev/other/db#password"  # in the store, but no rule permits it
SECRET = delivery_secret_name("db")
POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "app-read",
            "subjects": [{"service_account": "app"}],
            "resources": ["yaml://dev/app/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 120},
        }
    ],
}

Key = tuple[str, str]


class Apiserver:
    """Grants (with resourceVersion, generation, status) and Secrets' data, in memory.

    Hooks run inside a Secret write, after it applied: a test holds a writer there
    or changes the grant under it.
    """

    def __init__(self) -> None:
        self.grants: dict[Key, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.service_accounts = {"app": SA_UID}
        self.on_upsert: Callable[[], Awaitable[None]] | None = None
        self.on_blank: Callable[[], Awaitable[None]] | None = None
        self._version = 0

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        obj = {
            "apiVersion": "secretgrants.io/v1alpha1",
            "kind": "SecretGrantRequest",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
            "spec": spec,
        }
        self._bump(obj)
        self.grants[(NS, name)] = obj

    def grant(self, name: str = "db") -> dict[str, Any]:
        return copy.deepcopy(self.grants[(NS, name)])

    def status(self, name: str = "db") -> dict[str, Any]:
        return dict(self.grants[(NS, name)].get("status") or {})

    def edit_spec(self, name: str = "db", **fields: Any) -> None:
        obj = self.grants[(NS, name)]
        obj["spec"] = {**obj["spec"], **fields}
        obj["metadata"]["generation"] += 1
        self._bump(obj)

    def delete(self, name: str = "db") -> None:  # the finalizer holds it: marked only
        obj = self.grants[(NS, name)]
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self._bump(obj)

    def set_status(self, name: str = "db", **fields: Any) -> None:
        obj = self.grants[(NS, name)]
        obj["status"] = merge_patch(obj.get("status") or {}, fields)
        self._bump(obj)

    # --- what KubeClient offers --------------------------------------------------

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        obj = self.grants.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list_grants(self, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (ns, _), o in self.grants.items() if ns == namespace]

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        current = self.grants.get((namespace, obj["metadata"]["name"]))
        if current is None:
            return None
        if current["metadata"]["resourceVersion"] != obj["metadata"].get("resourceVersion"):
            return None  # 409 Conflict
        current["status"] = copy.deepcopy(obj["status"])
        self._bump(current)
        return copy.deepcopy(current)

    async def patch_grant_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        obj = self.grants[(namespace, name)]
        obj["status"] = merge_patch(obj.get("status") or {}, status)
        self._bump(obj)

    async def upsert_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets[body["metadata"]["name"]] = dict(body.get("data") or {})
        hook, self.on_upsert = self.on_upsert, None
        if hook is not None:
            await hook()

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        if name not in self.secrets:
            return False
        self.secrets[name] = {}
        hook, self.on_blank = self.on_blank, None
        if hook is not None:
            await hook()
        return True

    async def service_account_uid(self, namespace: str, name: str) -> str | None:
        return self.service_accounts.get(name)


class GatedPDP:
    """The built-in PDP; the next call can be held (``hold_next``) until released."""

    def __init__(self, inner: BuiltinPDP) -> None:
        self.inner = inner
        self._gates: list[tuple[asyncio.Event, asyncio.Event]] = []

    def hold_next(self) -> tuple[asyncio.Event, asyncio.Event]:
        """(entered, release): set when the next call is in the PDP; set it to go on."""
        gate = (asyncio.Event(), asyncio.Event())
        self._gates.append(gate)
        return gate

    async def evaluate(self, request: AccessRequest) -> Decision:
        if self._gates:
            entered, release = self._gates.pop(0)
            entered.set()
            await release.wait()
        return await self.inner.evaluate(request)

    async def close(self) -> None:
        await self.inner.close()


class WatchedLocks(GrantLocks):
    """The locks, counting who asked for each (to know a writer is waiting)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[Key, int] = {}

    def hold(self, namespace: str, name: str) -> AbstractAsyncContextManager[None]:
        key = (namespace, name)
        self.asked[key] = self.asked.get(key, 0) + 1
        return super().hold(namespace, name)


@pytest.fixture
def api() -> Apiserver:
    return Apiserver()


@pytest.fixture
def pdp() -> GatedPDP:
    return GatedPDP(BuiltinPDP(BuiltinPolicy.from_yaml(yaml.safe_dump(POLICY))))


@pytest.fixture
def indexes() -> dict[str, Any]:
    return {
        "service_accounts": {(NS, "app"): [SA_UID]},
        "namespace_labels": {NS: [{}]},
        "tenant_sources": {},
    }


@pytest.fixture
async def memo(
    api: Apiserver, pdp: GatedPDP, indexes: dict[str, Any], tmp_path: Path
) -> AsyncIterator[kopf.Memo]:
    store = tmp_path / "store.yaml"
    values = {"app": {"db": {"password": "v1"}}, "other": {"db": {"password": "o1"}}}
    store.write_text(yaml.safe_dump({"dev": values}))
    cfg = Settings(tenant_id="tenant-a", tenant_allowed_mounts=["yaml://dev"])
    memo = kopf.Memo()
    memo.config = cfg
    memo.fallback = env_tenant(cfg.tenant_id, cfg.tenant_allowed_mounts)
    memo.pdp = pdp
    memo.providers = ProviderRegistry({"yaml": YAMLFileProvider(store)})
    memo.kube = api
    memo.salts = SaltResolver(_no_salt, "secretgrants-system", b"salt")
    memo.metrics = Metrics()
    memo.audit_memory = MemorySink()
    memo.audit = Auditor([memo.audit_memory])
    memo.restarts = RestartLimiter(300)
    memo.indexes = indexes
    memo.grant_locks = WatchedLocks()
    yield memo
    await memo.providers.close()


async def _no_salt(namespace: str, name: str, key: str) -> bytes | None:
    return None


def tending(memo: kopf.Memo, indexes: dict[str, Any]) -> Tending:
    return Tending(memo, indexes, authorize_and_deliver, recheck_interval=30)


async def spec_handler(memo: kopf.Memo, api: Apiserver, reason: str = "update") -> None:
    """kopf's part around ``reconcile_grant``: the body as the watch brought it, the
    handler, then kopf's patch (what the handler left in ``patch.status``)."""
    body = api.grant()
    patch = kopf.Patch()
    try:
        await handlers.reconcile_grant(
            spec=body["spec"],
            meta=body["metadata"],
            status=body.get("status") or {},
            namespace=NS,
            name="db",
            uid="uid-db",
            patch=patch,
            memo=memo,
            retry=0,
            reason=reason,
            namespace_labels={NS: [{}]},
            tenant_sources={},
        )
    finally:
        if patch.status:
            await api.patch_grant_status(NS, "db", dict(patch.status))


async def granted(memo: kopf.Memo, api: Apiserver, **spec: Any) -> None:
    """A grant for ``ALLOWED``, decided by the spec handler: Granted, its value delivered."""
    api.create(
        "db",
        {
            "secretUri": ALLOWED,
            "purpose": "read",
            "serviceAccountName": "app",
            "justification": "unit",
            **spec,
        },
    )
    await spec_handler(memo, api, reason="create")
    assert api.status()["phase"] == "Granted" and api.secrets[SECRET]


async def waiting(memo: kopf.Memo, task: asyncio.Task[Any], asked: int = 2) -> None:
    """Until ``task`` finished, or waits for the grant's lock (``asked`` callers in all)."""
    locks: WatchedLocks = memo.grant_locks
    for _ in range(5000):
        if task.done() or locks.asked.get((NS, "db"), 0) >= asked:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the writer neither finished nor asked for the lock")


def assert_nothing_left_behind(api: Apiserver) -> None:
    """The invariant: a grant whose phase is not live has a Secret without data."""
    phase = api.status().get("phase")
    if phase not in LIVE_PHASES:
        assert not api.secrets.get(SECRET), f"{phase} grant, Secret still holds data"


def renewing() -> dict[str, Any]:
    """A renewal that is due at once (the TTL is 120 s, renewal 1 h before expiry)."""
    return {"renewal": {"enabled": True, "beforeExpirySeconds": 3600}}


def expired_ago(seconds: int = 5) -> str:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return at.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def audited(memo: kopf.Memo) -> list[str]:
    return [e.type.value for e in memo.audit_memory.events]


# --- (a) a spec change during a renewal ------------------------------------------


async def test_a_spec_the_pdp_denies_during_a_renewal_is_not_undone_by_the_renewal(
    memo: kopf.Memo, api: Apiserver, pdp: GatedPDP, indexes: dict[str, Any]
) -> None:
    await granted(memo, api, **renewing())
    entered, release = pdp.hold_next()
    renewal = asyncio.create_task(tending(memo, indexes).tend((NS, "db")))
    await entered.wait()  # the renewal is in its PDP call
    api.edit_spec(secretUri=DENIED)  # the user edits the spec to something denied
    edit = asyncio.create_task(spec_handler(memo, api))
    await waiting(memo, edit)
    release.set()
    await asyncio.gather(renewal, edit)

    status = api.status()
    assert status["phase"] == "Denied" and status["observedGeneration"] == 2
    assert api.secrets[SECRET] == {}
    assert_nothing_left_behind(api)
    assert "renewed" not in audited(memo)


async def test_a_renewal_whose_spec_changed_under_its_secret_write_gives_up(
    memo: kopf.Memo, api: Apiserver, indexes: dict[str, Any]
) -> None:
    """The edit lands after the renewal's last look, before its status write: the
    compare-and-swap fails, and the renewal leaves the grant to the spec handler."""
    await granted(memo, api, **renewing())
    before = api.status()

    async def edit_now() -> None:
        api.edit_spec(secretUri=DENIED)

    api.on_upsert = edit_now
    await tending(memo, indexes).tend((NS, "db"))
    after = api.status()
    assert after["expiresAt"] == before["expiresAt"]  # not renewed
    assert after["observedGeneration"] == 1 and "renewed" not in audited(memo)
    await spec_handler(memo, api)  # kopf runs the spec handler for the edit
    status = api.status()
    assert status["phase"] == "Denied" and status["observedGeneration"] == 2
    assert api.secrets[SECRET] == {}


# --- (b) expiry against a renewal at the point of use -------------------------------


async def test_an_expiry_and_an_admission_renewal_leave_no_value_in_an_expired_grant(
    memo: kopf.Memo, api: Apiserver, indexes: dict[str, Any]
) -> None:
    """The expiry blanks the Secret and is held before its status write while pod
    admission renews: the renewal must not fill the Secret under a grant the expiry
    then marks Expired."""
    await granted(memo, api, renewal={"enabled": True, "beforeExpirySeconds": 1})
    api.set_status(expiresAt=expired_ago())
    blanked, go_on = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        blanked.set()
        await go_on.wait()

    api.on_blank = hold
    expiry = asyncio.create_task(tending(memo, indexes).tend((NS, "db")))
    await blanked.wait()
    admission = asyncio.create_task(renew_now(memo, NS, "db", authorize_and_deliver))
    await waiting(memo, admission)
    go_on.set()
    renewed = (await asyncio.gather(expiry, admission))[1]

    assert_nothing_left_behind(api)
    # the admission's renewal came after the expiry: a fresh decision, delivered again
    assert renewed and api.status()["phase"] == "Granted" and api.secrets[SECRET]
    assert audited(memo)[-2:] == ["delivery_written", "renewed"]


async def test_an_expiry_that_waited_for_a_renewal_leaves_the_renewed_grant_alone(
    memo: kopf.Memo, api: Apiserver, pdp: GatedPDP, indexes: dict[str, Any]
) -> None:
    await granted(memo, api, renewal={"enabled": True, "beforeExpirySeconds": 1})
    api.set_status(expiresAt=expired_ago())
    entered, release = pdp.hold_next()
    admission = asyncio.create_task(renew_now(memo, NS, "db", authorize_and_deliver))
    await entered.wait()  # the admission's renewal is in its PDP call
    expiry = asyncio.create_task(tending(memo, indexes).tend((NS, "db")))
    await waiting(memo, expiry)
    release.set()
    await asyncio.gather(admission, expiry)

    assert api.status()["phase"] == "Granted" and api.secrets[SECRET]
    assert "expired" not in audited(memo)  # it read the renewed grant: nothing was due


# --- revocations against a renewal -------------------------------------------------


async def test_a_grant_deleted_during_a_renewal_is_not_filled_again(
    memo: kopf.Memo, api: Apiserver, pdp: GatedPDP, indexes: dict[str, Any]
) -> None:
    await granted(memo, api, **renewing())
    entered, release = pdp.hold_next()
    renewal = asyncio.create_task(tending(memo, indexes).tend((NS, "db")))
    await entered.wait()
    api.delete()
    body = api.grant()  # what kopf hands the deletion handler
    deletion = asyncio.create_task(
        handlers.revoke_on_delete(
            name="db", namespace=NS, spec=body["spec"], status=body["status"], memo=memo
        )
    )
    await waiting(memo, deletion)
    release.set()
    await asyncio.gather(renewal, deletion)

    assert api.secrets[SECRET] == {}
    assert "renewed" not in audited(memo) and audited(memo)[-1] == "revoked"


async def test_a_service_account_deleted_during_a_renewal_revokes_the_grant(
    memo: kopf.Memo, api: Apiserver, pdp: GatedPDP, indexes: dict[str, Any]
) -> None:
    await granted(memo, api, **renewing())
    entered, release = pdp.hold_next()
    renewal = asyncio.create_task(tending(memo, indexes).tend((NS, "db")))
    await entered.wait()  # the ServiceAccount was looked up already: it existed
    del api.service_accounts["app"]
    indexes["service_accounts"].pop((NS, "app"))
    gone = asyncio.create_task(
        handlers.service_account_gone(type="DELETED", name="app", namespace=NS, memo=memo)
    )
    await waiting(memo, gone)
    release.set()
    await asyncio.gather(renewal, gone)

    assert api.status()["phase"] == "Revoked"
    assert_nothing_left_behind(api)


async def test_an_admission_renewal_of_a_grant_deleted_under_its_secret_write_takes_the_value_back(
    memo: kopf.Memo, api: Apiserver, indexes: dict[str, Any]
) -> None:
    """An Expired grant renewed at admission is deleted while the value is written: the
    status write fails, the grant is not live, so the renewal empties the Secret (the
    deletion handler sees an Expired grant and has nothing to take back)."""
    await granted(memo, api, renewal={"enabled": True, "beforeExpirySeconds": 1})
    api.set_status(expiresAt=expired_ago())
    await tending(memo, indexes).tend((NS, "db"))
    assert api.status()["phase"] == "Expired" and api.secrets[SECRET] == {}
    at_deletion: dict[str, Any] = {}

    async def delete_now() -> None:
        api.delete()
        at_deletion.update(api.grant())

    api.on_upsert = delete_now
    assert not await renew_now(memo, NS, "db", authorize_and_deliver)
    await handlers.revoke_on_delete(
        name="db",
        namespace=NS,
        spec=at_deletion["spec"],
        status=at_deletion["status"],
        memo=memo,
    )
    assert api.status()["phase"] == "Expired"
    assert api.secrets[SECRET] == {}


async def test_an_ending_that_loses_to_a_counted_use_is_written_on_the_fresh_status(
    memo: kopf.Memo, api: Apiserver, indexes: dict[str, Any]
) -> None:
    """Pod admission counts a use (a compare-and-swap of its own, no lock) between the
    expiry's read and its write: the expiry reads again and writes on what it finds."""
    await granted(memo, api, maxUses=5)
    api.set_status(expiresAt=expired_ago())

    async def count_a_use() -> None:
        api.set_status(usesConsumed=1, usesRemaining=4)

    api.on_blank = count_a_use
    assert await tending(memo, indexes).tend((NS, "db")) is None
    status = api.status()
    assert status["phase"] == "Expired" and status["usesConsumed"] == 1
    assert status["usesRemaining"] == 0 and api.secrets[SECRET] == {}


# --- the pure parts ------------------------------------------------------------------


def a_grant(phase: str = "Granted", generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "db", "generation": generation},
        "status": {"phase": phase, "observedGeneration": observed},
    }


def test_renewal_blocked_names_what_changed() -> None:
    live = frozenset(LIVE_PHASES)
    assert renewal_blocked(a_grant(), generation=1, phases=live) is None
    assert renewal_blocked(a_grant("Exhausted"), generation=1, phases=live) is None
    assert "deleted" in str(renewal_blocked(None, generation=1, phases=live))
    deleting = a_grant()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert "being deleted" in str(renewal_blocked(deleting, generation=1, phases=live))
    assert "spec changed" in str(renewal_blocked(a_grant(generation=2), generation=1, phases=live))
    undecided = a_grant(generation=2, observed=1)
    assert "not decided" in str(renewal_blocked(undecided, generation=2, phases=live))
    assert "Expired" in str(renewal_blocked(a_grant("Expired"), generation=1, phases=live))
    assert renewal_blocked(a_grant("Expired"), generation=1, phases=RENEWABLE_PHASES) is None
    assert renewal_blocked(a_grant("Revoked"), generation=1, phases=RENEWABLE_PHASES)


def test_must_blank_a_secret_of_a_grant_gone_ending_or_not_live() -> None:
    assert not must_blank(a_grant("Granted")) and not must_blank(a_grant("Exhausted"))
    assert must_blank(None) and must_blank(a_grant("Expired")) and must_blank(a_grant("Denied"))
    deleting = a_grant()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert must_blank(deleting)


def test_merge_patch_is_rfc_7386() -> None:
    target = {"phase": "Granted", "obligations": {"ttlSeconds": 60, "extra": {"a": "1"}}, "x": [1]}
    patch = {"phase": "Expired", "obligations": {"extra": None}, "x": [2], "grantedAt": None}
    merged = merge_patch(target, patch)
    assert merged == {"phase": "Expired", "obligations": {"ttlSeconds": 60}, "x": [2]}
    assert target["obligations"] == {"ttlSeconds": 60, "extra": {"a": "1"}}  # not changed
    assert merge_patch({}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}


async def test_grant_locks_serialise_one_grant_and_are_dropped_when_unused() -> None:
    locks = GrantLocks()
    order: list[str] = []

    async def writer(tag: str, name: str) -> None:
        async with locks.hold(NS, name):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(writer("a", "db"), writer("b", "db"), writer("c", "other"))
    assert order.index("a-") < order.index("b+")  # one grant: one at a time
    assert order.index("c+") < order.index("a-")  # another grant: not held up
    assert len(locks) == 0 and not locks.held(NS, "db")


async def test_the_deletion_of_an_older_service_account_of_the_same_name_revokes_nothing(
    memo: kopf.Memo, api: Apiserver
) -> None:
    """A late DELETED event of a ServiceAccount the grant is no longer bound to (another
    UID under the same name) leaves the grant alone; the event of its own one revokes it."""
    await granted(memo, api)
    await handlers.service_account_gone(
        type="DELETED", name="app", namespace=NS, uid="an-older-uid", memo=memo
    )
    assert api.status()["phase"] == "Granted" and api.secrets[SECRET]
    await handlers.service_account_gone(
        type="DELETED", name="app", namespace=NS, uid=SA_UID, memo=memo
    )
    assert api.status()["phase"] == "Revoked"
    assert_nothing_left_behind(api)
