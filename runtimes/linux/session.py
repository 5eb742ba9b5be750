"""One bubblewrap sandbox from spawn to teardown, shared by one-shot runs and long-lived sandboxes.

:func:`open_session` starts bubblewrap (as the sandbox's host uid, through
``setpriv``) blocked before exec (``--block-fd``), reads the sandbox's pid 1
from ``--json-status-fd``, moves it into its cgroup, lets it go, and yields a
:class:`Session`. On the way out it tears everything down: a session whose
owner did not mark it :attr:`Session.finished` (cancelled, failed half-way, or
a long-lived sandbox being killed) has its pid 1 and cgroup killed and its uid
swept; then the pipes, the monitor and pid 1 are collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from soulbox.core.logging import get_logger

from .cgroup import SandboxCgroup
from .errors import SandboxSetupFailed
from .reaper import exited, reap, sweep
from .streams import StatusReader, setup_failure

log = get_logger(__name__)

SETUP_TIMEOUT_S = 10.0  # bwrap's own setup (namespaces, mounts), before the guest's clock starts
DRAIN_S = 1.0  # how long pipes and processes may take to go once the sandbox is dead


@dataclass(eq=False)
class Session:
    """A started sandbox: bwrap's monitor (our child), the sandbox's pid 1, its cgroup and pipes."""

    proc: asyncio.subprocess.Process
    pid: int  # the sandbox's pid 1 as the host sees it
    pidfd: int
    monitor: int  # pidfd of bwrap's monitor
    cgroup: SandboxCgroup
    uid: int
    status: StatusReader
    finished: bool = False  # set by the owner once the command ended normally: no kill, no sweep

    async def exited(self, timeout: float | None) -> bool:
        """Whether the command has ended (bwrap's monitor exits with it) within ``timeout`` seconds."""
        return await exited(self.monitor, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL pid 1 (the kernel then kills its whole pid namespace) and everything in the cgroup."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.cgroup.kill()


@contextlib.asynccontextmanager
async def open_session(
    argv: Sequence[str],
    *,
    uid: int,
    cgroup: SandboxCgroup,
    env: Mapping[str, str],
    child_fds: list[int],
    extra_fds: Sequence[int] = (),
    block_w: int,
    status_r: int,
) -> AsyncIterator[Session]:
    """Run ``argv`` (setpriv + bwrap + command) and yield once the sandbox is in its cgroup and let go.

    ``child_fds`` are the bwrap ends of the status/block/seccomp pipes (closed
    here once bwrap holds them); ``extra_fds`` are the caller's to pass and keep.
    """
    status = StatusReader(status_r)
    proc: asyncio.subprocess.Process | None = None
    session: Session | None = None
    monitor = pidfd = -1
    try:
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(*child_fds, *extra_fds),
                env=dict(env),
                cwd="/",
                start_new_session=True,
            )
        )
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:  # let the (quick) spawn finish: the cleanup below must see what it started
            proc = await spawn
            raise
        try:  # the monitor stays a zombie until asyncio sees it exit, so this pid is still ours
            monitor = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # bwrap gave up at once (bad arguments) and is already reaped
            raise SandboxSetupFailed(await setup_failure(proc, DRAIN_S)) from None
        for fd in child_fds:
            os.close(fd)
        child_fds.clear()
        status.start()
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                pid = await status.child_pid()
        except TimeoutError:
            pid = None
        if pid is None:
            raise SandboxSetupFailed(await setup_failure(proc, DRAIN_S))
        try:
            pidfd = os.pidfd_open(pid)
            cgroup.attach(pid)
        except ProcessLookupError:  # bwrap's setup failed after the fork (a bind source it cannot reach...)
            raise SandboxSetupFailed(await setup_failure(proc, DRAIN_S)) from None
        session = Session(proc, pid, pidfd, monitor, cgroup, uid, status)
        os.write(block_w, b"go")  # the guest's clock starts now
        os.close(block_w)
        block_w = -1
        yield session
    finally:
        if session is None or not session.finished:  # maybe not in its cgroup, maybe blocked before exec
            if pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            cgroup.kill()
            if proc is not None and proc.returncode is None:
                proc.kill()
            killed = await sweep(uid, exclude=proc.pid if proc is not None else -1)
            if killed:
                log.info("linux.swept", uid=uid, killed=killed)
        for fd in (*child_fds, block_w):  # block_w only now: closing it lets a blocked sandbox go on
            if fd >= 0:
                os.close(fd)
        if proc is not None:
            await _settle(proc)
        for fd, reaped in ((pidfd, True), (monitor, False)):
            if fd >= 0:
                if reaped and not await reap(fd, timeout=DRAIN_S):
                    log.warning("linux.init_not_reaped", cgroup=cgroup.name)
                os.close(fd)
        status.close()


async def _settle(proc: asyncio.subprocess.Process) -> None:
    """Let asyncio collect the monitor; its pipes are closed by now, everything in the sandbox being dead."""
    try:
        async with asyncio.timeout(DRAIN_S):
            await proc.wait()
    except TimeoutError:
        log.warning("linux.monitor_not_settled", pid=proc.pid)
