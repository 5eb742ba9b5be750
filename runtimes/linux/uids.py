"""Host uids for sandboxes: one per concurrent sandbox, never shared while in use.

Root inside a sandbox is this uid outside: it owns no host file, holds no
capability in the host's namespace, and differs from every other running
sandbox's, so per-uid kernel limits and checks never join two sandboxes.
The pool's size is the tier's concurrency: ``acquire`` waits for a free uid
(explicit back-pressure), it never over-commits.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections import deque
from pathlib import Path

from .errors import SandboxUnavailable


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


class UidBlock:
    """A range of host uids held by this process alone among the workers of this host.

    Workers on one host share ``uid_base`` and the block size; each claims the
    first free block by taking an exclusive ``flock`` on that block's lock file
    (held until :meth:`close` or the process's death, which releases it), so
    two workers never run sandboxes as the same uid — the uid is what kills and
    sweeps go by.
    """

    def __init__(self, base: int, size: int, lock_dir: Path, *, max_blocks: int = 256) -> None:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index in range(max_blocks):
            fd = os.open(lock_dir / f"uids-{base}-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.start = base + index * size
            self.size = size
            self._fd = fd
            return
        raise SandboxUnavailable(f"all {max_blocks} uid blocks from {base} are held by other workers")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
