"""A grant switched from Volume to Api delivery takes its value out of the Secret.

What goes in: the grant handler as kopf calls it, with the built-in PDP, a YAML
store and the Kubernetes calls in memory (``test_tracing``'s stand-ins).
What is asserted: the second decision (Api) blanks the Secret the first (Volume)
wrote, before its status is written; a change that keeps Volume delivery does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf

from secretgrants import handlers
from secretgrants.delivery import ANNOTATION_STATE
from secretgrants.policy import BuiltinPDP, BuiltinPolicy
from secretgrants.reconcile import delivery_moved
from tests.unit.test_tracing import NS, URI, KubeStandIn, make_memo, policy, vault_file

__all__ = ["policy", "vault_file"]  # fixtures, used by name


class Recording(KubeStandIn):
    """Also the grant's status (a live grant's decision is read and written directly,
    under its lock) and the Secrets blanked."""

    def __init__(self) -> None:
        super().__init__()
        self.blanked: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}

    async def blank_secret(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        self.blanked.append((name, annotations[ANNOTATION_STATE]))
        return True

    async def read_grant(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": dict(self.status)}

    async def patch_grant_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status.update(status)


async def decide(memo: kopf.Memo, status: dict[str, Any], mode: str, generation: int) -> dict:
    patch = kopf.Patch()
    spec = {
        "secretUri": URI,
        "serviceAccountName": "app",
        "purpose": "read",
        "justification": "t",
        "delivery": {"mode": mode},
    }
    await handlers.reconcile_grant(
        spec=spec,
        meta={"generation": generation},
        status=status,
        namespace=NS,
        name="switch",
        uid="uid-switch",
        patch=patch,
        memo=memo,
        retry=0,
        reason="update",
        namespace_labels={},
        tenant_sources={},
    )
    memo.kube.status.update(dict(patch.status))
    return dict(memo.kube.status)


async def test_volume_then_api_blanks_the_secret_the_volume_decision_wrote(
    vault_file: Path, policy: BuiltinPolicy
) -> None:
    memo = make_memo(vault_file, BuiltinPDP(policy))
    memo.kube = Recording()
    first = await decide(memo, {}, "Volume", 1)
    written = first["delivery"]["secretName"]
    assert first["phase"] == "Granted" and written and memo.kube.blanked == []
    second = await decide(memo, first, "Api", 2)
    assert second["phase"] == "Granted" and (second.get("delivery") or {}).get("secretName") is None
    assert memo.kube.blanked == [(written, "withdrawn")]


async def test_a_change_that_keeps_volume_delivery_blanks_nothing(
    vault_file: Path, policy: BuiltinPolicy
) -> None:
    memo = make_memo(vault_file, BuiltinPDP(policy))
    memo.kube = Recording()
    first = await decide(memo, {}, "Volume", 1)
    await decide(memo, first, "Volume", 2)
    assert memo.kube.blanked == []


def test_delivery_moved_only_when_a_written_secret_is_left_behind() -> None:
    volume = {"delivery": {"secretName": "sg-a-1"}}
    assert delivery_moved(volume, {"delivery": {"secretName": None}})
    assert delivery_moved(volume, {})
    assert not delivery_moved(volume, volume)
    assert not delivery_moved({}, {"delivery": {"secretName": "sg-a-1"}})
