"""Bun and Deno processes inside bubblewrap sandboxes built like the Linux tier's.

Bun has no permission system, so its process is the boundary. Each runtime
process runs under the Linux tier's pieces (:mod:`soulbox.runtimes.linux`):

* its own host uid from a :class:`~soulbox.runtimes.linux.uids.UidBlock` held
  by this worker alone, leased for the process's whole life (an idle warm
  process keeps it), so two processes never share a uid at the same time;
* new user, pid, mount, uts, ipc and network namespaces (``--as-pid-1``: the
  runtime is pid 1 there, so the watchdog samples it and one kill ends
  everything it started); when the function's permissions grant ``net``,
  a network namespace of the Linux tier's pool instead
  (:mod:`soulbox.runtimes.linux.netpool`): egress to the granted
  destinations only, never to the host or private ranges, names resolved at
  start into the sandbox's ``/etc/hosts`` (:mod:`~soulbox.runtimes.linux.netgrants`;
  Deno also applies its own allow-list);
* the root of :class:`~soulbox.runtimes.linux.rootfs.RootLayout`: read-only
  ``/usr`` and libraries, a generated ``/etc``, fresh ``/proc``, minimal
  ``/dev``, private size-capped ``/tmp`` and ``/work``; the runtime binary
  bound read-only at its host path; the shim and the function's module
  copied in read-only under ``/code``; the control socket's directory (owned
  by the process's uid) at ``/run/soulbox``;
* the Linux tier's seccomp filter, ``no_new_privs``, no capabilities,
  ``--die-with-parent``.

The memory cgroup (:mod:`.cgroup`) takes the sandbox's pid 1 before it execs
(bubblewrap waits on ``--block-fd`` until then), so everything is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from soulbox.core.logging import get_logger
from soulbox.core.tiersettings import LinuxSettings

from ..linux.errors import SandboxUnavailable
from ..linux.host import which
from ..linux.netgrants import resolve_grants, resolver_binds
from ..linux.netns import NetUnavailable
from ..linux.netpool import NetLease, NetPool
from ..linux.rootfs import RootLayout
from ..linux.sandbox import NET_LOCKS, UID_LOCKS
from ..linux.seccomp import build_filter
from ..linux.streams import StatusReader
from ..linux.uids import UidBlock, UidPool
from ..linux.wrap import sandbox_argv, seccomp_pipe

log = get_logger(__name__)

RUN_DIR = PurePosixPath("/run/soulbox")  # the control socket's directory inside
CODE_DIR = PurePosixPath("/code")  # the shim and the module inside
CACHE_DIR = PurePosixPath("/tmp/cache")  # the runtime's transpiler cache: private, gone with the process
SETUP_TIMEOUT_S = 10.0  # bubblewrap's own setup, before the sandbox's pid 1 is known
WRITABLE = (PurePosixPath("/tmp"), PurePosixPath("/work"))


@dataclass(eq=False)
class Spawn:
    """One sandboxed process being started: its command line and the ends of bubblewrap's pipes."""

    argv: list[str]
    uid: int
    root: Path  # on the host: run/ (RUN_DIR inside) and code/ (CODE_DIR)
    pass_fds: tuple[int, ...]  # bubblewrap's ends of its pipes: closed here once it runs
    status: StatusReader
    block_w: int
    _sandbox: JsSandbox = field(repr=False)
    net: NetLease | None = None  # its network namespace, when granted egress

    @property
    def run_dir(self) -> Path:
        """The host side of ``RUN_DIR``."""
        return self.root / "run"

    def spawned(self) -> None:
        """bubblewrap holds its own copies of the fds now."""
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = ()

    async def sandbox_pid(self) -> int | None:
        """The sandbox's pid 1 as the host sees it, or None if bubblewrap gave up."""
        self.status.start()
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                return await self.status.child_pid()
        except TimeoutError:
            return None

    def go(self) -> None:
        """Let the sandbox exec the runtime (it is in its cgroup by now)."""
        if self.block_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.block_w, b"go")
            os.close(self.block_w)
            self.block_w = -1

    def close(self) -> None:
        """Once the process is gone: its uid is free, its directory removed; safe to call more than once."""
        self.spawned()
        if self.block_w >= 0:  # never let go: its monitor is dead, and --die-with-parent has killed it
            os.close(self.block_w)
            self.block_w = -1
        self.status.close()
        if self.uid >= 0:
            shutil.rmtree(self.root, ignore_errors=True)
            self._sandbox.release(self.uid)
            self.uid = -1
        if self.net is not None:
            self._sandbox.release_net(self.net)
            self.net = None


