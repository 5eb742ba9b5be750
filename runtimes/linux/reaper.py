"""Reaping each sandbox's pid 1, which its bubblewrap monitor leaves behind.

bubblewrap's monitor exits as soon as the command exits; the sandbox's pid 1
(bwrap's init) then dies of ``--die-with-parent``, an orphan. Orphans go to
the nearest *child subreaper*, else to the host's pid 1 — which may reap late
or never (a container whose pid 1 is the worker itself, minimal VM inits).
So the worker makes itself a subreaper (:mod:`.host`) and reaps each
sandbox's pid 1 through the pidfd it already holds: no zombie outlives its invocation.

A run cut short before its sandbox joined its cgroup (cancelled, or bwrap
failing half-way) is found by its host uid instead, which no other process
has while the run holds it: :func:`sweep` kills and reaps them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path


async def exited(pidfd: int, *, timeout: float | None) -> bool:
    """Wait until the process behind ``pidfd`` has exited; False if it still runs after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    return True


async def reap(pidfd: int, *, timeout: float) -> bool:
    """Wait for the process behind ``pidfd`` to exit, then collect it if it is our child.

    True once it is gone (reaped here, or by its own parent); False if it is
    still running after ``timeout`` seconds.
    """
    if not await exited(pidfd, timeout=timeout):
        return False
    with contextlib.suppress(ChildProcessError):  # not our child: its monitor reaped it
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
    return True


def _processes_of(uid: int) -> tuple[list[int], list[int]]:
    """(live, zombie) host pids whose real uid is ``uid``."""
    live: list[int] = []
    zombies: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 ").split()[0]) != uid:
            continue
        (zombies if fields.get("State", "").strip().startswith(("Z", "X")) else live).append(int(entry.name))
    return live, zombies


async def sweep(uid: int, *, exclude: int, timeout: float = 2.0) -> int:
    """SIGKILL every process running as ``uid`` and reap those that are our children; how many were killed."""
    killed = 0
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        live, zombies = _processes_of(uid)
        for pid in zombies:
            if pid != exclude:
                with contextlib.suppress(ChildProcessError):  # not ours: its own parent reaps it
                    os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
        if not live or asyncio.get_running_loop().time() > deadline:
            return killed
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        await asyncio.sleep(0.001)
