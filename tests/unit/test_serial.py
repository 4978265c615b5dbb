"""One writer at a time per grant (secretgrants.serial): the lock registry and the
pure checks a writer makes on the grant it read again under the lock."""

from __future__ import annotations

import asyncio
from typing import Any

from secretgrants.grants import LIVE_PHASES
from secretgrants.serial import (
    RENEWABLE_PHASES,
    GrantLocks,
    merge_patch,
    must_blank,
    renewal_blocked,
)

NS = "team-a"


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
