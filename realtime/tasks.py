"""Ending tasks: cancel them, then wait until each has finished.

Every task the service starts is awaited on shutdown (a cancelled task not
awaited may still be running, or log "Task was destroyed but it is pending").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel every one of ``tasks`` (None: skipped), then await each in turn.

    A task that ends cancelled, as asked, is no error; one already finished is
    only awaited (its result is dropped).

    Raises:
        Exception: what a task raised other than its cancellation (the first
            such; the tasks after it are cancelled but not awaited).
    """
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
