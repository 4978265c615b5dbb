"""Per-tenant audit salts (secretgrants.salts)."""

from __future__ import annotations

import logging

import pytest

from secretgrants.api.tenant import SaltSecretRef
from secretgrants.salts import SaltResolver
from secretgrants.tenancy import Tenant


def tenant(ref: SaltSecretRef | None) -> Tenant:
    return Tenant(tenant_id="t", allowed_mounts=((None, "secret"),), source="test", salt_ref=ref)


class Reads:
    def __init__(self, values: dict[tuple[str, str, str], bytes]) -> None:
        self.values = values
        self.calls = 0

    async def __call__(self, namespace: str, name: str, key: str) -> bytes | None:
        self.calls += 1
        return self.values.get((namespace, name, key))


async def test_tenant_salt_is_read_from_the_operator_namespace_and_cached() -> None:
    reads = Reads({("ops", "salt", "salt"): b"tenant-salt"})
    clock = [0.0]
    resolver = SaltResolver(reads, "ops", b"env-salt", ttl_seconds=60, clock=lambda: clock[0])
    ref = SaltSecretRef(namespace="ops", name="salt")
    assert await resolver.salt_for(tenant(ref)) == b"tenant-salt"
    assert await resolver.salt_for(tenant(ref)) == b"tenant-salt"
    assert reads.calls == 1
    clock[0] = 61
    await resolver.salt_for(tenant(ref))
    assert reads.calls == 2
    assert await resolver.salt_for(tenant(None)) == b"env-salt"


async def test_salts_elsewhere_or_missing_fall_back_to_the_env_salt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reads = Reads({("team", "salt", "salt"): b"x"})
    resolver = SaltResolver(reads, "ops", None)
    with caplog.at_level(logging.WARNING):
        assert await resolver.salt_for(tenant(SaltSecretRef(namespace="team", name="salt"))) is None
        assert await resolver.salt_for(tenant(SaltSecretRef(namespace="team", name="salt"))) is None
        assert await resolver.salt_for(tenant(SaltSecretRef(namespace="ops", name="gone"))) is None
    assert reads.calls == 1  # the other namespace is never read
    assert len([r for r in caplog.records if "operator namespace" in r.message]) == 1
