"""Long-lived sandboxes ("boxes"): the base of the E2B-style sandbox API.

A box is a bubblewrap sandbox like a function's, kept running: its command is
the in-sandbox daemon (``envd``), which the worker reaches on a unix socket in
a per-box host directory bound at ``/run/soulbox`` — nothing else crosses the
boundary, and the sandbox has no network but its own loopback unless it was
started with egress (:mod:`.netpool`). The box lives
until it is killed (or its pid 1 dies); the cgroup freezer pauses it with its
processes and memory kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.logging import get_logger

from .cgroup import CgroupUsage
from .errors import SandboxError, SandboxSetupFailed
from .linelog import LineLog
from .netpool import NetLease
from .reaper import exited
from .session import DRAIN_S, Session
from .streams import pump

log = get_logger(__name__)

RUN_DIR = "/run/soulbox"  # inside the box: the shared directory with envd's socket
SOCKET_NAME = "envd.sock"
LOG_BYTES = 64 * 1024
FREEZE_TIMEOUT_S = 5.0  # what is kept of the daemon's own output, for diagnostics


@dataclass(frozen=True, slots=True)
class BoxLimits:
    memory_bytes: int
    cpu_quota: float  # cores; 0: unlimited
    pids_max: int
    disk_bytes: int  # size cap of each writable tmpfs


class Box:
    """One running long-lived sandbox; made by :meth:`~soulbox.runtimes.linux.sandbox.Launcher.start`."""

    def __init__(
        self,
        box_id: str,
        session: Session,
        run_dir: Path,
        *,
        teardown: contextlib.AsyncExitStack,
        net: NetLease | None = None,
    ) -> None:
        self.id = box_id
        self.net = net
        self.session = session
        self.run_dir = run_dir
        self.started = time.time()
        self.log = LineLog()
        self._teardown = teardown
        self._frozen = False
        self._closed = False
        self._ended = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []
        self._watch = asyncio.create_task(self._watch_exit())

    @property
    def socket(self) -> Path:
        """The host path of envd's unix socket."""
        return self.run_dir / SOCKET_NAME

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def alive(self) -> bool:
        return not self._ended.is_set() and not self._closed

    async def wait_ready(self, markers: tuple[bytes, ...], timeout: float) -> None:
        """Read stdout until every one of ``markers`` was a line, then keep draining output into :attr:`log`."""
        waiting = set(markers)
        stdout, stderr = self.session.proc.stdout, self.session.proc.stderr
        assert stdout is not None and stderr is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await stdout.readline()
                    if not line:
                        err = await stderr.read(LOG_BYTES)
                        raise SandboxSetupFailed(err.decode(errors="replace").strip() or "the daemon exited")
                    waiting.discard(line.strip())
                    self.log.write(line)
                    if not waiting:
                        break
        except TimeoutError:
            missing = b", ".join(sorted(waiting)).decode(errors="replace")
            raise SandboxSetupFailed(f"no {missing!r} within {timeout:g} s: {self.log.getvalue()[-500:]!r}") from None
        self._pumps = [asyncio.create_task(pump(stdout, self.log)), asyncio.create_task(pump(stderr, self.log))]

    async def _watch_exit(self) -> None:
        await self.session.exited(None)
        self._ended.set()

    async def ended(self) -> None:
        """Wait until the box's command is gone (killed, or exited on its own)."""
        await self._ended.wait()

    async def freeze(self) -> None:
        """Stop every process of the box (they keep their memory); idempotent."""
        cgroup = self.session.cgroup
        cgroup.freeze(True)
        self._frozen = True
        delay = 0.001
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while not cgroup.frozen():  # tasks in uninterruptible sleep hold it in FREEZING for a while
            if time.monotonic() > deadline:
                cgroup.freeze(False)
                self._frozen = False
                raise SandboxError(f"box {self.id} did not freeze within {FREEZE_TIMEOUT_S:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self) -> None:
        self.session.cgroup.freeze(False)
        self._frozen = False

    def usage(self) -> CgroupUsage:
        return self.session.cgroup.usage()

    def net_counters(self) -> tuple[int, int]:
        """(received, sent) bytes on the box's veth since it started; (0, 0) without network."""
        return self.net.counters() if self.net is not None else (0, 0)

    def disk_used(self, path: str) -> int:
        """Bytes used on the filesystem at ``path`` inside the box (a tmpfs), seen through its pid 1's root."""
        try:
            st = os.statvfs(f"/proc/{self.session.pid}/root{path}")
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def kill(self) -> None:
        """SIGKILL every process of the box now (thawed first if frozen: frozen tasks cannot die).

        :meth:`dead` waits for them; :meth:`close` frees what the box held.
        """
        self.session.kill()
        if self._frozen:
            with contextlib.suppress(OSError):
                self.session.cgroup.freeze(False)
            self._frozen = False

    async def dead(self) -> bool:
        """Whether the box's pid 1 is gone within a drain period.

        pid 1 exits only once the kernel has killed the rest of its pid namespace; its pidfd says so
        before bwrap's monitor has noticed and exited in turn.
        """
        return await exited(self.session.pidfd, timeout=DRAIN_S)

    async def close(self) -> None:
        """Kill everything in the box and free its cgroup, uid and directory; repeat-safe."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        await self.dead()
        for task in (*self._pumps, self._watch):
            task.cancel()
        await asyncio.gather(*self._pumps, self._watch, return_exceptions=True)
        await self._teardown.aclose()
        self._ended.set()


def make_run_dir(base: Path, box_id: str, uid: int) -> Path:
    """The host side of ``/run/soulbox``: owned by the box's host uid so envd can make its socket."""
    path = base / f"soulbox-box-{box_id}"
    path.mkdir(mode=0o700)
    os.chown(path, uid, uid)
    return path


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
