"""The committed CRDs are exactly what the pydantic models generate."""

from __future__ import annotations

from pathlib import Path

import yaml

from secretgrants.api.crdgen import all_crds, crd_documents

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    generated = crd_documents()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.secretgrants.io.yaml")}
    assert set(committed) == set(generated), "run `make crds`"
    for name, text in generated.items():
        assert committed[name] == text, f"crds/{name} is stale: run `make crds`"


def _walk(schema: dict, path: str = ""):  # type: ignore[no-untyped-def,type-arg]
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description_and_a_type() -> None:
    for crd in all_crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root["properties"]["spec"], "spec"):
            assert node.get("description") or path.endswith(("[]", "{}")), (
                f"{path} lacks a description"
            )
            assert "type" in node, f"{path} lacks a type"
        for path, node in _walk(root["properties"]["status"], "status"):
            assert node.get("description") or path.endswith(("[]", "{}")), (
                f"{path} lacks a description"
            )
            assert "$ref" not in node and "anyOf" not in node, f"{path} is not structural"


def test_kustomization_lists_every_crd() -> None:
    listed = yaml.safe_load((CRDS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(crd_documents())
