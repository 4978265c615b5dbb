"""Start kopf with the handlers registered, in one place."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from secretgrants.redaction import install as install_redaction

__all__ = ["run_operator"]


def run_operator(*, namespace: str | None, liveness: str | None, verbose: bool = False) -> int:
    import secretgrants.handlers  # noqa: F401  (registers the handlers)

    if namespace:  # the settings (webhook namespaceSelector) follow what is watched
        os.environ["SECRETGRANTS_NAMESPACE"] = namespace

    logging.getLogger().handlers.clear()  # kopf installs its own: one line per record
    kopf.configure(verbose=verbose)
    install_redaction()  # after kopf set up its handlers: mask values and tokens in every record
    asyncio.run(
        kopf.operator(
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
    return 0
