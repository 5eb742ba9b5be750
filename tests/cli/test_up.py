"""``soulbox up``, ``status`` and ``down`` as real processes, with the real components."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soulbox.cli.state import StackState, pid_alive, read_state
from soulbox.core.natsserver import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("soulbox.gateway.__main__") is None,
        reason="the gateway component (soulbox.gateway.__main__) does not exist yet",
    ),
]


class Up:
    """A ``soulbox up`` in its own session, its output in files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.env = dict(os.environ, SOULBOX_EMBEDDED_NATS__MONITOR_PORT=str(free_port()), SOULBOX_LOG_FORMAT="json")
        self.args = [
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--nats-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--workers",
            "2",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "up.out").open("wb") as out, (self.root / "up.err").open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "soulbox.cli", "up", *self.args],
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "soulbox.cli", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=90,
            check=False,
        )

    def output(self) -> str:
        return (self.root / "up.out").read_text() + (self.root / "up.err").read_text()

    def state(self) -> StackState:
        state = read_state(self.data_dir)
        assert state is not None
        return state

    def wait(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process is not None and self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def cleanup(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            state = read_state(self.data_dir)
            self.process.kill()
            for child in [] if state is None else state.children:
                if child.process is not None:
                    child.process.signal(signal.SIGKILL, group=True)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    stack = Up(tmp_path)
    stack.start()
    try:
        yield stack
    finally:
        stack.cleanup()


def ready(up: Up) -> bool:
    state = read_state(up.data_dir)
    return state is not None and state.ready


def pids(state: StackState) -> dict[str, int]:
    return {c.name: c.process.pid for c in state.children if c.process is not None}


def restarts(state: StackState, name: str) -> int:
    count: int = next(c.restarts for c in state.children if c.name == name)
    return count


def stopped_order(output: str) -> list[str]:
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [e["child"] for e in events if e.get("event") == "child.stopped"]


def test_up_status_restart_and_down(up: Up) -> None:
    up.wait(lambda: ready(up))
    state = up.state()
    assert [c.name for c in state.children] == [
        "nats",
        "events",
        "worker-1",
        "worker-2",
        "scheduler",
        "triggers",
        "gateway",
    ]
    assert state.urls.gateway == f"http://127.0.0.1:{up.port}"
    assert "SoulBox is up" in up.output() and f"{state.urls.gateway}/v1/functions" in up.output()

    status = up.cli("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report: dict[str, Any] = json.loads(status.stdout)
    assert report["up"] and report["gateway_ready"] and report["nats_reachable"]
    assert sorted(w["id"] for w in report["workers"] if w["live"]) == sorted(state.worker_ids)
    streams = {s["name"]: s for s in report["streams"]}
    assert {c["name"] for c in streams["SB_EVENTS"]["consumers"]} == {"events"}

    second = up.cli("up")
    assert second.returncode == 1 and "already runs" in second.stdout

    worker = pids(state)["worker-1"]
    os.kill(worker, signal.SIGKILL)
    up.wait(lambda: pids(up.state())["worker-1"] != worker and restarts(up.state(), "worker-1") == 1)
    up.wait(lambda: up.cli("status").returncode == 0)
    assert '"child.restarted"' in up.output()

    everything = pids(up.state())
    down = up.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert up.process is not None and up.process.wait(30) == 0
    assert not any(pid_alive(pid) for pid in everything.values())
    assert read_state(up.data_dir) is None
    order = stopped_order(up.output())
    assert order[:3] == ["gateway", "triggers", "scheduler"] and order[-1] == "nats"
    assert set(order[3:5]) == {"worker-1", "worker-2"} and order[5] == "events"
    assert up.cli("status").returncode == 1


def test_sigint_stops_the_stack_cleanly(up: Up) -> None:
    up.wait(lambda: ready(up))
    everything = pids(up.state())
    assert up.process is not None
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(30) == 0
    assert not any(pid_alive(pid) for pid in everything.values())
    assert stopped_order(up.output())[-1] == "nats"
