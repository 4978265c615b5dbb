"""An OPA server (``opa run --server``) on 127.0.0.1, optionally preloaded with policies."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from secretgrants.devenv.processes import ManagedProcess, binary, free_port

__all__ = ["OPAServer"]


class OPAServer:
    def __init__(self, policies: Sequence[Path] = (), workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sg-opa-"))
        self.policies = [Path(p) for p in policies]
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self._proc: ManagedProcess | None = None

    def start(self, timeout: float = 30.0) -> OPAServer:
        self._proc = ManagedProcess(
            "opa",
            [
                str(binary("opa")),
                "run",
                "--server",
                f"--addr=127.0.0.1:{self.port}",
                "--log-level=error",
                "--disable-telemetry",
                *[str(p) for p in self.policies],
            ],
            log_path=self.workdir / "opa.log",
        )
        self._proc.start()
        self._proc.wait_healthy(
            lambda: httpx.get(f"{self.addr}/health", timeout=1.0).status_code == 200,
            timeout=timeout,
        )
        return self

    def put_policy(self, policy_id: str, rego: str) -> None:
        resp = httpx.put(f"{self.addr}/v1/policies/{policy_id}", content=rego, timeout=5.0)
        resp.raise_for_status()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> OPAServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
