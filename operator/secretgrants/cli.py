"""The ``secretgrants`` command: run the operator, the local default, the PDP, and tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _cmd_crds(args: argparse.Namespace) -> int:
    from secretgrants.api.crdgen import all_crds, crd_documents, render

    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crd_documents().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}", file=sys.stderr)
    else:
        sys.stdout.write(render(all_crds()))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from secretgrants.runner import run_operator

    return run_operator(
        namespace=args.namespace,
        liveness=args.liveness,
        verbose=args.verbose,
    )


def _cmd_dev(args: argparse.Namespace) -> int:
    from secretgrants.dev import run_dev

    return run_dev(workdir=Path(args.workdir) if args.workdir else None, provider=args.provider)


def _cmd_pdp_serve(args: argparse.Namespace) -> int:
    from secretgrants.policy.server import serve

    serve(
        Path(args.policy),
        host=args.host,
        port=args.port,
        on_ready=lambda url: print(f"AuthZEN PDP serving {args.policy} at {url}", flush=True),
    )
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import kubernetes

    from secretgrants.api.common import GROUP, VERSION
    from secretgrants.explain import explain

    k8s: Any = kubernetes
    k8s.config.load_kube_config()
    namespace = args.namespace or k8s.config.list_kube_config_contexts()[1]["context"].get(
        "namespace", "default"
    )
    try:
        grant = k8s.client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, "secretgrantrequests", args.grant
        )
    except k8s.client.exceptions.ApiException as err:
        print(
            f"cannot read SecretGrantRequest {namespace}/{args.grant}: {err.reason}",
            file=sys.stderr,
        )
        return 1
    print(explain(grant))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secretgrants",
        description="Purpose-bound, short-lived secret grants for Kubernetes pods.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig context")
    run.add_argument("--namespace", "-n", help="watch one namespace (default: all)")
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL"
    )
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=_cmd_run)

    dev = sub.add_parser(
        "dev",
        help="the local default: local control plane, Vault dev server, built-in PDP, operator",
    )
    dev.add_argument("--workdir", help="keep state here (default: a temp folder)")
    dev.add_argument("--provider", choices=["vault", "yaml"], default="vault")
    dev.set_defaults(func=_cmd_dev)

    crds = sub.add_parser("crds", help="print the CRDs generated from the API models")
    crds.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    crds.set_defaults(func=_cmd_crds)

    exp = sub.add_parser(
        "explain", help="why a grant is in its phase, in plain words (never shows a value)"
    )
    exp.add_argument("grant", help="the SecretGrantRequest name")
    exp.add_argument("--namespace", "-n", help="its namespace (default: the context's)")
    exp.set_defaults(func=_cmd_explain)

    pdp = sub.add_parser("pdp", help="policy decision point tools")
    pdp_sub = pdp.add_subparsers(dest="pdp_command", required=True)
    serve = pdp_sub.add_parser("serve", help="serve the built-in policy as an AuthZEN endpoint")
    serve.add_argument("--policy", required=True, help="the built-in policy file (YAML)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8181)
    serve.set_defaults(func=_cmd_pdp_serve)
    return parser


def kubectl_plugin() -> int:
    """``kubectl secretgrants explain <grant>``: the same CLI, installed as kubectl-secretgrants."""
    return main(sys.argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
