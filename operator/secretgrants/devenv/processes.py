"""Start, watch and stop one server process; find free ports and the tools folder."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

__all__ = ["ManagedProcess", "ServerStartError", "free_port", "tools_bin", "wait_until"]

_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """A server did not become healthy; the message ends with the tail of its log."""


def tools_bin() -> Path:
    """The folder that ``hack/tools.sh`` fills: ``$SECRETGRANTS_TOOLS_BIN`` or ``<repo>/.cache/bin``."""
    env = os.environ.get("SECRETGRANTS_TOOLS_BIN")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "hack" / "tools.sh").exists():
            return parent / ".cache" / "bin"
    return Path.cwd() / ".cache" / "bin"


def binary(name: str) -> Path:
    path = tools_bin() / name
    if not path.exists():
        raise ServerStartError(f"{name} not found in {path.parent}: run `hack/tools.sh` first")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; raise ``TimeoutError`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class ManagedProcess:
    """One server process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
            cwd=self.cwd,
            start_new_session=True,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, check: Callable[[], bool], *, timeout: float) -> None:
        """Wait for ``check``; fail early with the log tail if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ServerStartError(f"{self.name} exited early:\n{self.log_tail()}")
            ok = False
            with contextlib.suppress(Exception):
                ok = check()
            if ok:
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} not healthy after {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, *, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=3.0)
