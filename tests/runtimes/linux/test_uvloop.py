"""The worker runs on uvloop: the launcher's pipes, pidfds and cleanup must work there too."""

from __future__ import annotations

import asyncio
import contextlib

import uvloop

from soulbox.runtimes.linux.sandbox import Launcher

from .conftest import isolated_settings
from .helpers import out, processes_of, sandbox_cgroups, sh


def test_runs_timeouts_and_cancellations_on_uvloop(kernel_ok: None) -> None:
    async def scenario() -> None:
        launcher = Launcher(isolated_settings(), concurrency=4)
        try:
            hello = await sh(launcher, "echo hello; exec ls -l /proc/self/fd", stdin=b"x")
            first, _, *lines = out(hello).splitlines()
            fds = [line.split()[-1] for line in lines if not line.endswith("/fd")]  # not ls reading the directory
            assert first == "hello"
            # uvloop hands stdio over as socketpairs and leaves duplicates of them; nothing of the worker leaks in.
            assert set(fds) == set(fds[:3]) and all(fd.startswith("socket:") for fd in fds)
            slow = await sh(launcher, "sleep 1000 & sleep 1000", timeout_s=0.2)
            assert slow.timed_out
            for delay_ms in (0, 2, 5, 10):
                task = asyncio.ensure_future(sh(launcher, "sleep 1000"))
                await asyncio.sleep(delay_ms / 1000)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            results = await asyncio.gather(*(sh(launcher, f"echo {i}") for i in range(8)))
            assert [out(r) for r in results] == [f"{i}\n" for i in range(8)]
            assert processes_of(launcher) == [] and sandbox_cgroups(launcher) == []
        finally:
            await launcher.close()

    uvloop.run(scenario())
