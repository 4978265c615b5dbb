"""Start kopf with the handlers registered, in one place.

kopf imports the ``kubernetes`` package whenever it can (~35 MB of the
operator's memory); the operator does not need it, so :func:`keep_client_library_out`
blocks it before kopf is imported. The one exception is a kubeconfig user with a
credential plugin (``exec``, ``auth-provider``): only that package can run it,
so then it loads, and kopf's ``login_via_client`` logs in as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from secretgrants.heap import limit_malloc_arenas
from secretgrants.kubeconfig import client_library_needed

__all__ = ["keep_client_library_out", "run_operator"]

log = logging.getLogger("secretgrants")


def keep_client_library_out() -> str | None:
    """Make ``import kubernetes`` fail in this process, unless the login needs it.

    Returns the credential plugin that needs it (then nothing is blocked), or None.
    """
    plugin = client_library_needed()
    if plugin is None:
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    return plugin


def run_operator(*, namespace: str | None, liveness: str | None, verbose: bool = False) -> int:
    limit_malloc_arenas()
    plugin = keep_client_library_out()  # before kopf, which imports the package if it can
    import kopf

    import secretgrants.handlers  # noqa: F401  (registers the handlers)
    from secretgrants.redaction import install as install_redaction

    if namespace:  # the settings (webhook namespaceSelector) follow what is watched
        os.environ["SECRETGRANTS_NAMESPACE"] = namespace

    logging.getLogger().handlers.clear()  # kopf installs its own: one line per record
    kopf.configure(verbose=verbose)
    install_redaction()  # after kopf set up its handlers: mask values and tokens in every record
    if plugin is not None:
        log.info(
            "the kubeconfig's user runs an %r credential plugin: logging in through the "
            "kubernetes package (kopf's login_via_client), which the operator otherwise "
            "does without (~35 MB)",
            plugin,
        )
    asyncio.run(
        kopf.operator(
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
    return 0
