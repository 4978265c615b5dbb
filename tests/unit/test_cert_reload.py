"""A renewed mounted serving certificate is served without a restart.

What goes in: a real TLS server (asyncio, the operator's own server context) on
127.0.0.1 with a certificate from CA 1 in a "mounted" directory, then the files
swapped for a certificate from CA 2 (as the kubelet does after cert-manager renews
it), then a broken pair (CA 3's certificate with CA 2's key). What is asserted: which
CA a fresh client handshake trusts after each step, that ``on_new_ca`` gets the new
``ca.crt``, and that a broken pair is not loaded (CA 2's certificate stays served).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from secretgrants.cert_reload import CertReloader
from secretgrants.pki import CertPair, new_ca
from secretgrants.secrets_api.origins import PublicOrigins
from secretgrants.webhook import ServingCert


def mount(directory: Path, ca: CertPair, leaf: CertPair) -> None:
    (directory / "tls.crt").write_bytes(leaf.cert_pem + ca.cert_pem)
    (directory / "tls.key").write_bytes(leaf.key_pem)
    (directory / "ca.crt").write_bytes(ca.cert_pem)


def leaf_of(ca: CertPair) -> CertPair:
    return ca.issue("localhost", dns_names=("localhost",), ips=("127.0.0.1",), server=True)


async def handshake(port: int, ca: CertPair) -> bool:
    """Whether a new connection that trusts only ``ca`` completes its handshake."""
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
    except ssl.SSLError:
        return False
    writer.close()
    return True


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext, CertPair]]:
    ca1 = new_ca("ca-1")
    mount(tmp_path, ca1, leaf_of(ca1))
    context = ServingCert(tmp_path / "tls.crt", tmp_path / "tls.key", ca1.cert_pem).ssl_context()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], context, ca1
    server.close()
    await server.wait_closed()


async def test_a_renewed_pair_is_served_and_a_broken_one_is_not(
    served: tuple[int, ssl.SSLContext, CertPair], tmp_path: Path
) -> None:
    port, context, ca1 = served
    new_cas: list[bytes] = []

    async def on_new_ca(ca_pem: bytes) -> None:
        new_cas.append(ca_pem)

    reloader = CertReloader(
        tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt", on_new_ca=on_new_ca
    )
    reloader.track(context)
    ca2 = new_ca("ca-2")
    assert not reloader.check()  # nothing changed yet
    assert await handshake(port, ca1) and not await handshake(port, ca2)

    mount(tmp_path, ca2, leaf_of(ca2))  # the renewal
    assert reloader.check() and reloader.reloads == 1
    await reloader.check_ca()
    assert new_cas == [ca2.cert_pem]
    assert await handshake(port, ca2) and not await handshake(port, ca1)

    ca3 = new_ca("ca-3")
    (tmp_path / "tls.crt").write_bytes(leaf_of(ca3).cert_pem)  # caught mid-swap: old key
    assert not reloader.check() and reloader.reloads == 1
    assert await handshake(port, ca2) and not await handshake(port, ca3)


def test_the_names_of_a_renewed_certificate_reach_its_listeners(tmp_path: Path) -> None:
    """The Secrets API accepts DPoP proofs for the names of the certificate it serves:
    a renewal that changes them changes what it accepts."""
    ca = new_ca("ca-1")
    mount(tmp_path, ca, leaf_of(ca))
    origins = PublicOrigins()
    origins.load_certificate((tmp_path / "tls.crt").read_bytes())
    reloader = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key")
    reloader.on_new_certificate(origins.load_certificate)
    path = "/api/secrets/v1/secrets"
    assert origins.accepts("https://localhost:8443" + path, path)
    renamed = ca.issue("api.example", dns_names=("api.example",), server=True)
    mount(tmp_path, ca, renamed)
    assert reloader.check()
    assert origins.accepts("https://api.example" + path, path)
    assert not origins.accepts("https://localhost:8443" + path, path)
