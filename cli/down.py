"""``soulbox down``: stop a stack that ``soulbox up`` runs in another terminal.

The supervisor gets SIGTERM and stops its children itself, in order. If it
is gone already (killed with SIGKILL, say), the children it recorded are
stopped here, in reverse start order, each by its process group.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from rich.console import Console

from .state import ProcessRef, read_state, state_path


def wait_gone(ref: ProcessRef, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while ref.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(ref: ProcessRef, timeout: float, *, group: bool) -> bool:
    """SIGTERM, then SIGKILL after ``timeout`` s; False if it still lives after that."""
    ref.signal(signal.SIGTERM, group=group)
    if wait_gone(ref, timeout):
        return True
    ref.signal(signal.SIGKILL, group=group)
    return wait_gone(ref, 5.0)


def stop_stack(data_dir: Path, *, timeout: float, console: Console) -> int:
    """Stop the stack recorded in ``data_dir``; the exit code (0 also when nothing runs)."""
    state = read_state(data_dir)
    if state is None:
        console.print(f"SoulBox is not running from {data_dir}", markup=False)
        return 0
    if state.supervisor.alive():
        console.print(f"stopping SoulBox (supervisor pid {state.supervisor.pid})…")
        if not terminate(state.supervisor, timeout, group=False):
            console.print(f"[red]error:[/] supervisor pid {state.supervisor.pid} does not exit")
            return 1
    left = [(c.name, c.process) for c in reversed(state.children) if c.process is not None and c.process.alive()]
    failed = []
    for name, process in left:
        console.print(f"stopping leftover {name} (pid {process.pid})")
        if not terminate(process, timeout, group=True):
            failed.append(name)
    if failed:
        console.print(f"[red]error:[/] could not stop {', '.join(failed)}")
        return 1
    state_path(data_dir).unlink(missing_ok=True)
    console.print("SoulBox stopped.")
    return 0
