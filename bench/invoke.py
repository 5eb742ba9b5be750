"""End-to-end invoke latency/throughput next to the bare wasmtime call, in one run.

Starts a private stack with ``soulbox up`` (own NATS on a free port, temp data
dir), deploys a WASI hello module, then measures:

* bare: in-process wasmtime-py, shared Linker + InstancePre, a new Store and
  WASI context per call (the floor any host can reach from Python);
* sync: sequential ``POST /v1/functions/hello/invoke`` over one keep-alive
  connection: p50/p99 latency;
* throughput: concurrent sync invokes from an asyncio client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import wasmtime

from soulbox.core.natsserver import free_port

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_wasmtime(module: bytes, n: int) -> list[float]:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(wasmtime.Module(engine, module))
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        out: list[bytes] = []
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1000)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = out.append
        store.set_wasi(wasi)
        instance = pre.instantiate(store)
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
        samples.append((time.perf_counter() - started) * 1000)
        assert out == [b"hello from wasm\n"]
    return samples


def start_stack(root: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((root / "up.log").read_text())
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("stack did not become ready")


def sequential(url: str, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = client.post("/v1/functions/hello/invoke")
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and response.content == b"hello from wasm\n", response.text
    return samples


async def throughput(url: str, total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        remaining = total

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/v1/functions/hello/invoke")
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000, help="sequential invokes")
    parser.add_argument("--total", type=int, default=3000, help="invokes in the throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    module = bytes(wasmtime.wat2wasm(HELLO_WAT))
    bare = bare_wasmtime(module, max(args.n, 1000))
    with tempfile.TemporaryDirectory(prefix="soulbox-bench-") as tmp:
        root = Path(tmp)
        process, url = start_stack(root, args.workers)
        try:
            (root / "hello.wasm").write_bytes(module)
            deployed = httpx.post(
                f"{url}/v1/functions", data={"name": "hello"}, files={"module": ("hello.wasm", module)}, timeout=30
            )
            assert deployed.status_code in (200, 201), deployed.text
            sequential(url, 200)  # warm-up: compile, caches, connections
            e2e = sequential(url, args.n)
            rate = asyncio.run(throughput(url, args.total, args.concurrency))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)

    bare_p50, e2e_p50 = statistics.median(bare), statistics.median(e2e)
    print(f"## invoke (hello, WASI) — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores\n")
    print("| measure | p50 ms | p99 ms | rate /s |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| bare wasmtime-py call (InstancePre, new Store) | {bare_p50:.3f} | {pct(bare, 0.99):.3f} "
        f"| {1000 / statistics.mean(bare):,.0f} (1 core) |"
    )
    print(
        f"| SoulBox HTTP sync invoke, sequential | {e2e_p50:.3f} | {pct(e2e, 0.99):.3f} "
        f"| {1000 / statistics.mean(e2e):,.0f} |"
    )
    print(f"| SoulBox HTTP sync invoke, {args.concurrency} concurrent, {args.workers} worker(s) | | | {rate:,.0f} |")
    print(f"\ncontrol-plane overhead over the bare call (p50): {e2e_p50 - bare_p50:.3f} ms")


if __name__ == "__main__":
    main()
