"""Invocations waiting for a free worker slot: woken one at a time, in arrival order.

When every worker of a tier is full, the invocations the scheduler holds wait
here. A freed slot (a worker's answer, a heartbeat) wakes the first waiter
only; a waiter that gets a slot wakes the next, in case there is room for it
too, and one that finds none goes back to the front. So a finished invocation
costs a wake or two, not one per waiting invocation, and waiters are served
first come, first served. Every wait is bounded (``recheck_s``): a wake that
went to a waiter of another tier delays the rest by at most that long.
"""

from __future__ import annotations

import asyncio
from collections import deque


class CapacityQueue:
    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, recheck_s: float, *, front: bool = False) -> None:
        """Until woken or ``recheck_s`` passes; ``front``: keep the place of a waiter that was woken for nothing."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:
            self._waiting.appendleft(future)
        else:
            self._waiting.append(future)
        try:
            await asyncio.wait({future}, timeout=recheck_s)
        except asyncio.CancelledError:
            if future.done():
                self.wake_one()  # the wake was for us: hand it on rather than lose it
            raise
        finally:
            if not future.done():
                future.cancel()
                self._waiting.remove(future)

    def wake_one(self) -> None:
        """Wake the first waiter (a slot may be free)."""
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
