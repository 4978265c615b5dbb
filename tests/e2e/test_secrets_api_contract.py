"""The live Secrets API against its own OpenAPI document, driven by schemathesis.

What goes in: the operator (real apiserver, real Vault, built-in PDP with
management rules), and a ServiceAccount token for the secrets audience,
sent with a fresh DPoP proof for most requests (a change uses up a proof's
``jti``; the token is sent again) and with the generated ``DPoP`` header for
the rest. Schemathesis generates requests for every operation of the committed
document (valid and invalid, from hypothesis). What is asserted: no answer
is a 5xx, every status is documented for its operation, and every body has
the documented content type and conforms to the documented schema.
"""

from __future__ import annotations

import base64
import collections
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import schemathesis
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from secretgrants.dpop import sign_proof
from tests.conftest import E2E_POLICY, REPO, Cluster, OperatorProcess, webhook_config_name
from tests.e2e.kube import apply, get, tenant

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25
# Most generated URIs are refused by the parser (400): steer some cases to secrets the
# policy lets the caller manage, so that decisions, Vault and the response bodies are reached.
STEER = [
    None,
    None,
    "vault+kv2://secret/contract/db",
    "vault+kv2://secret/contract",
    "vault+kv2://secret/contract/db#password",
    "vault+kv2://secret/contract/other",
]


def aim(case: schemathesis.Case, uri: str) -> None:
    """Put ``uri`` wherever the generated request names a secret (query, body, bulk items)."""
    if isinstance(case.query, dict) and "uri" in case.query:
        case.query["uri"] = uri
    body = case.body
    if isinstance(body, dict):
        if "uri" in body:
            body["uri"] = uri
        for item in body.get("operations") or []:
            if isinstance(item, dict) and "uri" in item:
                item["uri"] = uri


def test_no_5xx_and_no_contract_violation(
    cluster: Cluster,
    namespace: str,
    start_operator_for: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    rule = {
        "name": "contract-admin",
        "subjects": [{"service_account": "admin"}],
        "resources": ["vault+kv2://secret/contract/**", "vault+kv2://secret/contract"],
        "purposes": ["*"],
    }
    policy.write_text(yaml.safe_dump({**E2E_POLICY, "rules": [*E2E_POLICY["rules"], rule]}))
    tenant_name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(tenant_name, "e2e", ["vault+kv2://secret"], namespaces=[namespace]))
    cluster.kubectl("create", "serviceaccount", "admin", "-n", namespace)
    op = start_operator_for(SECRETGRANTS_POLICY_FILE=str(policy))
    config = get(cluster, "mutatingwebhookconfiguration", webhook_config_name(namespace))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))
    token = cluster.kubectl(
        "create", "token", "admin", "-n", namespace, "--duration=30m", "--audience=crud.secrets"
    ).stdout.strip()
    key = ec.generate_private_key(ec.SECP256R1())

    schema = schemathesis.openapi.from_dict(
        json.loads((REPO / "docs" / "openapi.json").read_text())
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12
    failures: list[str] = []
    calls = 0
    statuses: collections.Counter[int] = collections.Counter()
    try:
        for operation in operations:

            @hypothesis.given(
                case=operation.as_strategy(),
                steer=st.sampled_from(STEER),
                prove=st.sampled_from([True, True, True, False]),
            )
            @hypothesis.settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            def run(case: schemathesis.Case, steer: str | None, prove: bool) -> None:
                nonlocal calls
                if steer is not None:
                    aim(case, steer)
                headers = {"Authorization": f"Bearer {token}"}
                if prove:  # else the generated DPoP header, if any (a 401 when it is sent)
                    url = op.api_url + case.formatted_path
                    proof = sign_proof(key, method=case.method, url=url, access_token=token)
                    case.headers["DPoP"] = proof
                    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
                response = case.call(
                    base_url=op.api_url,
                    headers=headers,
                    verify=str(ca_file),  # requests (schemathesis) takes a CA path
                    timeout=15,
                )
                calls += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Exception as err:  # collect, so that one run reports every operation
                name = f"{operation.method.upper()} {operation.path}"
                failures.append(f"{name}: {type(err).__name__}: {err}"[:3000])
    finally:
        cluster.kubectl("delete", "secrettenant", tenant_name, "--wait=false", check=False)
    assert calls >= len(operations) * 5
    # the run reached past the parser: permitted calls carried out on Vault, and refusals
    assert statuses[200] >= 10 and statuses[400] and statuses[404], statuses
    assert not failures, "\n\n".join(failures)
    assert op.proc.poll() is None  # still serving
    assert "Secrets API: unexpected" not in op.log()
