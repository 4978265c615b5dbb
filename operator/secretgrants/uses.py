"""Counting uses: reserve one per admitted pod, confirm or release it later. Pure.

The webhook reserves a use with a compare-and-swap on the grant's status
(the caller replaces the status at the resourceVersion it read; a 409 means
someone else counted first, so it reads again and retries). A reservation is
confirmed when a created pod carries its id, and released when no pod does
within the window (a later webhook, or the apiserver, refused the pod after
ours counted it). The functions here take a status and return the new one.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Set
from typing import Any

from secretgrants.admission import AdmissionDenied
from secretgrants.api.common import ConditionStatus, now, set_condition
from secretgrants.grants import parse_conditions
from secretgrants.reasons import ConditionType, Phase, Reason

__all__ = ["consume", "release", "reserve", "settle", "unclaimed"]


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def _with_phase(
    status: dict[str, Any], phase: Phase, generation: int | None, at: dt.datetime
) -> None:
    if status.get("phase") == phase.value:
        return
    status["phase"] = phase.value
    if phase is Phase.EXHAUSTED:
        cond = (
            ConditionStatus.FALSE,
            Reason.EXHAUSTED,
            "every use is consumed; admitted pods keep the value until the grant expires",
        )
    else:
        cond = (ConditionStatus.TRUE, Reason.GRANTED, "uses are available again")
    conditions = set_condition(
        parse_conditions(status), ConditionType.READY, cond[0], cond[1], cond[2], generation, at
    )
    status["conditions"] = [c.to_kube() for c in conditions]


def reserve(
    status: Mapping[str, Any],
    reservation_id: str,
    *,
    generation: int | None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status with one more use counted; AdmissionDenied when none is left."""
    at = at or now()
    out = copy.deepcopy(dict(status))
    if out.get("phase") != Phase.GRANTED.value:
        raise AdmissionDenied(
            "UsesExhausted" if out.get("phase") == Phase.EXHAUSTED.value else "GrantNotGranted",
            f"the grant is {out.get('phase') or Phase.PENDING.value}, not Granted",
        )
    remaining = out.get("usesRemaining")
    if remaining is not None and int(remaining) <= 0:
        raise AdmissionDenied("UsesExhausted", "the grant has no uses left (maxUses reached)")
    out["usesConsumed"] = int(out.get("usesConsumed") or 0) + 1
    pending = list(out.get("reservations") or [])
    pending.append({"id": reservation_id, "reservedAt": _ts(at)})
    out["reservations"] = pending
    if remaining is not None:
        out["usesRemaining"] = int(remaining) - 1
        if out["usesRemaining"] == 0:
            _with_phase(out, Phase.EXHAUSTED, generation, at)
    return out


def release(
    status: Mapping[str, Any],
    reservation_ids: Set[str],
    *,
    generation: int | None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status with the given pending reservations given back."""
    at = at or now()
    out = copy.deepcopy(dict(status))
    pending = list(out.get("reservations") or [])
    kept = [r for r in pending if r.get("id") not in reservation_ids]
    released = len(pending) - len(kept)
    if not released:
        return out
    out["reservations"] = kept
    out["usesConsumed"] = max(0, int(out.get("usesConsumed") or 0) - released)
    if out.get("usesRemaining") is not None:
        out["usesRemaining"] = int(out["usesRemaining"]) + released
        if out.get("phase") == Phase.EXHAUSTED.value and out["usesRemaining"] > 0:
            _with_phase(out, Phase.GRANTED, generation, at)
    return out


def settle(
    status: Mapping[str, Any],
    seen: Set[str],
    *,
    window: dt.timedelta,
    generation: int | None,
    at: dt.datetime | None = None,
    give_back: bool = True,
) -> dict[str, Any] | None:
    """Confirm reservations that created pods carry; release those older than ``window``
    (unless ``give_back`` is False: then they stay pending).

    Returns the new status, or None when nothing changes.
    """
    at = at or now()
    pending = list(status.get("reservations") or [])
    if not pending:
        return None
    confirmed = {r["id"] for r in pending if r.get("id") in seen}
    stale = unclaimed(status, seen, window=window, at=at) if give_back else set()
    if not confirmed and not stale:
        return None
    out = release(status, stale, generation=generation, at=at)
    out["reservations"] = [r for r in out.get("reservations") or [] if r.get("id") not in confirmed]
    return out


def unclaimed(
    status: Mapping[str, Any], seen: Set[str], *, window: dt.timedelta, at: dt.datetime
) -> set[str]:
    """The pending reservations that ``settle`` at ``at`` would give back: none of ``seen``,
    and older than ``window``."""
    return {
        r["id"]
        for r in status.get("reservations") or []
        if r.get("id") not in seen and _parse(str(r["reservedAt"])) + window <= at
    }


def consume(
    status: Mapping[str, Any],
    *,
    generation: int | None,
    jkt: str | None = None,
    x5t_s256: str | None = None,
    at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The status with one API read counted for good, and the sender bound on first use:
    the DPoP key (``jkt``) and the mTLS client certificate (``x5tS256``)."""
    at = at or now()
    out = reserve(status, "api", generation=generation, at=at)
    out["reservations"] = list(status.get("reservations") or [])
    for member, value in (("jkt", jkt), ("x5tS256", x5t_s256)):
        if value is not None:
            binding = dict(out.get("binding") or {})
            binding.setdefault(member, value)
            out["binding"] = binding
    return out


def give_back(
    status: Mapping[str, Any], *, generation: int | None, at: dt.datetime | None = None
) -> dict[str, Any]:
    """The status with one counted API read given back: its values never left the operator
    (the provider failed after the use was counted). The sender binding stays."""
    at = at or now()
    out = copy.deepcopy(dict(status))
    out["usesConsumed"] = max(0, int(out.get("usesConsumed") or 0) - 1)
    if out.get("usesRemaining") is not None:
        out["usesRemaining"] = int(out["usesRemaining"]) + 1
        if out.get("phase") == Phase.EXHAUSTED.value:
            _with_phase(out, Phase.GRANTED, generation, at)
    return out
