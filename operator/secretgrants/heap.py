"""Memory the C allocator keeps: how many arenas it uses, and giving free pages back.

Python's own allocator returns its 1 MiB arenas to the kernel when they empty;
everything larger (dict tables, JSON and TLS buffers, bytes) comes from glibc's
malloc, which keeps freed memory inside its heaps. After a burst (a thousand grants
decided at once) the operator's RSS stayed ~35 MB above what it used, for good
(bench/grants.py, 5,000 live grants: 157 MB, 124 MB after one ``malloc_trim``).

* :func:`limit_malloc_arenas` has all threads share two arenas;
* :class:`HeapTrimmer` calls ``malloc_trim(0)`` now and then, which hands every
  free page inside the heaps back to the kernel (``madvise``), not only the top.

Both are glibc's; on another libc they do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from typing import Any

from secretgrants.tasks import cancel_and_wait

__all__ = ["HeapTrimmer", "limit_malloc_arenas", "resident_bytes"]

log = logging.getLogger("secretgrants")

M_ARENA_MAX = -8  # glibc's mallopt parameter
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc() -> Any | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(count: int = 2) -> bool:
    """Have glibc share ``count`` malloc arenas among all threads (MALLOC_ARENA_MAX).

    By default each thread that allocates may get an arena of its own (up to eight per
    core), and memory freed in one is not reused by another. Call before threads
    start. An explicit MALLOC_ARENA_MAX in the environment wins; a libc other than
    glibc is left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, count))
    except AttributeError:
        return False


def resident_bytes() -> int | None:
    """This process's resident set (``/proc/self/statm``), or None where there is none."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Every ``interval`` seconds, hand the C heap's free pages back to the kernel.

    A trim costs well under a millisecond when there is little to give back and a
    few when there is (it runs on the event loop: a thread would wait for the same
    arena locks). ``trims`` and ``released`` count what it did, for tests and logs.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.trims = 0
        self.released = 0
        """Bytes of resident memory given back, summed over all trims."""
        libc = _libc()
        self._trim = getattr(libc, "malloc_trim", None) if libc is not None else None
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> int:
        """Trim once; the resident bytes it gave back (0 where it cannot tell)."""
        if self._trim is None:
            return 0
        before = resident_bytes()
        started = time.perf_counter()
        self._trim(0)
        took = time.perf_counter() - started
        after = resident_bytes()
        freed = max(0, before - after) if before is not None and after is not None else 0
        self.trims += 1
        self.released += freed
        if freed >= 1 << 20:
            log.debug(
                "gave %d MB of free heap back to the kernel in %.1f ms", freed >> 20, took * 1e3
            )
        return freed

    def start(self) -> None:
        if self.interval > 0 and self.available and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.trim()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
