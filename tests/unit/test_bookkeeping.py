"""kopf's diff base kept as digests in the status: changes are seen, the URI is never copied."""

from __future__ import annotations

import json
from typing import Any

import kopf

from secretgrants.bookkeeping import SpecDigestStorage

URI = "vault+kv2://secret/team/db#password"


def body(spec: dict[str, Any], labels: dict[str, str] | None = None, **status: Any) -> kopf.Body:
    raw = {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretGrantRequest",
        "metadata": {"name": "db", "namespace": "team", "labels": labels or {}},
        "spec": spec,
        "status": status,
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


def stored(storage: SpecDigestStorage, obj: kopf.Body) -> dict[str, Any]:
    patch = kopf.Patch()
    storage.store(body=obj, patch=patch, essence=storage.build(body=obj))
    return dict(patch["status"])


def test_the_status_holds_digests_not_the_spec() -> None:
    storage = SpecDigestStorage()
    status = stored(storage, body({"secretUri": URI, "serviceAccountName": "app"}))
    text = json.dumps(status)
    assert "secret/team" not in text and "sha256:" in text
    assert set(status) == {"kopf"}


def test_an_unchanged_object_has_no_diff_and_a_changed_spec_has_one() -> None:
    storage = SpecDigestStorage()
    spec = {"secretUri": URI, "serviceAccountName": "app"}
    status = stored(storage, body(spec))
    same = body(spec, **status)
    assert storage.fetch(body=same) == storage.build(body=same)
    changed = body({**spec, "ttlSeconds": 60}, **status)
    last = storage.fetch(body=changed)
    assert last is not None and last["spec"] != storage.build(body=changed)["spec"]
    assert last.get("metadata") == storage.build(body=changed).get("metadata")  # only the spec


def test_a_label_change_is_not_a_spec_change() -> None:
    storage = SpecDigestStorage()
    spec = {"secretUri": URI, "serviceAccountName": "app"}
    status = stored(storage, body(spec))
    relabelled = body(spec, labels={"team": "a"}, **status)
    last = storage.fetch(body=relabelled)
    assert last is not None and last["spec"] == spec


def test_no_record_means_never_handled() -> None:
    assert SpecDigestStorage().fetch(body=body({"secretUri": URI})) is None


def test_the_essence_is_kopfs_own() -> None:
    """The slimmer build gives exactly what kopf's status storage builds for the same body."""
    raw = {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretGrantRequest",
        "metadata": {
            "name": "db",
            "namespace": "team",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 3,
            "finalizers": ["secretgrants.io/revoke"],
            "labels": {"team": "a"},
            "annotations": {
                "note": "kept",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"secretUri": URI, "serviceAccountName": "app", "keys": ["password"]},
        "status": {"phase": "Granted", "kopf": {"progress": {}}},
    }
    ours = SpecDigestStorage().build(body=kopf.Body(raw))  # type: ignore[arg-type]
    kopfs = kopf.StatusDiffBaseStorage(name="kopf").build(body=kopf.Body(raw))  # type: ignore[arg-type]
    assert ours == kopfs
    for extra in ([("spec",)], [("status", "phase")], ["metadata.uid"]):  # handlers' fields
        assert SpecDigestStorage().build(
            body=kopf.Body(raw),  # type: ignore[arg-type]
            extra_fields=extra,
        ) == kopf.StatusDiffBaseStorage(name="kopf").build(
            body=kopf.Body(raw),  # type: ignore[arg-type]
            extra_fields=extra,
        ), extra
    assert ours["metadata"] == {"labels": {"team": "a"}, "annotations": {"note": "kept"}}
    ours["spec"]["keys"].append("mutated")  # a copy: the body is left alone
    assert raw["spec"]["keys"] == ["password"]
