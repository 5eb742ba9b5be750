"""Host uids for sandboxes: one per concurrent sandbox, never shared while in use.

Root inside a sandbox is this uid outside: it owns no host file, holds no
capability in the host's namespace, and differs from every other running
sandbox's, so per-uid kernel limits and checks never join two sandboxes.
The pool's size is the tier's concurrency: ``acquire`` waits for a free uid
(explicit back-pressure), it never over-commits.
"""

from __future__ import annotations

import asyncio
from collections import deque


class UidPool:
    def __init__(self, base: int, size: int) -> None:
        if size < 1:
            raise ValueError("a uid pool needs at least one uid")
        self.base = base
        self.size = size
        self._free = deque(range(base, base + size))
        self._available = asyncio.Semaphore(size)

    async def acquire(self) -> int:
        await self._available.acquire()
        return self._free.popleft()

    def release(self, uid: int) -> None:
        if not self.base <= uid < self.base + self.size or uid in self._free:
            raise ValueError(f"uid {uid} was not taken from this pool")
        self._free.append(uid)
        self._available.release()

    @property
    def in_use(self) -> int:
        return self.size - len(self._free)
