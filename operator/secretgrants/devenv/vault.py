"""A Vault dev server (``vault server -dev``) with KV v2 mounted at ``secret/``.

With ``tls=True`` it serves HTTPS (``-dev-tls``) with a CA it generates in its
work directory (``ca_cert``), as a production Vault with a private CA would.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import httpx

from secretgrants.devenv.processes import ManagedProcess, binary, free_port

__all__ = ["VaultDevServer"]


class VaultDevServer:
    """In-memory Vault in dev mode on 127.0.0.1; the root token is fixed per instance."""

    def __init__(
        self, workdir: Path | None = None, *, root_token: str = "sg-dev-root", tls: bool = False
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sg-vault-"))
        self.root_token = root_token
        self.port = free_port()
        self.tls = tls
        self.addr = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.ca_cert = self.workdir / "tls" / "vault-ca.pem"
        """With ``tls``: the CA that signs the server's certificate (written at start)."""
        self._proc: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> VaultDevServer:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.ca_cert.parent.mkdir(parents=True, exist_ok=True)
        self._proc = ManagedProcess(
            "vault",
            [
                str(binary("vault")),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
                *(["-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'tls'}"] if self.tls else []),
            ],
            log_path=self.workdir / "vault.log",
            env={"HOME": str(home), "VAULT_DISABLE_MLOCK": "true", "SKIP_SETCAP": "1"},
        )
        self._proc.start()
        self._proc.wait_healthy(self._healthy, timeout=timeout)
        return self

    def _healthy(self) -> bool:
        if self.tls and not self.ca_cert.exists():
            return False
        verify = ssl.create_default_context(cafile=self.ca_cert) if self.tls else True
        resp = httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0, verify=verify)
        if resp.status_code != 200:
            return False
        mounts = httpx.get(
            f"{self.addr}/v1/sys/mounts",
            headers={"X-Vault-Token": self.root_token},
            timeout=1.0,
            verify=verify,
        )
        return mounts.status_code == 200 and "secret/" in mounts.json()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> VaultDevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
