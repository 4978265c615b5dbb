"""The C heap's free pages go back to the kernel (glibc; this test machine runs it)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

import pytest

from secretgrants.heap import HeapTrimmer, resident_bytes

pytestmark = pytest.mark.skipif(
    not HeapTrimmer(0).available, reason="malloc_trim is glibc's; this libc has none"
)

MB = 1 << 20


def _fragmented_heap() -> list[object]:
    """Free ~48 MB of malloc'd blocks while every 16th stays: the heap cannot shrink at its top."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KiB blocks stay under glibc's mmap threshold: they live in the heap.
    blocks = [libc.malloc(64 * 1024) for _ in range(800)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)  # touched: resident
    kept = blocks[15::16]
    for i, block in enumerate(blocks):
        if i % 16 != 15:
            libc.free(block)
    return [libc, kept]


def test_a_trim_gives_free_heap_pages_back() -> None:
    held = _fragmented_heap()
    before = resident_bytes()
    assert before is not None
    trimmer = HeapTrimmer(0)
    freed = trimmer.trim()
    after = resident_bytes()
    assert after is not None
    assert freed >= 20 * MB, f"gave back {freed / MB:.1f} MB of ~47 MB free"
    assert before - after >= 20 * MB
    assert trimmer.trims == 1 and trimmer.released == freed
    libc, kept = held
    for block in kept:
        libc.free(block)


def test_the_trimmer_runs_on_its_interval_and_stops() -> None:
    async def scenario() -> int:
        trimmer = HeapTrimmer(0.05)
        trimmer.start()
        await asyncio.sleep(0.3)
        await trimmer.stop()
        done = trimmer.trims
        await asyncio.sleep(0.15)
        assert trimmer.trims == done  # stopped means stopped
        return done

    assert asyncio.run(scenario()) >= 3


def test_interval_zero_never_trims() -> None:
    async def scenario() -> int:
        trimmer = HeapTrimmer(0)
        trimmer.start()
        await asyncio.sleep(0.1)
        await trimmer.stop()
        return trimmer.trims

    assert asyncio.run(scenario()) == 0
