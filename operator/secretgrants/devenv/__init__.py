"""The local default: real servers started on 127.0.0.1 for ``secretgrants dev`` and the tests.

Nothing here is a mock. Each launcher starts a real binary built by
``hack/tools.sh`` (etcd, kube-apiserver, kube-controller-manager, Vault, OPA, Kafka)
on free loopback ports with its own temporary directory, waits until it is
healthy, and stops it (process group, TERM then KILL) when asked or when the
interpreter exits.
"""

from __future__ import annotations

from secretgrants.devenv.controlplane import LocalControlPlane
from secretgrants.devenv.kafka import KafkaServer
from secretgrants.devenv.opa import OPAServer
from secretgrants.devenv.processes import ManagedProcess, ServerStartError, free_port, tools_bin
from secretgrants.devenv.vault import VaultDevServer

__all__ = [
    "KafkaServer",
    "LocalControlPlane",
    "ManagedProcess",
    "OPAServer",
    "ServerStartError",
    "VaultDevServer",
    "free_port",
    "tools_bin",
]
