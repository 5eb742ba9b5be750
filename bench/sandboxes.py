"""E2B-style sandboxes through the whole stack, next to the same daemon called directly, in one run.

Starts a stack (``tests/stack.py``: own nats-server, gateway, scheduler, one
worker with a warm pool) and measures with the official ``e2b`` SDK:

* create and kill, layer by layer: ``Sandbox.create()`` / ``Sandbox.kill()``
  (the SDK), the same E2B API calls as plain HTTP on a kept-alive connection
  (``POST /sandboxes``, ``DELETE /sandboxes/{id}``), a NATS request to the
  schedulers (placement + worker), and a NATS request straight to the worker;
  the pool refills between samples (so every create is a warm one), and with
  the pool empty (a sandbox started on demand);
* exec overhead: ``sandbox.commands.run("true")`` through gateway -> NATS
  tunnel -> worker -> envd, next to the same call against an envd process
  started on the host and reached directly over TCP (no sandbox, no control
  plane), and next to bare ``bwrap ... /bin/true`` (a fresh sandbox per call);
* file round trip: write + read of 1 MiB through the stack and directly;
* kill: ``sandbox.kill()``.

Run as root: ``.venv/bin/python bench/sandboxes.py [-n 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soulbox.core import names
from soulbox.core.codec import decode, encode
from soulbox.core.sandboxes import SandboxControl, SandboxCreate, SandboxReply
from tests.stack import Stack

KEY = "sb_bench_key"
BLOB = os.urandom(1 << 20)
T = TypeVar("T")
BWRAP = ("bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "/bin/true")  # fmt: skip


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], n: int, *, between: Callable[[], object] | None = None) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(n):
        if between is not None:
            between()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def round_trip(sbx: Sandbox, path: str) -> None:
    sbx.files.write(path, BLOB)
    assert sbx.files.read(path, format="bytes") == BLOB


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {sum(samples) / len(samples):.2f} |"


def direct_envd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """envd on the host on a free TCP port, as a process of its own (what the sandbox runs, minus the sandbox)."""
    from soulbox.core.natsserver import free_port

    port = free_port()
    link = tmp / "pp"
    link.mkdir()
    (link / "envd").symlink_to(Path(__file__).resolve().parents[1] / "runtimes" / "linux" / "envd")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(link), "HOME": str(tmp)}
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-m", "envd", "--port", str(port), "--host", "127.0.0.1", "--home", str(tmp)],
        stdout=subprocess.PIPE, env=env, cwd=tmp,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"envd ready"
    return proc, f"http://127.0.0.1:{port}"


class Layers:
    """Create + kill through each layer of the stack, the pool refilled before every create."""

    def __init__(self, stack: Stack) -> None:
        self.loop = asyncio.new_event_loop()  # in a thread of its own: the client answers the server's pings
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.nc = self._await(nats.connect(stack.nats.url))
        self.http = httpx.Client(base_url=stack.url, headers={"X-API-Key": KEY}, timeout=30)
        self.results: dict[str, tuple[list[float], list[float]]] = {}

    def _await(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.http.close()
        self._await(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _nats(self, subject: str, request: SandboxCreate | SandboxControl) -> None:
        msg = self._await(self.nc.request(subject, encode(request), timeout=30))
        reply = decode(SandboxReply, msg.data)
        assert reply.error_code is None, reply

    def measure(self, name: str, create: Callable[[], str], kill: Callable[[str], object], n: int) -> None:
        creates: list[float] = []
        kills: list[float] = []
        for i in range(n + 1):
            time.sleep(0.7)  # the pool refills (the box's start is off the measured path)
            started = time.perf_counter()
            sandbox_id = create()
            created = time.perf_counter()
            time.sleep(0.7)  # the pool's refill (0.25 s after a hand-out) is done: only the kill is measured
            killing = time.perf_counter()
            kill(sandbox_id)
            if i:  # the first is a warm-up
                creates.append((created - started) * 1000)
                kills.append((time.perf_counter() - killing) * 1000)
        self.results[name] = (creates, kills)

    def run(self, n: int) -> None:
        worker = "worker-0"

        def request() -> SandboxCreate:
            return SandboxCreate(sandbox_id=os.urandom(10).hex(), tenant="default", template="base", timeout_s=300)

        def nats_kill(sandbox_id: str) -> None:
            self._nats(
                names.worker_sandbox_subject(worker, "control"), SandboxControl(sandbox_id=sandbox_id, op="kill")
            )

        def create_and_run() -> str:
            sandbox = Sandbox.create()
            sandbox.commands.run("true")
            return sandbox.sandbox_id

        def http_create() -> str:
            response = self.http.post("/sandboxes", json={"templateID": "base"})
            assert response.status_code == 201, response.text
            return str(response.json()["sandboxID"])

        def http_kill(sandbox_id: str) -> None:
            assert self.http.delete(f"/sandboxes/{sandbox_id}").status_code == 204

        def via(subject: str) -> Callable[[], str]:
            def create() -> str:
                req = request()
                self._nats(subject, req)
                return req.sandbox_id

            return create

        self.measure("e2b SDK: `Sandbox.create()` / `Sandbox.kill(id)`", lambda: Sandbox.create().sandbox_id,
                     Sandbox.kill, n)  # fmt: skip
        self.measure("e2b SDK: `Sandbox.create()` + its first `commands.run('true')`", create_and_run, Sandbox.kill, n)
        self.measure(
            "plain HTTP, E2B API (kept-alive connection): gateway, scheduler, worker", http_create, http_kill, n
        )
        self.measure(
            "NATS request to the schedulers: scheduler, worker", via(names.SANDBOX_CREATE_SUBJECT), nats_kill, n
        )
        self.measure("NATS request to the worker", via(names.worker_sandbox_subject(worker, "create")), nats_kill, n)

    def print(self) -> None:
        print(
            "| layer | create p50 ms | create p99 ms | kill p50 ms | kill p99 ms |\n| --- | ---: | ---: | ---: | ---: |"
        )
        for name, (creates, kills) in self.results.items():
            print(f"| {name} | {pct(creates, 0.5):.2f} | {pct(creates, 0.99):.2f} "
                  f"| {pct(kills, 0.5):.2f} | {pct(kills, 0.99):.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack(tmp / "stack", workers=1, env={"SOULBOX_GATEWAY__API_KEYS": f'["{KEY}"]',
                                                     "SOULBOX_SANDBOXES__POOL_SIZE": "2"})  # fmt: skip
        stack.start()
        envd, envd_url = direct_envd(tmp)
        try:
            os.environ.update(E2B_API_URL=stack.url, E2B_SANDBOX_URL=stack.url, E2B_API_KEY=KEY)
            time.sleep(2)  # the pool fills
            layers = Layers(stack)
            try:
                layers.run(n)
            finally:
                layers.close()
            print(f"sandboxes, e2b SDK (sync), n={n}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n")
            layers.print()
            print(flush=True)
            sbx = Sandbox.create(timeout=600)
            run_stack = timed(lambda: sbx.commands.run("true"), n)
            files_stack = timed(lambda: round_trip(sbx, "/tmp/blob"), n)
            direct = Sandbox(
                sandbox_id="direct",
                sandbox_domain=None,
                envd_version=Version("0.6.4"),
                envd_access_token=None,
                connection_config=ConnectionConfig(sandbox_url=envd_url, api_key="x"),
            )
            run_direct = timed(lambda: direct.commands.run("true"), n)
            files_direct = timed(lambda: round_trip(direct, str(tmp / "blob")), n)
            bare = timed(lambda: subprocess.run(BWRAP, check=True), n)
            sbx.kill()
        finally:
            envd.terminate()
            envd.wait()
            stack.stop()
        cold_stack = Stack(tmp / "cold", workers=1, env={"SOULBOX_GATEWAY__API_KEYS": f'["{KEY}"]',
                                                         "SOULBOX_SANDBOXES__POOL_SIZE": "0"})  # fmt: skip
        cold_stack.start()
        try:
            os.environ.update(E2B_API_URL=cold_stack.url, E2B_SANDBOX_URL=cold_stack.url)
            cold_boxes: list[Sandbox] = []

            def kill_all() -> None:
                while cold_boxes:
                    cold_boxes.pop().kill()

            cold = timed(lambda: cold_boxes.append(Sandbox.create()), min(n, 20), between=kill_all)
            kill_all()
        finally:
            cold_stack.stop()
    print(f"load {os.getloadavg()[0]:.2f}\n")
    print("| what | p50 ms | p99 ms | mean ms |\n| --- | ---: | ---: | ---: |")
    print(row("`Sandbox.create()` with no pool (bubblewrap + envd started on demand)", cold))
    print(
        row("`commands.run('true')` through the stack (gateway, NATS tunnel, worker, envd in the sandbox)", run_stack)
    )
    print(row("`commands.run('true')` against envd directly (host process, TCP)", run_direct))
    print(row("bare `bwrap --unshare-all /bin/true` (a new sandbox per call)", bare))
    print(row("write + read 1 MiB through the stack", files_stack))
    print(row("write + read 1 MiB against envd directly", files_direct))


if __name__ == "__main__":
    main()
