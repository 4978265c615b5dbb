"""Stopping a background task: it ends, and a stop that is itself cancelled says so."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from secretgrants.tasks import cancel_and_wait


async def test_the_task_is_cancelled_and_finished() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_already_failed_is_waited_for_without_raising() -> None:
    async def fail() -> None:
        raise RuntimeError("gone")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and isinstance(task.exception(), RuntimeError)


async def test_none_is_nothing_to_stop() -> None:
    await cancel_and_wait(None)


async def test_a_cancelled_stop_propagates_its_own_cancellation() -> None:
    """The task takes a while to unwind; the stop waiting for it is cancelled meanwhile.
    With ``suppress(CancelledError)`` around the wait, the stop would return normally."""
    unwinding = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            unwinding.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)  # ignores the first cancellation, like a flush

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await unwinding.wait()
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
