"""``secretgrants dev``: the local default, from nothing to a running operator in one command.

Starts a local control plane, a Vault dev server (or a YAML file), writes a
built-in policy, applies the CRDs and the quick-start example, and runs the
operator in the foreground until Ctrl-C, then stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

from secretgrants.devenv import LocalControlPlane, VaultDevServer, free_port, tools_bin

__all__ = ["run_dev"]

REPO = Path(__file__).resolve().parents[2]
# docs/walkthrough.md runs against `make dev`: its rules come after the quick start's.
EXAMPLE_POLICY = REPO / "examples" / "policy" / "builtin-policy.yaml"
DEV_POLICY = {
    "rules": [
        {
            "name": "demo-payments-read",
            "subjects": [{"namespace": "demo", "service_account": "payments-api"}],
            "resources": ["vault+kv2://secret/payments/**", "yaml://dev/payments/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 900, "max_uses": 5},
        }
    ]
}


def dev_policy() -> dict[str, object]:
    """The quick start's rule, then the rules of the walk-through's policy file."""
    example = yaml.safe_load(EXAMPLE_POLICY.read_text())
    return {"version": 1, "rules": [*DEV_POLICY["rules"], *example["rules"]]}


def _say(msg: str) -> None:
    print(f"[secretgrants dev] {msg}", file=sys.stderr, flush=True)


def run_dev(*, workdir: Path | None, provider: str = "vault") -> int:
    root = Path(workdir or tempfile.mkdtemp(prefix="secretgrants-dev-"))
    root.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    with stack:
        _say(f"state in {root}")
        _say("starting etcd, kube-apiserver and kube-controller-manager ...")
        plane = stack.enter_context(LocalControlPlane(root / "kube"))
        env = {
            "KUBECONFIG": str(plane.kubeconfig),
            "TENANT_SALT": secrets.token_hex(16),
            "SECRETGRANTS_DEV_MODE": "true",
            "SECRETGRANTS_PDP": "builtin",
        }
        webhook_port = free_port()  # the local apiserver calls the webhook on 127.0.0.1
        env |= {
            "SECRETGRANTS_WEBHOOK_ADDRESS": "127.0.0.1",
            "SECRETGRANTS_WEBHOOK_PORT": str(webhook_port),
            "SECRETGRANTS_WEBHOOK_URL": f"https://127.0.0.1:{webhook_port}",
            "SECRETGRANTS_API_PORT": str(free_port()),
        }
        policy = root / "policy.yaml"
        policy.write_text(yaml.safe_dump(dev_policy(), sort_keys=False))
        env["SECRETGRANTS_POLICY_FILE"] = str(policy)
        if provider == "vault":
            _say("starting a Vault dev server ...")
            vault = stack.enter_context(VaultDevServer(root / "vault"))
            _seed_vault(vault)
            env |= {"VAULT_URL": vault.addr, "VAULT_TOKEN": vault.root_token}
        yaml_path = root / "secrets.yaml"
        yaml_path.write_text(
            yaml.safe_dump({"dev": {"payments": {"db": {"password": secrets.token_urlsafe(12)}}}})
        )
        env["YAML_VAULT_PATH"] = str(yaml_path)
        _say("applying the CRDs and the quick-start example ...")
        plane.kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        plane.kubectl("apply", "-k", str(REPO / "examples" / "quickstart"))
        # Everything the dev operator serves stays on this machine.
        env.setdefault("SECRETGRANTS_METRICS_ADDRESS", "127.0.0.1")
        env = {**env, **{k: v for k, v in os.environ.items() if k in _OVERRIDABLE}}
        os.environ.update(env)
        _say("ready. In another shell:")
        print(
            f"\n  export KUBECONFIG={plane.kubeconfig}\n"
            f"  export PATH={tools_bin()}:$PATH   # the kubectl built by hack/tools.sh\n"
            "  kubectl get secretgrants -A -o wide\n"
            "  kubectl describe sgr -n demo finance-ledger   # why it was rejected\n"
            "  kubectl explain sgr.spec\n"
            f"  kubectl apply -f {REPO / 'examples' / 'quickstart' / 'pod.yaml'}"
            "   # a pod that mounts its grant\n"
            "  # then the walk-through: docs/walkthrough.md\n",
            file=sys.stderr,
            flush=True,
        )
        _say("running the operator (Ctrl-C stops everything) ...")
        from secretgrants.runner import run_operator

        try:
            run_operator(namespace=None, liveness=None)
        except KeyboardInterrupt:
            pass
    _say("stopped")
    return 0


# Ports a user (or a test running beside another operator) may choose.
_OVERRIDABLE = frozenset(
    {"SECRETGRANTS_METRICS_PORT", "SECRETGRANTS_METRICS_ADDRESS", "SECRETGRANTS_DIAGNOSTICS_PORT"}
)


def _seed_vault(vault: VaultDevServer) -> None:
    import hvac

    client = hvac.Client(url=vault.addr, token=vault.root_token)
    client.secrets.kv.v2.create_or_update_secret(
        path="payments/db",
        secret={"password": secrets.token_urlsafe(16), "username": "payments"},
        mount_point="secret",
    )