class JsSandbox:
    """What every sandboxed runtime process of this worker shares: tools, root layout, seccomp, uids."""

    def __init__(self, settings: LinuxSettings) -> None:
        self.bwrap = which(settings.bwrap)
        self.setpriv = which(settings.setpriv)
        self._seccomp = build_filter()
        self._settings = settings
        self._layout = RootLayout(settings)
        try:
            self._uid_block = UidBlock(settings.uid_base, settings.uid_block, self._layout.skeleton.parent / UID_LOCKS)
        except BaseException:
            self._layout.close()
            raise
        # Every uid of the block: idle warm processes keep theirs, and their number is bounded by the pool.
        self._uids = UidPool(self._uid_block.start, settings.uid_block)
        self._net: NetPool | None = None
        self._net_binds: list[str] = []
        self._net_lock = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def create(cls, settings: LinuxSettings) -> JsSandbox | None:
        """A sandbox, or None (logged) when this host cannot build one (no bwrap, setpriv or libseccomp)."""
        try:
            return cls(settings)
        except SandboxUnavailable as exc:
            log.warning("js.unsandboxed", reason=str(exc), hint="Bun functions run with the worker's access")
            return None

    async def prepare(
        self,
        command: Sequence[str],
        *,
        binary: Path,
        files: Mapping[str, Path],
        net: Sequence[str],
        write_paths: Sequence[str],
        tmpfs_bytes: int,
    ) -> Spawn:
        """A host uid and the command line running ``command`` (whose argv[0] is ``binary``) sandboxed.

        ``files`` maps names to host files copied in, read-only under ``/code``; ``net`` are the function's
        network grants (none: only its own loopback); ``write_paths`` (Deno's write grants) get their
        directory made when it lies in the private ``/tmp`` or ``/work``.
        """
        grant = await resolve_grants(net) if net else None
        lease = None
        if grant is not None and grant.policy.enabled:
            lease = await (await self.network()).acquire(grant.policy)
        try:
            uid = await self._uids.acquire()
        except BaseException:
            if lease is not None:
                self.release_net(lease)
            raise
        hosts = grant.hosts_file(self._settings.hostname) if grant is not None and grant.hosts else None
        try:
            spawn = self._spawn(uid, command, binary, files, lease, hosts, write_paths, tmpfs_bytes)
        except BaseException:
            self._uids.release(uid)
            if lease is not None:
                self.release_net(lease)
            raise
        spawn.net = lease
        return spawn

    async def network(self) -> NetPool:
        """The pool of network namespaces for processes granted ``net``, set up on first use."""
        if not self._settings.net.enabled:
            raise NetUnavailable("network egress is off on this worker (linux.net.enabled)")
        async with self._net_lock:
            if self._net is None:
                which("nsenter")
                net = await NetPool.open(self._settings.net, self._layout.skeleton.parent / NET_LOCKS)
                self._net_binds = resolver_binds(self._layout.skeleton / "net", net.dns)
                self._net = net
            return self._net

    def release_net(self, lease: NetLease) -> None:
        """Give ``lease`` back to the pool (in the background: the process is gone, its rules are reset)."""
        if self._net is None:
            return
        task = asyncio.ensure_future(self._net.release(lease))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _spawn(
        self,
        uid: int,
        command: Sequence[str],
        binary: Path,
        files: Mapping[str, Path],
        lease: NetLease | None,
        hosts: bytes | None,
        write_paths: Sequence[str],
        tmpfs_bytes: int,
    ) -> Spawn:
        opened: list[int] = []
        # Beside the /etc skeleton, where the sandbox's uid can reach it. Copies, not --ro-bind-data:
        # a runtime resolving its module's real path would find "/proc/self/fd/N (deleted)".
        root = self._layout.skeleton.parent / f"soulbox-js-{uuid.uuid4().hex[:16]}"
        run_dir, code_dir = root / "run", root / "code"
        try:
            root.mkdir(mode=0o755)
            code_dir.mkdir(mode=0o755)
            for name, host in files.items():
                shutil.copyfile(host, code_dir / name)
                (code_dir / name).chmod(0o444)
            run_dir.mkdir(mode=0o700)
            os.chown(run_dir, uid, uid)
            real = str(binary.resolve())
            dirs = sorted({str(PurePosixPath(p).parent) for p in write_paths if _under_writable(PurePosixPath(p))})
            root_args = self._layout.args(
                tmpfs_bytes=tmpfs_bytes,
                files={},
                ro_binds={real: real, str(code_dir): str(CODE_DIR)},
                rw_binds={str(run_dir): str(RUN_DIR)},
                dirs=dirs,
            )
            root_args += ["--as-pid-1"]
            if lease is not None:  # bubblewrap keeps the namespace nsenter puts it in
                root_args += ["--share-net", *self._net_binds]
            if hosts is not None:
                (root / "hosts").write_bytes(hosts)
                (root / "hosts").chmod(0o444)
                root_args += ["--ro-bind", str(root / "hosts"), "/etc/hosts"]
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            opened += [status_r, status_w, block_r, block_w]
            seccomp_r = seccomp_pipe(self._seccomp)
            opened.append(seccomp_r)
            argv = sandbox_argv(
                self.setpriv, self.bwrap, uid, root_args, [real, *command[1:]],
                status_fd=status_w, block_fd=block_r, seccomp_fd=seccomp_r,
                netns=str(lease.path) if lease is not None else None,
            )  # fmt: skip
            child = (status_w, block_r, seccomp_r)
            return Spawn(argv, uid, root, child, StatusReader(status_r), block_w, self)
        except BaseException:
            for fd in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(root, ignore_errors=True)
            raise

    @property
    def uids_in_use(self) -> int:
        """Host uids leased to live processes."""
        return self._uids.in_use

    def release(self, uid: int) -> None:
        if not self._closed:
            self._uids.release(uid)

    async def close(self) -> None:
        """After every process is gone."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._net is not None:
            await self._net.close()
        self._layout.close()
        self._uid_block.close()


def _under_writable(path: PurePosixPath) -> bool:
    return any(path.parent == base or base in path.parent.parents for base in WRITABLE)
