"""The two webhook configurations, as the operator applies them and the chart renders them."""

from __future__ import annotations

import base64

from secretgrants.settings import Settings
from secretgrants.webhook_config import (
    MUTATE_PATH,
    VALIDATE_PATH,
    configurations,
    configurations_for,
)


def test_both_configurations_call_the_operator_service_on_their_paths() -> None:
    mutating, validating = configurations(
        "secretgrants",
        b"CA",
        url=None,
        service="secretgrants-webhook",
        operator_namespace="ops",
        failure_policy="Ignore",
        timeout_seconds=3,
    )
    assert (mutating["kind"], validating["kind"]) == (
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    )
    assert [w["name"] for w in validating["webhooks"]] == [
        "pods.validate.secretgrants.io",
        "pods-reservations.validate.secretgrants.io",  # changes of the reservations annotation
    ]
    webhooks = [(w, MUTATE_PATH) for w in mutating["webhooks"]]
    webhooks += [(w, VALIDATE_PATH) for w in validating["webhooks"]]
    for webhook, path in webhooks:
        assert webhook["clientConfig"] == {
            "service": {
                "name": "secretgrants-webhook",
                "namespace": "ops",
                "path": path,
                "port": 443,
            },
            "caBundle": base64.b64encode(b"CA").decode(),
        }
        assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Ignore", 3)
        (expr,) = webhook["namespaceSelector"]["matchExpressions"]
        assert (expr["operator"], expr["values"]) == ("NotIn", ["ops", "kube-system"])


def test_outside_a_cluster_the_apiserver_calls_a_url() -> None:
    bodies = configurations(
        "sg-e2e",
        b"CA",
        url="https://127.0.0.1:9443/",
        service="unused",
        operator_namespace="ops",
        namespaces=["team-a"],
    )
    urls = [body["webhooks"][0]["clientConfig"]["url"] for body in bodies]
    assert urls == [
        f"https://127.0.0.1:9443{MUTATE_PATH}",
        f"https://127.0.0.1:9443{VALIDATE_PATH}",
    ]
    (expr,) = bodies[1]["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert (expr["operator"], expr["values"]) == ("In", ["team-a"])


def test_the_operator_builds_them_from_its_settings() -> None:
    cfg = Settings(
        operator_namespace="ops",
        webhook_config_name="sg",
        webhook_failure_policy="Ignore",
        namespace="team-a",
    )
    assert configurations_for(cfg, b"CA") == configurations(
        "sg",
        b"CA",
        url=None,
        service="secretgrants-webhook",
        operator_namespace="ops",
        failure_policy="Ignore",
        namespaces=["team-a"],
    )
