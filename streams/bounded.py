"""Waiting for a client's shutdown step without letting it hold the worker's shutdown up.

``asyncio.wait_for`` cancels its awaitable at the timeout and then waits for it to finish; a client that catches
the cancellation and carries on (seen as a worker whose Redis view consumer was still rejoining its group a minute
after SIGTERM, in a rebalance during the stop) then never lets it return. :func:`within` stops waiting at the
timeout whatever the awaitable does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def within(awaitable: Awaitable[Any], timeout_s: float) -> bool:
    """Await ``awaitable`` for at most ``timeout_s``: True when it finished (its exception re-raised); False when it
    did not, after asking it to cancel without waiting for that, or when it ended cancelled by itself. Only the
    caller's own cancellation raises ``CancelledError``."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        if task.cancelled():
            return False  # it cancelled itself (a client's internal task): not ours to propagate as a cancellation
        task.result()
        return True
    task.cancel()
    return False
