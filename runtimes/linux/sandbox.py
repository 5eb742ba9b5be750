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
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.logging import get_logger
from soulbox.core.tiersettings import LinuxSettings

from ..protocol import Output, OutputSink
from .box import RUN_DIR, Box, BoxLimits, make_run_dir, remove_run_dir
from .cgroup import CgroupDriver, CgroupLimits, SandboxCgroup, detect
from .errors import SandboxError, SandboxSetupFailed, SandboxUnavailable
from .host import become_subreaper, seal_inherited_fds, which
from .netgrants import resolver_binds
from .netns import NetUnavailable
from .netpolicy import EgressPolicy
from .netpool import NetLease, NetPool
from .reaper import sweep
from .rootfs import RootLayout
from .seccomp import build_filter
from .session import DRAIN_S, Session, open_session
from .streams import feed, pump
from .uids import UidBlock, UidPool
from .wrap import sandbox_argv, seccomp_pipe

UID_LOCKS = "soulbox-uids"  # beside the rootfs skeletons: one lock file per uid block
NET_LOCKS = "soulbox-net"  # and one per address block of the network pools

log = get_logger(__name__)

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

    def __init__(self, settings: LinuxSettings, *, concurrency: int, box_capacity: int = 0) -> None:
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
        if concurrency + box_capacity > settings.uid_block:
            raise SandboxUnavailable(f"{concurrency + box_capacity} sandboxes need more than uid_block uids")
        try:
            self._uid_block = UidBlock(settings.uid_base, settings.uid_block, self._layout.skeleton.parent / UID_LOCKS)
        except BaseException:
            self._layout.close()
            self._cgroups.close()
            raise
        start = self._uid_block.start
        self._uids = UidPool(start, concurrency)
        self._box_uids = UidPool(start + concurrency, box_capacity) if box_capacity else None
        self._leftovers: list[SandboxCgroup] = []
        self._net: NetPool | None = None
        self._net_binds: list[str] = []  # the resolver files of sandboxes with egress
        self._net_lock = asyncio.Lock()
        self._closed = False

    async def network(self) -> NetPool:
        """The pool of network namespaces for sandboxes with egress, set up on first use."""
        if not self.settings.net.enabled:
            raise NetUnavailable("network egress is off on this worker (linux.net.enabled)")
        async with self._net_lock:
            if self._net is None:
                which("nsenter")
                net = await NetPool.open(self.settings.net, self._layout.skeleton.parent / NET_LOCKS)
                self._net_binds = resolver_binds(self._layout.skeleton / "net", net.dns)
                self._net = net
            return self._net

    async def _lease(self, egress: EgressPolicy | None) -> NetLease | None:
        if egress is None or not egress.enabled:
            return None
        return await (await self.network()).acquire(egress)

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
        sink: OutputSink | None = None,
        egress: EgressPolicy | None = None,
    ) -> SandboxResult:
        """Run ``command`` to the end (or the deadline). ``files``: sandbox path -> readable fd (the caller's).

        ``sink`` gets the kept output as the pipes deliver it. Without ``egress`` (or with an empty one) the
        sandbox has only its own loopback.
        """
        if self._closed:
            raise SandboxError("the launcher is closed")
        lease = await self._lease(egress)
        try:
            return await self._run_leased(command, stdin, limits, env, files or {}, lease, sink)
        finally:
            if lease is not None and self._net is not None:
                await self._net.release(lease)

    async def _run_leased(
        self,
        command: Sequence[str],
        stdin: bytes,
        limits: SandboxLimits,
        env: Mapping[str, str],
        files: Mapping[str, int],
        lease: NetLease | None,
        sink: OutputSink | None,
    ) -> SandboxResult:
        uid = await self._uids.acquire()
        cgroup: SandboxCgroup | None = None
        try:
            cgroup = self._cgroups.create(
                f"sb-{uuid.uuid4().hex[:16]}",
                CgroupLimits(limits.memory_bytes, self.settings.pids_max, self.settings.cpu_quota),
            )
            return await self._run(command, uid, cgroup, stdin, limits, env, files, lease, sink)
        finally:
            if cgroup is not None and not await self._remove(cgroup):
                await sweep(uid, exclude=-1)  # whatever escaped the cgroup must not outlive the uid's lease
            self._uids.release(uid)

    async def start(
        self,
        box_id: str,
        command: Sequence[str],
        *,
        limits: BoxLimits,
        env: Mapping[str, str],
        ro_binds: Mapping[str, str],
        home: str,
        ready: tuple[bytes, ...],
        ready_timeout: float,
        egress: EgressPolicy | None = None,
    ) -> Box:
        """Start a long-lived sandbox running ``command``; it is ready once its stdout printed every line of ``ready``.

        Boxes take their host uids from a pool of their own (``box_capacity``
        uids after the functions' ones), so sandboxes never starve functions.
        With ``egress``, the box runs in a network namespace of :meth:`network`
        letting that policy through, returned to the pool when the box closes.
        """
        if self._closed:
            raise SandboxError("the launcher is closed")
        if self._box_uids is None:
            raise SandboxError("this launcher hosts no long-lived sandboxes")
        uids = self._box_uids
        uid = await uids.acquire()
        teardown = contextlib.AsyncExitStack()
        try:
            teardown.callback(uids.release, uid)
            lease = await self._lease(egress)
            if lease is not None:
                teardown.push_async_callback(self._release_net, lease)
            cgroup = self._cgroups.create(
                f"box-{box_id}", CgroupLimits(limits.memory_bytes, limits.pids_max, limits.cpu_quota)
            )
            teardown.push_async_callback(self._remove_box_cgroup, cgroup, uid)
            run_dir = make_run_dir(self._layout.skeleton.parent, box_id, uid)
            teardown.callback(remove_run_dir, run_dir)
            root_args = self._layout.box_args(
                tmpfs_bytes=limits.disk_bytes, ro_binds=ro_binds, rw_binds={str(run_dir): RUN_DIR}, home=home
            )
            session = await teardown.enter_async_context(self._session(command, root_args, uid, cgroup, env, (), lease))
            box = Box(box_id, session, run_dir, teardown=teardown, net=lease)
        except BaseException:
            await teardown.aclose()
            raise
        try:
            await box.wait_ready(ready, ready_timeout)
        except BaseException:
            await box.close()
            raise
        return box

    def guest_dir(self) -> Path:
        """A directory every sandbox uid can read (beside the shared /etc skeleton), for in-sandbox programs."""
        path = self._layout.skeleton / "guests"
        path.mkdir(mode=0o755, exist_ok=True)
        return path

    async def _release_net(self, lease: NetLease) -> None:
        if self._net is not None:
            await self._net.release(lease)

    async def _remove_box_cgroup(self, cgroup: SandboxCgroup, uid: int) -> None:
        if not await self._remove(cgroup):
            await sweep(uid, exclude=-1)

    async def _run(
        self,
        command: Sequence[str],
        uid: int,
        cgroup: SandboxCgroup,
        stdin: bytes,
        limits: SandboxLimits,
        env: Mapping[str, str],
        files: Mapping[str, int],
        lease: NetLease | None,
        sink: OutputSink | None,
    ) -> SandboxResult:
        root_args = self._layout.args(tmpfs_bytes=limits.tmpfs_bytes or limits.memory_bytes // 2, files=files)
        tasks: list[asyncio.Task[None]] = []
        async with self._session(command, root_args, uid, cgroup, env, files.values(), lease) as session:
            try:
                proc = session.proc
                stdout = Output(limits.max_output_bytes, sink=sink, stream="stdout")
                stderr = Output(limits.max_output_bytes, sink=sink, stream="stderr")
                io = [
                    asyncio.create_task(pump(proc.stdout, stdout)),
                    asyncio.create_task(pump(proc.stderr, stderr)),
                ]
                tasks += [*io, asyncio.create_task(feed(proc.stdin, stdin))]
                started = time.perf_counter()
                # The monitor exits with the command (Process.wait would also wait for every pipe to close).
                timed_out = not await session.exited(limits.timeout_s)
                if timed_out:
                    session.kill()
                    if not await session.exited(DRAIN_S):
                        proc.kill()
                        await session.exited(DRAIN_S)
                duration_ms = (time.perf_counter() - started) * 1000
                _, pending = await asyncio.wait(io, timeout=DRAIN_S)
                if pending:  # something in the sandbox still holds a pipe open
                    session.kill()
                    await asyncio.wait(pending, timeout=DRAIN_S)
                exit_code = await session.status.exit_code()
                if exit_code is None and not timed_out:
                    raise SandboxSetupFailed(stderr.getvalue().decode(errors="replace").strip() or "no exit status")
                stats = cgroup.stats()
                session.finished = True
                result = SandboxResult(
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
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
        return result

    def _session(
        self,
        command: Sequence[str],
        root_args: Sequence[str],
        uid: int,
        cgroup: SandboxCgroup,
        env: Mapping[str, str],
        extra_fds: Iterable[int],
        lease: NetLease | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Session]:
        """bwrap as ``uid`` with ``root_args`` around ``command``, under the seccomp filter, in ``cgroup``.

        With ``lease``, in its network namespace instead of a new empty one.
        """
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        block_r, block_w = os.pipe2(os.O_CLOEXEC)
        seccomp_r = seccomp_pipe(self._seccomp)
        if lease is not None:
            root_args = [*root_args, "--share-net", *self._net_binds]
        argv = sandbox_argv(
            self.setpriv, self.bwrap, uid, root_args, command,
            status_fd=status_w, block_fd=block_r, seccomp_fd=seccomp_r,
            netns=str(lease.path) if lease is not None else None,
        )  # fmt: skip
        return open_session(
            argv,
            uid=uid,
            cgroup=cgroup,
            env=env,
            child_fds=[status_w, block_r, seccomp_r],
            extra_fds=tuple(extra_fds),
            block_w=block_w,
            status_r=status_r,
        )

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
        if self._net is not None:
            await self._net.close()
        self._cgroups.close()
        self._layout.close()
        self._uid_block.close()
