"""Fixtures shared by the e2e tests (the cluster, servers and operator are in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Cluster
from tests.e2e.kube import apply, tenant


@pytest.fixture
def ready_namespace(cluster: Cluster, crds: None, namespace: str) -> Iterator[str]:
    """The test namespace with a tenant allowing the `secret` mount and ServiceAccounts
    `app` and `other`."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    apply(cluster, tenant(name, "e2e", ["vault+kv2://secret"], namespaces=[namespace]))
    cluster.kubectl("create", "serviceaccount", "app", "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "other", "-n", namespace)
    yield namespace
    cluster.kubectl("delete", "secrettenant", name, "--wait=false", check=False)
