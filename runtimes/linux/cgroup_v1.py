"""cgroup v1: one directory per controller (memory and pids required, cpu when mounted).

OOM kills are read from ``memory.oom_control`` (``oom_kill``, Linux 4.13+),
the peak from ``memory.max_usage_in_bytes``; swap is closed by setting
``memory.memsw.limit_in_bytes`` to the memory limit where swap accounting exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.logging import get_logger

from .cgroup import (
    CPU_PERIOD_US,
    CgroupLimits,
    CgroupMount,
    CgroupStats,
    CgroupUsage,
    collect_stale,
    kill_all,
    parent_dir,
    process_io,
    read_keyed,
    read_pids,
    remove_dirs,
    write,
)
from .errors import SandboxUnavailable

log = get_logger(__name__)

REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu", "cpuacct", "freezer")


@dataclass(slots=True)
class SandboxCgroupV1:
    name: str
    dirs: dict[str, Path]  # controller -> this sandbox's directory

    def attach(self, pid: int) -> None:
        for path in self.dirs.values():
            write(path / "cgroup.procs", str(pid))

    def stats(self) -> CgroupStats:
        memory = self.dirs["memory"]
        oom = read_keyed(memory / "memory.oom_control").get("oom_kill")  # absent before Linux 4.13
        limit_hits = int((memory / "memory.failcnt").read_text())
        peak = int((memory / "memory.max_usage_in_bytes").read_text())
        events = self.dirs["pids"] / "pids.events"
        pids_hits = read_keyed(events).get("max", 0) if events.exists() else 0
        return CgroupStats(
            oom_kills=oom, memory_limit_hits=limit_hits, peak_memory_bytes=peak, pids_limit_hits=pids_hits
        )

    def pids(self) -> list[int]:
        return sorted({pid for path in self.dirs.values() for pid in read_pids(path / "cgroup.procs")})

    def usage(self) -> CgroupUsage:
        cpu = self.dirs.get("cpuacct")
        # Not blkio.throttle.io_service_bytes: on 6.x kernels it stays at 0 unless a throttle limit is set.
        io = process_io(self.pids())
        return CgroupUsage(
            cpu_ns=int((cpu / "cpuacct.usage").read_text()) if cpu is not None else None,
            memory_bytes=int((self.dirs["memory"] / "memory.usage_in_bytes").read_text()),
            io_read_bytes=io[0],
            io_write_bytes=io[1],
        )

    def freeze(self, frozen: bool) -> None:
        write(self._freezer() / "freezer.state", "FROZEN" if frozen else "THAWED")

    def frozen(self) -> bool:
        return (self._freezer() / "freezer.state").read_text().strip() == "FROZEN"

    def _freezer(self) -> Path:
        freezer = self.dirs.get("freezer")
        if freezer is None:
            raise SandboxUnavailable("the cgroup v1 freezer controller is not mounted")
        return freezer

    def kill(self) -> None:
        for path in self.dirs.values():
            kill_all(path / "cgroup.procs")
        freezer = self.dirs.get("freezer")
        if freezer is not None:  # v1 holds signals of frozen tasks until they thaw
            with contextlib.suppress(FileNotFoundError):
                write(freezer / "freezer.state", "THAWED")

    def remove(self) -> bool:
        return remove_dirs(tuple(self.dirs.values()))


class CgroupV1:
    version = 1

    def __init__(self, parents: dict[str, Path]) -> None:
        self._parents = parents
        self.parents: tuple[Path, ...] = tuple(parents.values())

    @classmethod
    def setup(
        cls, mounts: Mapping[str, CgroupMount], own: Mapping[str, str], parent: str | None, instance: str
    ) -> CgroupV1:
        missing = [c for c in REQUIRED if c not in mounts]
        if missing:
            raise SandboxUnavailable(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
        parents = {}
        for controller in (*REQUIRED, *(c for c in OPTIONAL if c in mounts)):
            mount = mounts[controller]
            shared = parent_dir(mount, own.get(controller, "/"), parent)
            collect_stale(shared)
            path = shared / instance
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SandboxUnavailable(f"cannot create cgroup {path}: {exc}") from exc
            parents[controller] = path
        log.debug("cgroup.v1", parents={c: str(p) for c, p in parents.items()})
        return cls(parents)

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroupV1:
        dirs: dict[str, Path] = {}
        cgroup = SandboxCgroupV1(name, dirs)
        try:
            for controller, parent in self._parents.items():
                path = parent / name
                path.mkdir()
                dirs[controller] = path
            memory = dirs["memory"]
            write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            write(dirs["pids"] / "pids.max", str(limits.pids_max))
            if "cpu" in dirs and limits.cpu_quota > 0:
                write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                write(dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_quota * CPU_PERIOD_US))))
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    def close(self) -> None:
        remove_dirs(self.parents)
