"""A mounted serving certificate, renewed in place: new TLS handshakes get the new one.

cert-manager renews a certificate well before it expires and the kubelet swaps the
mounted files; an operator that read them once at start would serve the old one
until it expires, and the apiserver would then refuse every pod that asks for a
grant. :class:`CertReloader` looks at the files every ``interval`` seconds and, when
they changed, loads the new pair into the live TLS contexts of the webhook and the
Secrets API (connections already open keep theirs). A pair that does not load (the
files caught mid-swap, a key that does not match) is logged and tried again at the
next look, while the old one is served. When ``ca.crt`` changed too, ``on_new_ca``
is called with it (the operator then updates the caBundle of the webhook
configurations it keeps). Whoever needs the served certificate itself (the
Secrets API takes the names DPoP proofs may use from it) registers with
:meth:`CertReloader.on_new_certificate`. Only mounted certificates are watched: one made at start
never changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from secretgrants.tasks import cancel_and_wait

__all__ = ["CertReloader"]

log = logging.getLogger("secretgrants.tls")


def _hash(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
        sha.update(b"\0")
    return sha.hexdigest()


def _digest(*files: Path) -> str | None:
    """A digest of the files' contents; None while one is missing."""
    try:
        return _hash(*(path.read_bytes() for path in files))
    except OSError:
        return None


class CertReloader:
    """Loads a renewed ``tls.crt`` / ``tls.key`` (and notices a new ``ca.crt``) in place."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        ca_file: Path | None = None,
        *,
        interval: float = 30.0,
        on_new_ca: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        self.interval = interval
        self.on_new_ca = on_new_ca
        self.reloads = 0
        self._contexts: list[ssl.SSLContext] = []
        self._listeners: list[Callable[[bytes], None]] = []
        self._pair = _digest(cert_file, key_file)
        self._ca = _digest(ca_file) if ca_file is not None else None
        self._task: asyncio.Task[None] | None = None

    def track(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Keep ``context`` serving the current pair from now on; returns it."""
        self._contexts.append(context)
        return context

    def on_new_certificate(self, listener: Callable[[bytes], None]) -> None:
        """Call ``listener`` with the certificate PEM each time a renewed pair is loaded."""
        self._listeners.append(listener)

    def check(self) -> bool:
        """Load the pair into every tracked context if the files changed; True if it did.

        The files are read once and the copy is loaded into a scratch context first: a
        pair that does not load (files caught mid-swap, a key that is not the
        certificate's) never reaches a live context, which could otherwise be left
        holding a new certificate with the old key.
        """
        try:
            cert, key = self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError:
            return False
        pair = _hash(cert, key)
        if pair == self._pair:
            return False
        with tempfile.TemporaryDirectory(prefix="secretgrants-tls-") as scratch:
            cert_copy, key_copy = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
            cert_copy.write_bytes(cert)
            key_copy.touch(mode=0o600)
            key_copy.write_bytes(key)
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_copy, key_copy)
            except (OSError, ssl.SSLError) as err:
                log.warning("the renewed serving certificate did not load (%s); trying again", err)
                return False
            for context in self._contexts:
                context.load_cert_chain(cert_copy, key_copy)
        self._pair = pair
        for listener in self._listeners:
            listener(cert)
        self.reloads += 1
        log.info("serving certificate renewed: new TLS connections use %s", self.cert_file)
        return True

    async def check_ca(self) -> None:
        """Call ``on_new_ca`` when ``ca.crt`` changed (again at the next look if it fails)."""
        if self.ca_file is None or self.on_new_ca is None:
            return
        ca = _digest(self.ca_file)
        if ca is None or ca == self._ca:
            return
        await self.on_new_ca(self.ca_file.read_bytes())
        self._ca = ca

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cert-reload")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
                await self.check_ca()
            except Exception:  # never let a failed look end the watch
                log.exception("could not reload the serving certificate")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
