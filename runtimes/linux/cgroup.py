"""Per-sandbox cgroups: what both hierarchies provide, and which one this host has.

A :class:`CgroupDriver` makes one :class:`SandboxCgroup` per sandbox under
``<parent>/<instance>``: the parent (``linux.cgroup_parent``, absolute from
the hierarchy's root or relative to the worker's own cgroup; by default
``<own>/soulbox-sandboxes``, so the worker's own accounting and limits still
cover its sandboxes) is shared and stays; the instance directory belongs to
one driver, which removes it on close — two workers never race on a rmdir. The
sandbox cgroup caps memory (no swap), tasks and CPU time, reports OOM kills
and the memory peak, kills everything in it, and is removed after the run.

The hierarchy is detected at run time from ``/proc/self/mountinfo``: when the
memory controller is mounted as cgroup v1 (legacy or hybrid hosts) the v1
driver is used, otherwise the cgroup v2 unified hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import SandboxUnavailable

DEFAULT_PARENT_NAME = "soulbox-sandboxes"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    memory_bytes: int
    pids_max: int
    cpu_quota: float  # cores; 0 means unlimited


@dataclass(frozen=True, slots=True)
class CgroupStats:
    oom_kills: int | None  # None: this kernel does not count them
    memory_limit_hits: int
    peak_memory_bytes: int | None  # None: this kernel does not record it
    pids_limit_hits: int

    def oom_killed(self, exit_code: int | None) -> bool:
        """Whether the kernel's OOM killer ended something in the sandbox."""
        if self.oom_kills is not None:
            return self.oom_kills > 0
        return self.memory_limit_hits > 0 and exit_code == 128 + signal.SIGKILL


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    cpu_ns: int | None  # CPU time used so far; None: no CPU accounting on this host
    memory_bytes: int  # memory charged now (RSS, page cache, tmpfs)
    io_read_bytes: int | None = None  # block device bytes read so far; None: no I/O accounting here
    io_write_bytes: int | None = None  # and written (tmpfs writes are memory, not I/O)


class SandboxCgroup(Protocol):
    name: str

    def attach(self, pid: int) -> None:
        """Move ``pid`` (and so everything it forks later) into the cgroup."""

    def stats(self) -> CgroupStats: ...

    def pids(self) -> list[int]: ...

    def usage(self) -> CgroupUsage: ...

    def freeze(self, frozen: bool) -> None:
        """Ask the kernel to stop (or restart) every task; it takes effect asynchronously."""

    def frozen(self) -> bool:
        """Whether every task is stopped now."""

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""

    def remove(self) -> bool:
        """Delete the cgroup; False while processes are still leaving it."""


class CgroupDriver(Protocol):
    version: int
    parents: tuple[Path, ...]

    def create(self, name: str, limits: CgroupLimits) -> SandboxCgroup: ...

    def close(self) -> None:
        """Remove this driver's instance cgroups (empty once every sandbox is removed)."""


@dataclass(frozen=True, slots=True)
class CgroupMount:
    path: Path  # where it is mounted
    root: str  # which cgroup of the hierarchy the mount point shows
    version: int
    controllers: frozenset[str]  # v1: the controllers of this hierarchy


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, extra = fields.split(), tail.split()
        if len(parts) < 5 or len(extra) < 3 or extra[0] not in ("cgroup", "cgroup2"):
            continue
        path = Path(parts[4].replace("\\040", " "))
        if extra[0] == "cgroup2":
            mounts.append(CgroupMount(path, parts[3], 2, frozenset()))
        else:
            mounts.append(CgroupMount(path, parts[3], 1, frozenset(extra[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path; the v2 entry has the key ``""``."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own[controller.removeprefix("name=")] = path
    return own


def cgroup_dir(mount: CgroupMount, path: str) -> Path:
    """The directory of cgroup ``path`` (as /proc shows it) under ``mount``."""
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        path = path[len(mount.root) :]
    return mount.path / path.lstrip("/")


def parent_dir(mount: CgroupMount, own: str, parent: str | None) -> Path:
    """Where sandbox cgroups go: ``parent`` from the hierarchy root if absolute, else from our own cgroup."""
    if parent is not None and parent.startswith("/"):
        return mount.path / parent.strip("/")
    return cgroup_dir(mount, own) / (parent or DEFAULT_PARENT_NAME)


def write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` lines) as a dict."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def read_io(lines: str) -> tuple[int, int]:
    """Bytes read and written over all devices in v2's ``io.stat`` (or v1's ``blkio.*io_service_bytes``)."""
    read = written = 0
    for line in lines.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in ("Read", "Write") and fields[2].isdigit():  # v1: "8:0 Read 4096"
            if fields[1] == "Read":
                read += int(fields[2])
            else:
                written += int(fields[2])
            continue
        for field in fields[1:]:  # v2: "8:0 rbytes=4096 wbytes=0 rios=1 ..."
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                written += int(value)
    return read, written


def process_io(pids: list[int]) -> tuple[int, int]:
    """Storage bytes read and written by ``pids`` and the children they reaped (``/proc/<pid>/io``).

    The sandbox's pid 1 reaps every orphan, so a box's exited processes stay counted.
    """
    read = written = 0
    for pid in pids:
        try:
            fields = read_keyed_colon(Path(f"/proc/{pid}/io"))
        except OSError:  # exited meanwhile
            continue
        read += fields.get("read_bytes", 0)
        written += fields.get("write_bytes", 0)
    return read, written


def read_keyed_colon(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def read_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def kill_all(procs_file: Path) -> None:
    for pid in read_pids(procs_file):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_dirs(dirs: tuple[Path, ...]) -> bool:
    done = True
    for path in dirs:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: tasks are still exiting
            done = False
    return done


INSTANCE = re.compile(r"w(\d+)-[0-9a-f]{6}")


def collect_stale(shared: Path) -> None:
    """Remove the (empty) instance cgroups of workers that died without closing their driver."""
    if not shared.is_dir():
        return
    for entry in shared.iterdir():
        match = INSTANCE.fullmatch(entry.name)
        if match is None or not entry.is_dir() or _alive(int(match.group(1))):
            continue
        remove_dirs((*(child for child in entry.iterdir() if child.is_dir()), entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def detect(parent: str | None = None) -> CgroupDriver:
    """The driver for this host's hierarchy, with its instance cgroups made and delegated."""
    from .cgroup_v1 import CgroupV1
    from .cgroup_v2 import CgroupV2

    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    instance = f"w{os.getpid()}-{secrets.token_hex(3)}"
    v1 = {c: m for m in mounts if m.version == 1 for c in m.controllers}
    if "memory" in v1:
        return CgroupV1.setup(v1, own, parent, instance)
    v2 = [m for m in mounts if m.version == 2]
    if v2:
        return CgroupV2.setup(v2[0], own.get("", "/"), parent, instance)
    raise SandboxUnavailable("no cgroup hierarchy with the memory controller is mounted")
