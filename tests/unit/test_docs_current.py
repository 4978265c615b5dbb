"""Generated docs stay in step with the code."""

from __future__ import annotations

import json

from secretgrants.secrets_api import openapi_document
from secretgrants.settings import Settings, reference_markdown
from tests.conftest import REPO


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == reference_markdown(), "regenerate docs/configuration.md (see its header)"
    assert len([line for line in committed.splitlines() if line.startswith("| `")]) == len(
        Settings.model_fields
    )


def test_openapi_document_is_current() -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document()))
