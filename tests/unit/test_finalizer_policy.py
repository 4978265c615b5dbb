"""The finalizer admission policy: matches only grant creation, only in the watched namespaces."""

from __future__ import annotations

from secretgrants.finalizer_policy import FINALIZER, binding, policy


def test_the_policy_adds_the_operator_finalizer_to_created_grants_only() -> None:
    spec = policy("secretgrants")["spec"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["CREATE"] and rule["resources"] == ["secretgrantrequests"]
    assert spec["failurePolicy"] == "Ignore"  # kopf adds it when the policy cannot
    assert f'"{FINALIZER}"' in spec["mutations"][0]["jsonPatch"]["expression"]
    assert f'"{FINALIZER}"' in spec["matchConditions"][0]["expression"]


def test_a_namespaced_operator_binds_the_policy_to_its_namespace_only() -> None:
    scoped = binding("sg-e2e", ["team-a"])
    assert scoped["metadata"]["name"] == "sg-e2e-finalizer" == scoped["spec"]["policyName"]
    (expr,) = scoped["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert (expr["operator"], expr["values"]) == ("In", ["team-a"])
    assert "matchResources" not in binding("secretgrants")["spec"]
