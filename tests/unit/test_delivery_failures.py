"""Delivery Secrets the apiserver would refuse, and the reasons they become.

What goes in: key names, and a stand-in Kubernetes client whose Secret write fails with
a given apiserver status. What is asserted: which keys are refused before any write,
with a message naming the key and never a value; which apiserver answers stop the grant
(DeliveryFailed) and which are retried (DeliveryUnavailable).
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from secretgrants.delivery import check_secret_keys
from secretgrants.errors import DeliveryFailed, DeliveryUnavailable
from secretgrants.kube import KubeAPIError
from secretgrants.reconcile import _write_delivery


@pytest.mark.parametrize("key", ["password", "db.user", "TLS_CRT", "a-b_c.d", "x" * 253])
def test_keys_a_secret_can_hold(key: str) -> None:
    check_secret_keys([key])


@pytest.mark.parametrize("key", ["db password", "a/b", "", ".", "..", "x" * 254, "é"])
def test_keys_a_secret_cannot_hold_are_refused_by_name(key: str) -> None:
    with pytest.raises(DeliveryFailed) as refused:
        check_secret_keys(["fine", key])
    assert repr(key) in refused.value.message and not refused.value.retryable


class Kube:
    def __init__(self, status: int) -> None:
        self.status = status

    async def upsert_secret(self, namespace: str, body: dict[str, Any]) -> None:
        raise KubeAPIError(
            self.status, "Invalid", "data: Too long", method="POST", path="/api/v1/secrets"
        )


@pytest.mark.parametrize(
    ("status", "retried"),
    [(422, False), (403, False), (413, False), (409, True), (429, True), (503, True)],
)
async def test_an_apiserver_refusal_becomes_a_reason(status: int, retried: bool) -> None:
    memo = kopf.Memo(kube=Kube(status))
    with pytest.raises(DeliveryFailed) as failed:
        await _write_delivery(memo, "ns", {"metadata": {"name": "sg-x"}, "data": {"k": "dmFsdWU="}})
    assert isinstance(failed.value, DeliveryUnavailable) is retried
    assert failed.value.retryable is retried
    assert f"{status} Invalid: data: Too long" in failed.value.message
    assert "dmFsdWU=" not in failed.value.message
