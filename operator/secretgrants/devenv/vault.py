"""A Vault dev server (``vault server -dev``) with KV v2 mounted at ``secret/``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx

from secretgrants.devenv.processes import ManagedProcess, binary, free_port

__all__ = ["VaultDevServer"]


class VaultDevServer:
    """In-memory Vault in dev mode on 127.0.0.1; the root token is fixed per instance."""

    def __init__(self, workdir: Path | None = None, *, root_token: str = "sg-dev-root") -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sg-vault-"))
        self.root_token = root_token
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self._proc: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> VaultDevServer:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self._proc = ManagedProcess(
            "vault",
            [
                str(binary("vault")),
                "server",
                "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ],
            log_path=self.workdir / "vault.log",
            env={"HOME": str(home), "VAULT_DISABLE_MLOCK": "true", "SKIP_SETCAP": "1"},
        )
        self._proc.start()
        self._proc.wait_healthy(self._healthy, timeout=timeout)
        return self

    def _healthy(self) -> bool:
        resp = httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0)
        if resp.status_code != 200:
            return False
        mounts = httpx.get(
            f"{self.addr}/v1/sys/mounts", headers={"X-Vault-Token": self.root_token}, timeout=1.0
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
