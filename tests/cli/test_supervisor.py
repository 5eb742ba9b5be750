"""The process class of ``soulbox up`` against real (tiny) child processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from soulbox.cli.state import ProcessRef, pid_alive
from soulbox.cli.supervisor import Backoff, Child, ChildSpec, Supervisor

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def graceful(name: str, journal: Path, *, linger: float = 0.0) -> tuple[str, ...]:
    """A child that notes when SIGTERM arrives, lingers, and exits 0; it says when it is ready."""
    return python(
        "import signal, sys, time\n"
        f"journal = {str(journal)!r}\n"
        "def on_term(*_):\n"
        f"    open(journal, 'a').write(f'{name} {{time.monotonic()}}\\n')\n"
        f"    time.sleep({linger})\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        f"open(journal + '.ready', 'a').write('{name}\\n')\n"
        "time.sleep(60)\n"
    )


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, cap=10.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_a_crashing_child_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    spawned: list[float] = []
    backoff = Backoff(initial=0.1, factor=2.0, cap=0.4, healthy_after=60.0)
    child = Child(
        ChildSpec("crash", python("import sys; sys.exit(3)")),
        log_dir=tmp_path,
        backoff=backoff,
        on_spawn=lambda _: spawned.append(time.monotonic()),
    )
    await child.start()
    await eventually(lambda: child.restarts >= 4)
    await child.stop(timeout=1.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(spawned)]
    # Each gap is the child's run time plus the backoff: at least the delay, and the cap holds.
    for n, gap in enumerate(gaps[:4], start=1):
        assert gap >= backoff.delay(n)
    assert gaps[3] < backoff.cap + 1.0
    assert child.last_exit == 3


async def test_a_healthy_run_resets_the_backoff(tmp_path: Path) -> None:
    # Without the reset, the third restart would wait 0.05 * 20**2 = 20 s.
    backoff = Backoff(initial=0.05, factor=20.0, cap=30.0, healthy_after=0.2)
    child = Child(
        ChildSpec("flaky", python("import time; time.sleep(0.3); raise SystemExit(1)")),
        log_dir=tmp_path,
        backoff=backoff,
    )
    await child.start()
    await eventually(lambda: child.restarts >= 3, timeout=5.0)
    await child.stop(timeout=1.0)


async def test_a_stopped_child_stays_stopped_and_its_log_is_kept(tmp_path: Path) -> None:
    child = Child(
        ChildSpec("talker", python("print('hello', flush=True); import time; time.sleep(60)")), log_dir=tmp_path
    )
    await child.start()
    await eventually(lambda: b"hello" in (tmp_path / "talker.log").read_bytes())
    pid = child.pid
    assert pid is not None and child.running
    assert await child.stop(timeout=5.0) == -15
    await asyncio.sleep(0.3)
    assert not child.running and child.restarts == 0 and child.pid == pid
    assert not pid_alive(pid)


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = Child(ChildSpec("stubborn", python(code)), log_dir=tmp_path)
    await child.start()
    await eventually(lambda: b"ready" in (tmp_path / "stubborn.log").read_bytes())
    started = time.monotonic()
    assert await child.stop(timeout=0.3) == -9
    assert time.monotonic() - started < 3.0


async def test_stop_during_the_backoff_does_not_wait_for_it(tmp_path: Path) -> None:
    child = Child(ChildSpec("crash", python("raise SystemExit(1)")), log_dir=tmp_path, backoff=Backoff(initial=30.0))
    await child.start()
    await eventually(lambda: child.last_exit == 1)
    started = time.monotonic()
    await child.stop(timeout=1.0)
    assert time.monotonic() - started < 1.0 and child.restarts == 0


async def test_stop_reaches_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    child = Child(ChildSpec("parent", python(code)), log_dir=tmp_path)
    await child.start()
    await eventually(lambda: pidfile.exists() and pidfile.read_text() != "")
    grandchild = int(pidfile.read_text())
    await child.stop(timeout=5.0)
    await eventually(lambda: not pid_alive(grandchild), timeout=5.0)


async def test_echo_gets_each_line_and_the_log_file_everything(tmp_path: Path) -> None:
    lines: list[tuple[str, bytes]] = []
    child = Child(
        ChildSpec("echo", python("print('one'); print('two', end='')")),
        log_dir=tmp_path,
        echo=lambda name, line: lines.append((name, line)),
        backoff=Backoff(initial=30.0),
    )
    await child.start()
    await eventually(lambda: child.last_exit == 0)
    await child.stop(timeout=1.0)
    assert lines == [("echo", b"one"), ("echo", b"two")]
    assert (tmp_path / "echo.log").read_bytes() == b"one\ntwo"


async def test_children_stop_in_reverse_order_and_a_group_together(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    supervisor = Supervisor(log_dir=tmp_path)
    await supervisor.start(ChildSpec("nats", graceful("nats", journal)))
    await supervisor.start(ChildSpec("worker-1", graceful("worker-1", journal, linger=0.5), group="workers"))
    await supervisor.start(ChildSpec("worker-2", graceful("worker-2", journal, linger=0.5), group="workers"))
    await supervisor.start(ChildSpec("gateway", graceful("gateway", journal)))
    ready = Path(f"{journal}.ready")
    await eventually(lambda: ready.exists() and len(ready.read_text().split()) == 4)
    assert [[c.name for c in group] for group in supervisor.stop_order()] == [
        ["gateway"],
        ["worker-1", "worker-2"],
        ["nats"],
    ]
    await supervisor.stop_all(timeout=5.0)
    entries = [line.split() for line in journal.read_text().splitlines()]
    order = [name for name, _ in entries]
    at = {name: float(t) for name, t in entries}
    assert order[0] == "gateway" and set(order[1:3]) == {"worker-1", "worker-2"} and order[3] == "nats"
    assert abs(at["worker-1"] - at["worker-2"]) < 0.4  # signalled together, not one after the other
    assert at["nats"] - max(at["worker-1"], at["worker-2"]) >= 0.45  # only once both workers had exited
    assert all(not child.running for child in supervisor.children)


async def test_a_command_that_cannot_run_is_not_kept(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path)
    with pytest.raises(OSError):
        await supervisor.start(ChildSpec("child", (str(tmp_path / "no-such-binary"),)))
    assert supervisor.children == []
    await supervisor.start(ChildSpec("child", SLEEPER))
    with pytest.raises(ValueError, match="duplicate"):
        await supervisor.start(ChildSpec("child", SLEEPER))
    await supervisor.stop_all(timeout=5.0)


def test_pid_alive_tells_a_reused_pid_apart() -> None:
    me = ProcessRef.of(os.getpid())
    assert me.alive()
    if me.start_ticks is not None:
        assert not ProcessRef(pid=me.pid, start_ticks=me.start_ticks + 1).alive()
