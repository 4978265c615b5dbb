"""One writer at a time per grant: the lock every writer of its decision state takes,
and the pure checks each makes on the grant it read again under that lock.

A grant's decision state is its phase and the delivery Secret that goes with it. Its
writers are the spec handler (``handlers.reconcile_grant``), renewals (the scheduler's
and pod admission's), endings (expiry, revocation, a deleted ServiceAccount) and the
revocation of a deleted grant. Each writes the Secret first and the status after, with
a PDP or provider call before them; run concurrently, two of them interleave those
writes, and the last status written can disagree with the Secret (a grant ``Expired``
whose Secret holds a value, a renewal that re-delivers the value of a spec the PDP now
denies). So each takes the grant's lock, reads the grant again, and decides on what it
finds; renewals and endings also write the status by compare-and-swap, which catches
the writers that take no lock (a spec edit, pod admission counting a use). The spec
handler writes its decision before it lets the lock go when the grant is in a phase
other writers act on (``RENEWABLE_PHASES``); otherwise kopf writes it after the handler
returns, with its bookkeeping in the same write, and nobody else acts on it meanwhile.

The invariant kept: a grant whose phase is not live has a delivery Secret without data.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from secretgrants.grants import LIVE_PHASES
from secretgrants.reasons import Phase

__all__ = [
    "RENEWABLE_PHASES",
    "GrantLocks",
    "deleting",
    "merge_patch",
    "must_blank",
    "renewal_blocked",
]

# The phases in which writers other than the spec handler act on a grant: the live ones
# (renewal, expiry, revocation) and Expired (pod admission renews an expired grant). Only
# the spec handler moves a grant into one of them from another phase.
RENEWABLE_PHASES: Final = LIVE_PHASES | {Phase.EXPIRED.value}


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting


class GrantLocks:
    """One ``asyncio.Lock`` per grant (namespace, name), shared by all its writers.

    asyncio locks serialise the coroutines of one process, and that is enough: the
    operator runs as one replica (kopf without peering, see docs/operations.md).
    Across processes they would not hold; the compare-and-swap status writes would
    still turn a lost race into a fresh read. A lock is dropped when nobody holds or
    waits for it, so the registry keeps only the grants being written now.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, namespace: str, name: str) -> AsyncIterator[None]:
        """Hold the grant's lock (not re-entrant: never take it again inside)."""
        key = (namespace, name)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._entries[key]

    def held(self, namespace: str, name: str) -> bool:
        entry = self._entries.get((namespace, name))
        return entry is not None and entry.lock.locked()

    def __len__(self) -> int:
        return len(self._entries)


def deleting(grant: Mapping[str, Any]) -> bool:
    """True when the grant is being deleted (its revocation blanks the Secret)."""
    return bool((grant.get("metadata") or {}).get("deletionTimestamp"))


def renewal_blocked(
    grant: Mapping[str, Any] | None, *, generation: int | None, phases: frozenset[str]
) -> str | None:
    """Why a renewal decided on spec ``generation`` must not deliver now, or None.

    A renewal renews what the spec handler decided: the grant must still be in one of
    ``phases``, at the same spec, and that spec decided (its ``observedGeneration``). A
    changed spec is the spec handler's to decide, before anything else is delivered.
    """
    if grant is None:
        return "the grant was deleted"
    if deleting(grant):
        return "the grant is being deleted"
    current = (grant.get("metadata") or {}).get("generation")
    if current != generation:
        return "its spec changed; the spec handler decides it"
    status = grant.get("status") or {}
    if status.get("observedGeneration") != current:
        return "its spec is not decided yet; the spec handler decides it"
    phase = status.get("phase") or Phase.PENDING.value
    if phase not in phases:
        return f"it is {phase} now"
    return None


def must_blank(grant: Mapping[str, Any] | None) -> bool:
    """True when a delivery Secret written for ``grant`` must be emptied: the grant is
    gone, being deleted, or not live."""
    if grant is None or deleting(grant):
        return True
    return (grant.get("status") or {}).get("phase") not in LIVE_PHASES


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): what a status
    merge patch would have made, for a write that replaces the whole status."""
    merged: dict[str, Any] = _merge(copy.deepcopy(dict(target)), patch)
    return merged


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)  # null removes the member
        else:
            out[key] = _merge(out.get(key), value)
    return out
