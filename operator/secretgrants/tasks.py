"""Ending the operator's background tasks the same way everywhere.

A background loop (heap trimming, certificate reloading, the Kafka send loop) is
stopped by cancelling it and waiting until it has unwound. Waiting with
``asyncio.gather(..., return_exceptions=True)`` keeps a cancellation of the caller
itself (a shutdown cut short) propagating, which ``contextlib.suppress(CancelledError)``
around the ``await`` would swallow.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its outcome is dropped."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
