"""Stopping background tasks that talk to Redis, reliably.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives just as the awaited
operation completes (CPython gh-86296, fixed in 3.12), and redis-py awaits every socket write
through it. A task cancelled at that moment carries on into its next command; so a task is
cancelled again until it has really ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_INTERVAL_S = 0.05


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, re-cancelling the stragglers.

    Exceptions other than cancellation that a task ended with are logged, not raised.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_INTERVAL_S)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s ended with an error", task.get_name(), exc_info=task.exception())
