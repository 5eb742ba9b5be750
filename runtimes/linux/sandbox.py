"""The sandbox launcher: one command in fresh namespaces, its own cgroup, under seccomp.

Why bubblewrap (Debian/Ubuntu/Fedora package ``bubblewrap``) rather than
``unshare(1)`` plus an init of our own: it builds the whole minimal root in
one exec (read-only binds, tmpfs, fresh /proc, minimal /dev, loopback-only
network, ``--disable-userns``), runs a zombie-reaping pid 1 that dies with
its parent (``--die-with-parent``), sets ``no_new_privs``, drops every
capability, loads a seccomp program from an fd, and is the hardened,
audited sandbox that Flatpak ships everywhere — on v1 and v2 hosts alike.
``unshare(1)`` would need a mount script (one exec per mount) and an init
we would have to write and audit; a C helper would need a compiler at setup.

bubblewrap runs as an unprivileged host uid (dropped to by util-linux's
``setpriv``, an essential package): it then maps root inside to that uid, so
root in the sandbox is nobody outside. The seccomp program is compiled once
by libseccomp (:mod:`.seccomp`) and fed to ``--seccomp`` through a pipe.

Cgroups: bubblewrap knows none, so the launcher asks it to wait
(``--block-fd``) once the namespaces and mounts are ready, reads the
sandbox's pid 1 from ``--json-status-fd``, moves it into the sandbox cgroup,
and only then lets it exec — everything the guest forks is born inside.
The deadline kills pid 1 through a pidfd (the kernel then kills the whole
pid namespace) and the cgroup; pid 1 is reaped by the worker (a child
subreaper, :mod:`.host`, :mod:`.reaper`) and the cgroup removed after every
run. A run cut short before its sandbox joined the cgroup (cancelled, or
bwrap failing half-way) is cleaned up by its host uid, unique while leased.

Needs: Linux 5.3+ (pidfd), unprivileged user namespaces (Ubuntu 24.04's
AppArmor restriction needs its ``bwrap`` profile), bwrap >= 0.8, root (or a
delegated cgroup) for the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from soulbox.core.logging import get_logger
from soulbox.core.settings import LinuxSettings

from ..protocol import Output
from .cgroup import CgroupDriver, CgroupLimits, SandboxCgroup, detect
from .errors import SandboxError, SandboxSetupFailed
from .host import become_subreaper, seal_inherited_fds, which
from .reaper import exited, reap, sweep
from .rootfs import RootLayout
from .seccomp import build_filter
from .streams import StatusReader, feed, pump, setup_failure
from .uids import UidPool

log = get_logger(__name__)

SETUP_TIMEOUT_S = 10.0  # bwrap's own setup (namespaces, mounts), before the guest's clock starts
DRAIN_S = 1.0  # how long the pipes may stay open after the command exits
REMOVE_TRIES = 12  # cgroup rmdir attempts, backing off from 1 ms (about 4 s in all)


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    memory_bytes: int
    timeout_s: float
    max_output_bytes: int
    tmpfs_bytes: int | None = None  # /tmp and /work each; default: half the memory limit


@dataclass(frozen=True, slots=True)
class SandboxResult:
    exit_code: int | None  # as a shell reports it (128+N: killed by signal N); None: killed at the deadline
    timed_out: bool
    oom_killed: bool
    stdout: Output
    stderr: Output
    duration_ms: float
    peak_memory_bytes: int | None
    pids_limit_hit: bool


class Launcher:
    """Runs commands in sandboxes, at most ``concurrency`` at once (each with its own host uid)."""

    def __init__(self, settings: LinuxSettings, *, concurrency: int) -> None:
        self.settings = settings
        self.bwrap = which(settings.bwrap)
        self.setpriv = which(settings.setpriv)
        self._seccomp = build_filter()
        become_subreaper()
        seal_inherited_fds()
        self._cgroups: CgroupDriver = detect(settings.cgroup_parent)
        try:
            self._layout = RootLayout(settings)
        except BaseException:
            self._cgroups.close()
            raise
        self._uids = UidPool(settings.uid_base, concurrency)
        self._leftovers: list[SandboxCgroup] = []
        self._closed = False

    @property
    def cgroup_version(self) -> int:
        return self._cgroups.version

    @property
    def cgroup_parents(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self._cgroups.parents)

    async def run(
        self,
        command: Sequence[str],
        *,
        stdin: bytes,
        limits: SandboxLimits,
        env: Mapping[str, str],
        files: Mapping[str, int] | None = None,
    ) -> SandboxResult:
        """Run ``command`` to the end (or the deadline). ``files``: sandbox path -> readable fd (the caller's)."""
        if self._closed:
            raise SandboxError("the launcher is closed")
        uid = await self._uids.acquire()
        cgroup: SandboxCgroup | None = None
        try:
            cgroup = self._cgroups.create(
                f"sb-{uuid.uuid4().hex[:16]}",
                CgroupLimits(limits.memory_bytes, self.settings.pids_max, self.settings.cpu_quota),
            )
            return await self._run(command, uid, cgroup, stdin, limits, env, files or {})
        finally:
            if cgroup is not None and not await self._remove(cgroup):
                await sweep(uid, exclude=-1)  # whatever escaped the cgroup must not outlive the uid's lease
            self._uids.release(uid)

    async def _run(
        self,
        command: Sequence[str],
        uid: int,
        cgroup: SandboxCgroup,
        stdin: bytes,
        limits: SandboxLimits,
        env: Mapping[str, str],
        files: Mapping[str, int],
    ) -> SandboxResult:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        block_r, block_w = os.pipe2(os.O_CLOEXEC)
        seccomp_r, seccomp_w = os.pipe2(os.O_CLOEXEC)
        os.write(seccomp_w, self._seccomp)  # about 1 KiB: fits the pipe buffer
        os.close(seccomp_w)
        root_args = self._layout.args(tmpfs_bytes=limits.tmpfs_bytes or limits.memory_bytes // 2, files=files)
        child_fds = [status_w, block_r, seccomp_r]
        argv = [
            self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
            self.bwrap, *root_args,
            "--json-status-fd", str(status_w), "--block-fd", str(block_r), "--seccomp", str(seccomp_r),
            "--", *command,
        ]  # fmt: skip
        status = StatusReader(status_r)
        proc: asyncio.subprocess.Process | None = None
        tasks: list[asyncio.Task[None]] = []
        monitor = pidfd = -1  # pidfds of bwrap's monitor (our child) and of the sandbox's pid 1
        finished = False
        try:
            spawn = asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    pass_fds=(*child_fds, *files.values()),
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
            pidfd = os.pidfd_open(pid)
            cgroup.attach(pid)
            stdout, stderr = Output(limits.max_output_bytes), Output(limits.max_output_bytes)
            io = [
                asyncio.create_task(pump(proc.stdout, stdout)),
                asyncio.create_task(pump(proc.stderr, stderr)),
            ]
            tasks += [*io, asyncio.create_task(feed(proc.stdin, stdin))]
            started = time.perf_counter()
            os.write(block_w, b"go")  # the guest's clock starts now
            os.close(block_w)
            block_w = -1
            # The monitor exits with the command (Process.wait would also wait for every pipe to close).
            timed_out = not await exited(monitor, timeout=limits.timeout_s)
            if timed_out:
                _kill(pidfd, cgroup)
                if not await exited(monitor, timeout=DRAIN_S):
                    proc.kill()
                    await exited(monitor, timeout=DRAIN_S)
            duration_ms = (time.perf_counter() - started) * 1000
            _, pending = await asyncio.wait(io, timeout=DRAIN_S)
            if pending:  # something in the sandbox still holds a pipe open
                _kill(pidfd, cgroup)
                await asyncio.wait(pending, timeout=DRAIN_S)
            exit_code = await status.exit_code()
            if exit_code is None and not timed_out:
                raise SandboxSetupFailed(stderr.getvalue().decode(errors="replace").strip() or "no exit status")
            stats = cgroup.stats()
            finished = True
            return SandboxResult(
                exit_code=None if timed_out else exit_code,
                timed_out=timed_out,
                oom_killed=stats.oom_killed(exit_code),
                stdout=stdout,
                stderr=stderr,
                duration_ms=duration_ms,
                peak_memory_bytes=stats.peak_memory_bytes,
                pids_limit_hit=stats.pids_limit_hits > 0,
            )
        finally:
            if not finished:  # cancelled, or failed half-way: maybe not in its cgroup, maybe blocked before exec
                _kill(pidfd, cgroup)
                if proc is not None and proc.returncode is None:
                    proc.kill()
                killed = await sweep(uid, exclude=proc.pid if proc is not None else -1)
                if killed:
                    log.info("linux.swept", uid=uid, killed=killed)
            for fd in (*child_fds, block_w):  # block_w only now: closing it lets a blocked sandbox go on
                if fd >= 0:
                    os.close(fd)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if proc is not None:
                await _settle(proc)
            for fd, reaped in ((pidfd, True), (monitor, False)):
                if fd >= 0:
                    if reaped and not await reap(fd, timeout=DRAIN_S):
                        log.warning("linux.init_not_reaped", cgroup=cgroup.name)
                    os.close(fd)
            status.close()

    async def _remove(self, cgroup: SandboxCgroup) -> bool:
        """Kill what is left in the cgroup and delete it, waiting for exiting tasks to leave."""
        delay = 0.001
        for _ in range(REMOVE_TRIES):
            cgroup.kill()
            if cgroup.remove():
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        log.warning("linux.cgroup_busy", cgroup=cgroup.name, pids=cgroup.pids())
        self._leftovers.append(cgroup)
        return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        leftovers, self._leftovers = self._leftovers, []
        for cgroup in leftovers:
            await self._remove(cgroup)
        self._cgroups.close()
        self._layout.close()


async def _settle(proc: asyncio.subprocess.Process) -> None:
    """Let asyncio collect the monitor; its pipes are closed by now, everything in the sandbox being dead."""
    try:
        async with asyncio.timeout(DRAIN_S):
            await proc.wait()
    except TimeoutError:
        log.warning("linux.monitor_not_settled", pid=proc.pid)


def _kill(pidfd: int, cgroup: SandboxCgroup) -> None:
    if pidfd >= 0:
        with contextlib.suppress(ProcessLookupError):  # pid 1 gone: the kernel empties its namespace
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    cgroup.kill()
