"""A whole SoulBox stack as real processes, for end-to-end tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from soulbox.core.natsserver import NatsServer, free_port

NATS_CONFIG = Path(__file__).resolve().parents[1] / "infra" / "nats.conf"


class Stack:
    def __init__(self, root: Path, *, workers: int = 1, triggers: int = 1, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.nats = NatsServer(root / "nats", log_file=root / "nats.log", config=NATS_CONFIG)
        self.gateway_port = free_port()
        self.metrics_port = free_port()
        self.scheduler_metrics_port = free_port()
        self.worker_metrics_ports: dict[str, int] = {}
        self.workers = workers
        self.triggers = triggers
        self.extra_env = env or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SOULBOX_NATS__URLS": json.dumps([self.nats.url]),
                "SOULBOX_DATA_DIR": str(self.root / "data"),
                "SOULBOX_GATEWAY__PORT": str(self.gateway_port),
                "SOULBOX_EVENTS__METRICS_PORT": str(self.metrics_port),
                "SOULBOX_SCHEDULER__METRICS_PORT": str(self.scheduler_metrics_port),
                "SOULBOX_WORKER__HEARTBEAT_INTERVAL_S": "0.2",
                "SOULBOX_WORKER__HEARTBEAT_TTL_S": "1.0",
                "SOULBOX_LOG_LEVEL": "info",
                # Kept between runs (the data-science env takes a while to build); reachable by sandbox uids.
                "SOULBOX_SANDBOXES__TEMPLATES_DIR": "/var/tmp/soulbox-test-templates",
            }
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def spawn(self, name: str, *module_args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args], env=self.env(**env), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes[name] = process
        return process

    def start_worker(self, worker_id: str) -> subprocess.Popen[bytes]:
        port = self.worker_metrics_ports.setdefault(worker_id, free_port())
        return self.spawn(
            worker_id, "soulbox.runtimes.worker", SOULBOX_WORKER__ID=worker_id, SOULBOX_WORKER__METRICS_PORT=str(port)
        )

    def start(self) -> None:
        """Start every process and wait until the stack serves; a stack that never gets ready is stopped."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.nats.start()
            self.spawn("gateway", "soulbox.gateway")
            self.spawn("scheduler", "soulbox.scheduler")
            for i in range(self.workers):
                self.start_worker(f"worker-{i}")
            self.spawn("events", "soulbox.events", "run")
            for i in range(self.triggers):
                self.spawn(f"triggers-{i}", "soulbox.triggers")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 180.0) -> None:  # a shared, loaded box starts slowly
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200 and self.live_workers():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("stack not ready:\n" + "\n".join(self.log(n)[-2000:] for n in self.processes))

    def live_workers(self) -> list[dict[str, object]]:
        from tests.stack_nats import heartbeats

        return heartbeats(self.nats.url)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.nats.stop()
