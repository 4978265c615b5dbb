"""The Argo CD health check (examples/gitops/argocd/health.lua), run by a real Lua (lupa)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = (
    Path(__file__).resolve().parents[2] / "examples" / "gitops" / "argocd" / "health.lua"
).read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"] or "")


def grant(
    phase: str | None, reason: str = "", generation: int = 1, observed: int = 1
) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"generation": generation}}
    if phase is not None:
        obj["status"] = {
            "phase": phase,
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "reason": reason, "message": f"because {reason}"}],
        }
    return obj


@pytest.mark.parametrize(
    ("obj", "status", "words"),
    [
        (grant(None), "Progressing", "waiting"),
        (grant("Pending", "ServiceAccountNotFound"), "Progressing", "ServiceAccountNotFound"),
        (grant("Granted", "Granted"), "Healthy", "Granted"),
        (grant("Granted", "Granted", generation=2, observed=1), "Progressing", "latest spec"),
        (grant("Denied", "PDPUnavailable"), "Degraded", "PDPUnavailable"),
        (grant("Rejected", "MountNotAllowed"), "Degraded", "MountNotAllowed"),
        (grant("Expired", "Expired"), "Degraded", "Expired"),
        (grant("Exhausted", "Exhausted"), "Degraded", "Exhausted"),
        (grant("Revoked", "Revoked"), "Degraded", "Revoked"),
    ],
)
def test_health(obj: dict[str, Any], status: str, words: str) -> None:
    got, message = health(obj)
    assert got == status
    assert words in message
