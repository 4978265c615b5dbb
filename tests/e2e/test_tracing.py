"""Traces of the operator as users run it: ``SECRETGRANTS_TRACING=console``.

What goes in: an operator watching one namespace, with the YAML dev
provider holding a known value, the built-in PDP and a salt; a grant the
policy permits and one it denies. What is asserted: the spans the operator
printed (one JSON line each) form the chain grant -> guard, pdp (-> provider
metadata), provider read, delivery in one trace; their attributes match the
grant's status; the audit events carry the trace and span ids of those
spans; no span holds the value, the URI, its path or its key name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from secretgrants import tracing
from tests.conftest import (
    SECRET_VALUE,
    TEST_SALT,
    Cluster,
    OperatorProcess,
    start_operator,
    stop_operator,
)
from tests.e2e.kube import apply, eventually, get, grant

URI = "yaml://dev/e2e/db#password"


def printed_spans(op: OperatorProcess) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in op.log().splitlines()
        if line.startswith('{"name": "secretgrants.')
    ]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("secretgrants."): v for k, v in span["attributes"].items()}


def span_id(span: dict[str, Any]) -> str:
    return str(span["context"]["span_id"]).removeprefix("0x")


def trace_id(span: dict[str, Any]) -> str:
    return str(span["context"]["trace_id"]).removeprefix("0x")


def trace_of(spans: list[dict[str, Any]], grant_name: str) -> list[dict[str, Any]]:
    """The spans of the (first) reconciliation of one grant: its root span's trace."""
    roots = [
        s
        for s in spans
        if s["name"] == tracing.SPAN_GRANT and attrs(s).get("grant.name") == grant_name
    ]
    assert roots, f"no root span for {grant_name}"
    return [s for s in spans if trace_id(s) == trace_id(roots[0])]


def named(spans: list[dict[str, Any]], name: str, **want: Any) -> dict[str, Any]:
    found = [
        s for s in spans if s["name"] == name and all(attrs(s).get(k) == v for k, v in want.items())
    ]
    assert len(found) == 1, (name, want, [(s["name"], attrs(s)) for s in spans])
    return found[0]


def test_console_traces_follow_grants_and_hold_no_value(
    cluster: Cluster, crds: None, namespace: str, tmp_path: Path, e2e_policy_file: Path
) -> None:
    vault_file = tmp_path / "vault.yaml"
    vault_file.write_text(
        yaml.safe_dump({"dev": {"e2e": {"db": {"password": SECRET_VALUE, "username": "e2e"}}}})
    )
    for sa in ("app", "other"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    op = start_operator(
        cluster.kubeconfig,
        tmp_path,
        namespace=namespace,
        env={
            "SECRETGRANTS_TRACING": "console",
            "YAML_VAULT_PATH": str(vault_file),
            "SECRETGRANTS_PDP": "builtin",
            "SECRETGRANTS_POLICY_FILE": str(e2e_policy_file),
            "TENANT_SALT": TEST_SALT,
            "TENANT_ID": "e2e",
            "TENANT_ALLOWED_MOUNTS": "yaml://dev",
            "SECRETGRANTS_AUDIT_SINKS": "stdout",
        },
    )
    try:
        apply(cluster, grant("db", namespace, URI, justification="e2e"))
        apply(cluster, grant("denied", namespace, URI, sa="other", justification="e2e"))

        def settled(name: str, phase: str) -> dict[str, Any]:
            status = get(cluster, "sgr", name, namespace).get("status") or {}
            assert status.get("phase") == phase, status
            return status

        granted = eventually(lambda: settled("db", "Granted"), timeout=60)
        denied = eventually(lambda: settled("denied", "Denied"), timeout=60)
        spans = eventually(lambda: _both_traced(op), timeout=10)
    finally:
        stop_operator(op)

    # the permit: grant -> guard, pdp (-> provider metadata), provider read, delivery
    permit = trace_of(spans, "db")
    root = named(permit, tracing.SPAN_GRANT)
    guard = named(permit, tracing.SPAN_GUARD)
    pdp = named(permit, tracing.SPAN_PDP)
    metadata = named(permit, tracing.SPAN_PROVIDER, operation="metadata")
    read = named(permit, tracing.SPAN_PROVIDER, operation="read")
    delivery = named(permit, tracing.SPAN_DELIVERY)
    assert root["parent_id"] is None
    for child in (guard, pdp, read, delivery):
        assert child["parent_id"] == root["context"]["span_id"], child["name"]
    assert metadata["parent_id"] == pdp["context"]["span_id"]
    assert attrs(root)["grant.namespace"] == namespace and attrs(root)["purpose"] == "read"
    assert attrs(root)["resource_ref"] == granted["resourceRef"]
    assert attrs(root)["grant.phase"] == "Granted"
    assert attrs(pdp)["decision.effect"] == "permit" and attrs(pdp)["pdp.kind"] == "builtin"
    assert attrs(pdp)["decision.id"] == granted["decision"]["id"]
    assert root["resource"]["attributes"]["service.name"] == "secretgrants"

    # the deny: no provider read, no delivery
    deny = trace_of(spans, "denied")
    assert sorted(s["name"] for s in deny) == sorted(
        [tracing.SPAN_GRANT, tracing.SPAN_GUARD, tracing.SPAN_PDP, tracing.SPAN_PROVIDER]
    )
    deny_pdp = named(deny, tracing.SPAN_PDP)
    assert attrs(deny_pdp)["decision.effect"] == "deny"
    assert attrs(deny_pdp)["decision.id"] == denied["decision"]["id"]

    # the audit events name the spans they were recorded in
    events = {(e["grant_name"], e["type"]): e for e in op.audit_events() if "grant_name" in e}
    assert (events["db", "decision"]["trace_id"], events["db", "decision"]["span_id"]) == (
        trace_id(pdp),
        span_id(pdp),
    )
    written = events["db", "delivery_written"]
    assert (written["trace_id"], written["span_id"]) == (trace_id(delivery), span_id(delivery))
    assert events["denied", "decision"]["trace_id"] == trace_id(deny_pdp)

    # nothing secret in any span the operator printed
    text = "\n".join(json.dumps(s) for s in spans)
    for needle in (SECRET_VALUE, URI, "yaml://", "e2e/db", "password"):
        assert needle not in text, needle
    assert SECRET_VALUE not in op.log()


def _both_traced(op: OperatorProcess) -> list[dict[str, Any]]:
    spans = printed_spans(op)
    done = {
        attrs(s).get("grant.name")
        for s in spans
        if s["name"] == tracing.SPAN_GRANT and attrs(s).get("grant.phase")
    }
    assert {"db", "denied"} <= done, done
    return spans
