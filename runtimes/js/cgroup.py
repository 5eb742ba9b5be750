"""A memory cgroup per runtime process, when the host lets us make one.

The kernel then enforces the limit exactly (an allocation past it gets the
process OOM-killed) and reports the true peak, where the RSS watchdog can
only sample. Both hierarchies are supported: v2 (``memory.max``,
``memory.peak``, ``memory.events``) and v1 (``memory.limit_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.oom_control``). The limit is set
once the shim is connected: ``usage + memory_mb``, so the runtime's own
boot does not count against the function.

:func:`find_parent` locates a writable directory under the worker's own
cgroup; without one the tier falls back to the RSS watchdog alone. The
memory cgroup of the Linux sandbox tier should take this over once it lands.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from soulbox.core.logging import get_logger

log = get_logger(__name__)

_V2_FILES = {"limit": "memory.max", "usage": "memory.current", "peak": "memory.peak"}
_V1_FILES = {"limit": "memory.limit_in_bytes", "usage": "memory.usage_in_bytes", "peak": "memory.max_usage_in_bytes"}


def find_parent(name: str = "soulbox-js") -> Path | None:
    """A writable memory cgroup ``<name>/<pid>`` under this process's own, or None.

    Each worker process gets its own directory, so workers on one host never
    touch each other's cgroups; those of dead workers are removed here.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/"))
        elif "memory" in controllers.split(","):
            candidates.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/"))
    for base in candidates:
        if not (base / _V2_FILES["limit"]).exists() and not (base / _V1_FILES["usage"]).exists():
            continue  # a v2 hierarchy without the memory controller here
        try:
            root = _make(base / name)
            _remove_dead_workers(root)
            parent = _make(root / str(os.getpid()))
            MemoryCgroup.create(parent).remove()  # can we make children?
        except OSError as exc:
            log.info("js.cgroup_unavailable", path=str(base / name), error=str(exc))
            continue
        return parent
    return None


def _make(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    if (path / "cgroup.subtree_control").exists():  # v2: delegate memory to the children
        (path / "cgroup.subtree_control").write_text("+memory")
    return path


def _remove_dead_workers(root: Path) -> None:
    for owner in root.iterdir():
        if not owner.name.isdigit() or Path(f"/proc/{owner.name}").exists():
            continue
        for child in owner.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            owner.rmdir()


class MemoryCgroup:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._files = _V2_FILES if (path / "memory.max").exists() else _V1_FILES
        self.baseline = 0
        self._fds: dict[str, int] = {}  # kept open: read and reset on every invocation

    def _fd(self, key: str) -> int:
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(self.path / self._files[key], os.O_RDWR)
        return fd

    @classmethod
    def create(cls, parent: Path) -> MemoryCgroup:
        path = parent / uuid.uuid4().hex[:16]
        path.mkdir()
        return cls(path)

    def _read(self, key: str) -> int:
        text = os.pread(self._fd(key), 64, 0).strip()
        return 0 if text == b"max" else int(text)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def usage(self) -> int:
        return self._read("usage")

    def limit_growth(self, limit: int) -> None:
        """Allow ``limit`` bytes over the current usage, which becomes the baseline."""
        self.baseline = self.usage()
        (self.path / self._files["limit"]).write_text(str(self.baseline + limit))

    def reset_peak(self) -> None:
        with contextlib.suppress(OSError):  # v2 before Linux 6.12 cannot reset memory.peak
            os.pwrite(self._fd("peak"), b"0", 0)

    def peak(self) -> int | None:
        try:
            return max(0, self._read("peak") - self.baseline)
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        name = "memory.events" if self._files is _V2_FILES else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def remove(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
