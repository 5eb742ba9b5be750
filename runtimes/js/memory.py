"""A runtime process's memory: what the function uses, its peak, the limit.

What counts is the growth over ``baseline``: the process's memory once the
shim is connected and before the function's module is loaded, so the
runtime's own boot is not charged to the function. Two sources:

* a memory cgroup (:mod:`.cgroup`), when the host gives one: the kernel
  enforces the limit exactly and keeps the true peak;
* otherwise RSS from ``/proc``: the watchdog samples it every ``poll_s`` and
  the caller kills past the limit (a fast allocator can overshoot by what it
  allocates in one interval); the peak is the kernel's high-water mark
  (``VmHWM``, reset per invocation through ``clear_refs``), or ``ru_maxrss``
  from ``wait4`` once the process has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from .cgroup import MemoryCgroup

PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcessMemory:
    def __init__(self, pid: int, *, poll_s: float, cgroup: MemoryCgroup | None = None) -> None:
        self.pid = pid
        self.cgroup = cgroup
        self.baseline = 0
        self.max_rss: int | None = None  # set from wait4 once the process has exited
        self._poll_s = poll_s

    def set_baseline(self, limit: int) -> None:
        """Start counting from now; with a cgroup, the kernel enforces ``limit`` from here."""
        self.baseline = self.rss()
        if self.cgroup is not None:
            self.cgroup.limit_growth(limit)

    async def watch(self, limit: int) -> None:
        """Return once the growth passes ``limit``."""
        # Sampling /proc: there is no event to wait for.
        while self.rss() - self.baseline <= limit:  # noqa: ASYNC110
            await asyncio.sleep(self._poll_s)

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return 0

    def reset_peak(self) -> None:
        if self.cgroup is not None:
            self.cgroup.reset_peak()
            return
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak(self) -> int | None:
        """Peak growth since the last ``reset_peak``, or over the lifetime once exited."""
        if self.cgroup is not None:
            return self.cgroup.peak()
        if self.max_rss is not None:
            return max(0, self.max_rss - self.baseline)
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        return max(0, int(line.split()[1]) * 1024 - self.baseline)
        except OSError:
            pass
        return None

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
