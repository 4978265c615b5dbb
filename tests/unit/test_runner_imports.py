"""The operator process does without the ``kubernetes`` package, unless its login needs it.

What goes in: a fresh interpreter (subprocess) per case, with a kubeconfig in
tmp_path, that does what ``secretgrants run`` does before kopf starts.
What is asserted: which ``kubernetes`` modules are loaded after the handlers
are imported (kopf imports the package whenever it can).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROBE = """
import json, sys
from secretgrants.runner import keep_client_library_out
plugin = keep_client_library_out()
import secretgrants.handlers
loaded = [m for m, mod in sys.modules.items()
          if mod is not None and (m == "kubernetes" or m.startswith("kubernetes."))]
print(json.dumps({"plugin": plugin, "loaded": loaded}))
"""


def probe(tmp_path: Path, user: dict[str, Any]) -> dict[str, Any]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    env |= {"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_the_operator_imports_no_kubernetes_module(tmp_path: Path) -> None:
    result = probe(tmp_path, {"client-certificate": "a.crt", "client-key": "a.key"})
    assert result == {"plugin": None, "loaded": []}


@pytest.mark.parametrize("plugin", ["exec", "auth-provider"])
def test_a_credential_plugin_keeps_the_package(tmp_path: Path, plugin: str) -> None:
    result = probe(tmp_path, {plugin: {"command": "get-token", "name": "oidc"}})
    assert result["plugin"] == plugin
    assert "kubernetes" in result["loaded"]  # kopf's login_via_client will use it
