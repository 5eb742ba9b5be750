"""cgroup v2: one directory per sandbox in the unified hierarchy.

Controllers must be enabled top-down (``cgroup.subtree_control``) and, below
the root, a cgroup with enabled children may hold no processes itself. When
the parent is under the worker's own cgroup (a systemd unit with
``Delegate=yes``, a container's own cgroup namespace), the worker's processes
first move into a leaf ``soulbox-worker`` beside the sandboxes, as systemd's
delegation rules ask and as docker-in-docker does. ``memory.oom.group`` makes
an OOM kill take the whole sandbox, ``cgroup.kill`` (Linux 5.14+) kills it at
once, ``memory.peak`` (5.19+) gives the peak.
"""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.logging import get_logger

from .cgroup import (
    CPU_PERIOD_US,
    CgroupLimits,
    CgroupMount,
    CgroupStats,
    CgroupUsage,
    cgroup_dir,
    collect_stale,
    kill_all,
    parent_dir,
    read_io,
    read_keyed,
    read_pids,
    remove_dirs,
    write,
)
from .errors import SandboxUnavailable

log = get_logger(__name__)

REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu", "io")
WORKER_LEAF = "soulbox-worker"


@dataclass(slots=True)
class SandboxCgroupV2:
    name: str
    path: Path

    def attach(self, pid: int) -> None:
        write(self.path / "cgroup.procs", str(pid))

    def stats(self) -> CgroupStats:
        events = read_keyed(self.path / "memory.events")
        peak_file = self.path / "memory.peak"
        peak = int(peak_file.read_text()) if peak_file.exists() else None
        pids_hits = read_keyed(self.path / "pids.events").get("max", 0)
        return CgroupStats(
            oom_kills=events.get("oom_kill"),
            memory_limit_hits=events.get("max", 0),
            peak_memory_bytes=peak,
            pids_limit_hits=pids_hits,
        )

    def pids(self) -> list[int]:
        return read_pids(self.path / "cgroup.procs")

    def usage(self) -> CgroupUsage:
        cpu = read_keyed(self.path / "cpu.stat").get("usage_usec")
        stat = self.path / "io.stat"
        io = read_io(stat.read_text()) if stat.exists() else None
        return CgroupUsage(
            cpu_ns=cpu * 1000 if cpu is not None else None,
            memory_bytes=int((self.path / "memory.current").read_text()),
            io_read_bytes=io[0] if io is not None else None,
            io_write_bytes=io[1] if io is not None else None,
        )

    def freeze(self, frozen: bool) -> None:
        write(self.path / "cgroup.freeze", "1" if frozen else "0")

    def frozen(self) -> bool:
        return read_keyed(self.path / "cgroup.events").get("frozen") == 1

    def kill(self) -> None:
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            try:
                write(kill_file, "1")
                return
            except FileNotFoundError:
                return
        kill_all(self.path / "cgroup.procs")

    def remove(self) -> bool:
        return remove_dirs((self.path,))


class CgroupV2:
    version = 2

    def __init__(self, parent: Path, controllers: tuple[str, ...]) -> None:
        self._parent = parent
        self._controllers = controllers
        self.parents: tuple[Path, ...] = (parent,)

    @classmethod
    def setup(cls, mount: CgroupMount, own: str, parent: str | None, instance: str) -> CgroupV2:
        if own.rstrip("/").endswith("/" + WORKER_LEAF):  # we moved ourselves here before
            own = own.rstrip("/").rsplit("/", 1)[0] or "/"
        own_dir = cgroup_dir(mount, own)
        collect_stale(parent_dir(mount, own, parent))
        target = parent_dir(mount, own, parent) / instance
        top = own_dir if target.is_relative_to(own_dir) else mount.path
        available = (top / "cgroup.controllers").read_text().split()
        missing = [c for c in REQUIRED if c not in available]
        if missing:
            raise SandboxUnavailable(
                f"cgroup v2 controllers {', '.join(missing)} are not delegated to {top} "
                "(run the worker in a cgroup with them, e.g. a systemd unit with Delegate=yes)"
            )
        controllers = tuple(c for c in (*REQUIRED, *OPTIONAL) if c in available)
        path = top
        for part in target.relative_to(top).parts:
            _enable(path, controllers, own_dir)
            path = path / part
            path.mkdir(exist_ok=True)
        _enable(target, controllers, own_dir)
        log.debug("cgroup.v2", parent=str(target), controllers=controllers)
        return cls(target, controllers)

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroupV2:
        path = self._parent / name
        path.mkdir()
        cgroup = SandboxCgroupV2(name, path)
        try:
            write(path / "memory.max", str(limits.memory_bytes))
            if (path / "memory.swap.max").exists():
                write(path / "memory.swap.max", "0")
            if (path / "memory.oom.group").exists():
                write(path / "memory.oom.group", "1")
            write(path / "pids.max", str(limits.pids_max))
            if "cpu" in self._controllers and limits.cpu_quota > 0:
                write(path / "cpu.max", f"{max(1000, int(limits.cpu_quota * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def close(self) -> None:
        remove_dirs(self.parents)


def _enable(path: Path, controllers: tuple[str, ...], own_dir: Path) -> None:
    """Enable ``controllers`` for the children of ``path``, evacuating our own cgroup if needed."""
    wanted = " ".join(f"+{c}" for c in controllers)
    try:
        write(path / "cgroup.subtree_control", wanted)
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY or path != own_dir:
            raise SandboxUnavailable(f"cannot enable {controllers} in {path}: {exc}") from exc
    # Our cgroup holds processes (the worker): move them all into a leaf, then retry.
    leaf = path / WORKER_LEAF
    leaf.mkdir(exist_ok=True)
    for pid in read_pids(path / "cgroup.procs"):
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            write(leaf / "cgroup.procs", str(pid))
    log.info("cgroup.v2.evacuated", cgroup=str(path), leaf=str(leaf))
    write(path / "cgroup.subtree_control", wanted)
