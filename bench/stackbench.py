"""What the whole-stack benchmarks share: a private stack, lean HTTP clients, a bare HTTP floor, CPU accounting.

* :func:`start_stack` runs ``soulbox up`` on free ports in a temp dir (own NATS).
* :class:`LeanClient` is a blocking HTTP/1.1 keep-alive client over one socket
  (a few microseconds a request) so sequential latency measures the server, not
  the client library (httpx's sync client adds ~0.3-0.5 ms a request here).
* :func:`request_rate` is the same idea for concurrent load, on asyncio.
* :func:`bare_http_server` serves ``hello`` from uvicorn + Starlette with the
  gateway's server settings: the floor any Python HTTP gateway starts from.
* :class:`CpuMeter` reads each stack process's CPU time from ``/proc`` so a run
  can say where the CPU of one invocation goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from soulbox.core.natsserver import free_port

# How each stack process is recognised in `ps` output: (label, command-line fragment).
PROCESSES = (
    ("gateway", "soulbox.gateway"),
    ("scheduler", "soulbox.scheduler"),
    ("worker", "soulbox.runtimes.worker"),
    ("events", "soulbox.events"),
    ("triggers", "soulbox.triggers"),
    ("nats-server", "nats-server"),
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """``n`` calls of ``fn``, each in milliseconds."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def start_stack(root: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """``soulbox up`` in ``root`` (its own NATS, free ports); the process and the gateway's URL."""
    port = free_port()
    log = open(root / "up.log", "wb")  # noqa: SIM115
    env = dict(os.environ, SOULBOX_LOG_LEVEL="warning", SOULBOX_EVENTS__METRICS_PORT=str(free_port()))
    soulbox = str(Path(sys.executable).parent / "soulbox")
    process = subprocess.Popen(
        [
            soulbox,
            "up",
            "--data-dir",
            str(root / "data"),
            "--port",
            str(port),
            "--nats-port",
            str(free_port()),
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a loaded machine starts slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((root / "up.log").read_text())
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                time.sleep(1.0)  # workers' first heartbeats
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)  # never leave a half-started stack running
    process.wait(30)
    raise TimeoutError("stack did not become ready")


class LeanClient:
    """One keep-alive HTTP/1.1 connection; requests without a body or with a small one, Content-Length replies."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._host = host
        self._sock = socket.create_connection((host, int(port)))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: {len(body)}\r\n\r\n"
        self._sock.sendall(head.encode() + body)
        status = int(self._file.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := self._file.readline()) not in (b"\r\n", b""):
            key, value = line.decode().split(":", 1)
            headers[key.strip().lower()] = value.strip()
        return status, headers, self._file.read(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self._file.close()
        self._sock.close()


async def request_rate(url: str, method: str, path: str, total: int, concurrency: int) -> float:
    """Requests per second from a lean HTTP/1.1 client (so the load generator leaves the CPU to the server)."""
    host, port = url.removeprefix("http://").split(":")
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
    remaining = total

    async def connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, int(port))
        while remaining > 0:
            remaining -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


BARE_APP = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    async def hello(request):
        await request.body()
        return Response(b"hello", media_type="application/octet-stream")
    app = Starlette(routes=[Route("/", hello, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http="httptools", access_log=False)
    """
)


@contextlib.contextmanager
def bare_http_server() -> Iterator[str]:
    """uvicorn + Starlette answering ``hello`` on ``/``: the Python HTTP floor; yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per stack process (by :data:`PROCESSES` label) between :meth:`start` and :meth:`stop`."""

    def __init__(self, stack: subprocess.Popen[bytes]) -> None:
        self._pids = self._find(stack.pid)
        self._before: dict[str, float] = {}

    @staticmethod
    def _find(root: int) -> dict[str, list[int]]:
        """The stack's processes: ``root`` and its descendants, by label."""
        ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True, check=True).stdout
        parents: dict[int, int] = {}
        args: dict[int, str] = {}
        for line in ps.splitlines()[1:]:
            pid, ppid, command = line.split(None, 2)
            parents[int(pid)], args[int(pid)] = int(ppid), command
        found: dict[str, list[int]] = {}
        for pid, command in args.items():
            ancestor = pid
            while ancestor not in (root, 0, 1) and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor != root:
                continue
            for label, fragment in PROCESSES:
                if fragment in command:
                    found.setdefault(label, []).append(pid)
                    break
        return found

    def _now(self) -> dict[str, float]:
        return {label: sum(_cpu_seconds(pid) for pid in pids) for label, pids in self._pids.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds used by each labelled process since :meth:`start`."""
        now = self._now()
        return {label: now[label] - self._before.get(label, 0.0) for label in now}
