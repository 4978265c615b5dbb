"""A delivery Secret the apiserver refuses is a reason on the grant, not a silent retry loop.

What goes in: a namespace and an operator as in the other e2e tests, and a Vault secret
under the e2e policy's paths whose key ("db password") no Kubernetes Secret can hold.
What is asserted: a Volume grant of that secret stops in phase Error with reason
DeliveryFailed and a message naming the key; no delivery Secret holds its value; the
value is in neither the status nor the operator's log; an Api grant of the same secret
(no Secret to write) is Granted.
"""

from __future__ import annotations

import json
import uuid

import hvac

from secretgrants.devenv import VaultDevServer
from tests.conftest import Cluster, OperatorProcess
from tests.e2e.kube import apply, condition, eventually, get, grant

ODD_VALUE = f"odd-{uuid.uuid4().hex}"  # fresh per run: found anywhere only if it leaked


def test_a_key_no_secret_can_hold_stops_the_grant_with_a_reason(
    cluster: Cluster, ready_namespace: str, operator: OperatorProcess, vault: VaultDevServer
) -> None:
    ns = ready_namespace
    hvac.Client(url=vault.addr, token=vault.root_token).secrets.kv.v2.create_or_update_secret(
        path="e2e/odd", secret={"db password": ODD_VALUE}, mount_point="secret"
    )
    apply(cluster, grant("odd", ns, "vault+kv2://secret/e2e/odd"))

    def stopped() -> dict[str, object]:
        obj = get(cluster, "sgr", "odd", ns)
        ready = condition(obj, "Ready") or {}
        assert (obj.get("status") or {}).get("phase") == "Error", obj.get("status")
        assert ready.get("reason") == "DeliveryFailed", ready
        return obj

    obj = eventually(stopped, timeout=30)
    ready = condition(obj, "Ready") or {}
    assert "'db password'" in str(ready.get("message")) and "delivery.mode: Api" in str(
        ready.get("message")
    )
    secrets = json.loads(
        cluster.kubectl(
            "get", "secrets", "-n", ns, "-l", "secretgrants.io/grant=odd", "-o", "json"
        ).stdout
    )["items"]
    assert all(not s.get("data") for s in secrets)
    assert ODD_VALUE not in json.dumps(obj)

    apply(cluster, grant("odd-api", ns, "vault+kv2://secret/e2e/odd", delivery={"mode": "Api"}))

    def api_granted() -> None:
        status = get(cluster, "sgr", "odd-api", ns).get("status") or {}
        assert status.get("phase") == "Granted", status

    eventually(api_granted, timeout=30)
    assert ODD_VALUE not in operator.log()
