"""``<data_dir>/run/state.json``: what ``up`` is running, for ``status`` and ``down``.

Each pid is stored with its start time (``/proc/<pid>/stat``, where there is
one) so that a pid reused by an unrelated process is not mistaken for ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from soulbox.core.schemas import utcnow


class ProcessRef(BaseModel):
    pid: int
    start_ticks: int | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid=pid, start_ticks=start_ticks(pid))

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_ticks)

    def signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        """Send ``sig`` to the process (or its group) if it is still the one recorded."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)


class ChildState(BaseModel):
    name: str
    process: ProcessRef | None
    argv: list[str]
    log: Path
    restarts: int = 0


class Urls(BaseModel):
    gateway: str
    metrics: str
    nats: list[str]
    nats_monitor: str | None = None


class StackState(BaseModel):
    version: Literal[1] = 1
    supervisor: ProcessRef
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    data_dir: Path
    ready: bool = False
    embedded_nats: bool
    urls: Urls
    ports: dict[str, int]
    worker_ids: list[str]
    children: list[ChildState]


def state_path(data_dir: Path) -> Path:
    return data_dir / "run" / "state.json"


def read_state(data_dir: Path) -> StackState | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        return StackState.model_validate_json(state_path(data_dir).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def write_state(state: StackState) -> None:
    """Replace the state file atomically."""
    path = state_path(state.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(state.model_copy(update={"updated_at": utcnow()}).model_dump_json(indent=2))
    tmp.replace(path)


def remove_state(data_dir: Path, *, owner: int) -> None:
    """Remove the state file if it is still the one written by process ``owner``."""
    state = read_state(data_dir)
    if state is not None and state.supervisor.pid == owner:
        state_path(data_dir).unlink(missing_ok=True)


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[19])


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")


def pid_alive(pid: int, ticks: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _zombie(pid):
        return False
    return ticks is None or start_ticks(pid) in (None, ticks)
