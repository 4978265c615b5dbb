"""A grant read whose provider fails spends no use; a spec not yet decided is not read.

What goes in: an in-memory grant store with compare-and-swap semantics (resourceVersion),
a provider that fails or answers. What is asserted: the grant's use counters after a
failed read, and that a later read still has the use; a grant whose spec changed after
its decision (another secretUri) is refused with 409 GrantChanging, the provider unread.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import time
from typing import Any

import pytest

from secretgrants.errors import ProviderUnavailable
from secretgrants.metrics import Metrics
from secretgrants.providers.base import SecretData
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.problems import Problem
from secretgrants.secrets_api.reads import GrantReader
from secretgrants.uses import give_back

CALLER = Caller(
    namespace="team", service_account="app", uid="sa-uid", token="t", claims={"jti": "j1"}
)


class Store:
    def __init__(self, grant: dict[str, Any]) -> None:
        self.grant = grant
        self.version = 1

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(
            {**self.grant, "metadata": {**self.grant["metadata"], "rv": self.version}}
        )

    async def replace_grant_status(
        self, namespace: str, obj: dict[str, Any]
    ) -> dict[str, Any] | None:
        if obj["metadata"]["rv"] != self.version:
            return None  # a conflict: someone wrote in between
        self.version += 1
        self.grant = {**self.grant, "status": obj["status"]}
        return obj


class Provider:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.read_uris: list[str] = []

    async def read(self, uri: Any, version: int | None = None) -> SecretData:
        self.read_uris.append(uri.format())
        if self.fail:
            raise ProviderUnavailable("Vault is unreachable (read)")
        return SecretData(data={"password": "pw"}, version=3)


class Providers:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def provider_for(self, uri: Any) -> Provider:
        return self.provider


def a_grant(uses_remaining: int) -> dict[str, Any]:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": "db", "namespace": "team", "generation": 1},
        "spec": {
            "secretUri": "vault+kv2://secret/team/db#password",
            "purpose": "read",
            "serviceAccountName": "app",
            "maxUses": 1,
            "delivery": {"mode": "Api"},
        },
        "status": {
            "phase": "Granted",
            "observedGeneration": 1,
            "expiresAt": later,
            "usesRemaining": uses_remaining,
            "usesConsumed": 1 - uses_remaining,
            "binding": {"serviceAccountName": "app", "serviceAccountUID": "sa-uid"},
        },
    }


async def test_a_failed_provider_read_gives_the_use_back() -> None:
    store = Store(a_grant(uses_remaining=1))
    provider = Provider(fail=True)
    reader = GrantReader(store, Providers(provider), Metrics())
    with pytest.raises(Problem) as failed:
        await reader.read(CALLER, "team", "db", proof=None, certificate=None)
    assert (failed.value.status, failed.value.code) == (502, "ProviderUnavailable")
    status = store.grant["status"]
    assert (status["phase"], status["usesRemaining"], status["usesConsumed"]) == ("Granted", 1, 0)

    provider.fail = False  # the store is back: the one use is still there
    fresh = Caller(**{**CALLER.__dict__, "claims": {"jti": "j2"}})
    body = await reader.read(fresh, "team", "db", proof=None, certificate=None)
    assert body["data"] == {"password": "pw"} and body["usesRemaining"] == 0
    assert store.grant["status"]["phase"] == "Exhausted"


async def test_a_spec_changed_since_its_decision_is_not_read() -> None:
    grant = a_grant(uses_remaining=1)
    # The owner points the Granted grant at another secret; the operator has not decided
    # the new generation yet, so the status is still the decision on generation 1.
    grant["metadata"]["generation"] = 2
    grant["spec"]["secretUri"] = "vault+kv2://secret/other-team/db#password"
    store = Store(grant)
    provider = Provider(fail=False)
    reader = GrantReader(store, Providers(provider), Metrics())
    with pytest.raises(Problem) as refused:
        await reader.read(CALLER, "team", "db", proof=None, certificate=None)
    assert (refused.value.status, refused.value.code) == (409, "GrantChanging")
    assert provider.read_uris == []
    assert store.grant["status"]["usesRemaining"] == 1 and store.version == 1

    store.grant["status"]["observedGeneration"] = 2  # decided (permitted) again: readable
    body = await reader.read(CALLER, "team", "db", proof=None, certificate=None)
    assert body["data"] == {"password": "pw"}
    assert provider.read_uris == ["vault+kv2://secret/other-team/db"]


def test_give_back_reopens_an_exhausted_grant() -> None:
    status = {"phase": "Exhausted", "usesRemaining": 0, "usesConsumed": 2, "conditions": []}
    out = give_back(status, generation=4)
    assert (out["phase"], out["usesRemaining"], out["usesConsumed"]) == ("Granted", 1, 1)
    unlimited = give_back({"phase": "Granted", "usesConsumed": 5}, generation=1)
    assert unlimited["usesConsumed"] == 4 and "usesRemaining" not in unlimited


async def test_a_token_used_on_a_grant_stays_used_after_the_grant_is_renewed() -> None:
    """A read's token ``jti`` is remembered until the token expires, not only until the
    grant does: a grant renewed while the token is still valid does not take it back."""
    grant = a_grant(uses_remaining=2)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    grant["status"]["expiresAt"] = soon.isoformat().replace("+00:00", "Z")
    store = Store(grant)
    reader = GrantReader(store, Providers(Provider(fail=False)), Metrics())
    claims = {"jti": "renewed-1", "exp": int(time.time()) + 600}
    caller = Caller(**{**CALLER.__dict__, "claims": claims})
    assert (await reader.read(caller, "team", "db", proof=None, certificate=None))["data"]
    await asyncio.sleep(0.4)  # the grant's first term is over ...
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    store.grant["status"]["expiresAt"] = later.isoformat().replace("+00:00", "Z")  # ... renewed
    with pytest.raises(Problem) as replayed:
        await reader.read(caller, "team", "db", proof=None, certificate=None)
    assert (replayed.value.status, replayed.value.code) == (403, "Replay")
    assert store.grant["status"]["usesRemaining"] == 1
