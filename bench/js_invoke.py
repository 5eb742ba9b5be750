"""JS tier: warm invoke latency/throughput next to a bare ``Bun.serve`` / ``Deno.serve``, in one run.

For each installed runtime:

* bare: a hello ``Bun.serve``/``Deno.serve`` on 127.0.0.1, driven over
  keep-alive HTTP/1.1 by a minimal asyncio client in this process (the same
  Python driver as below, so the difference is the tier's own overhead);
* warm fetch: ``JsRuntime.run`` of a Workers-style hello on a warm process
  (sequential p50/p99; throughput with ``--concurrency`` in flight);
* warm script: a hello script on a spare process (one process per invocation);
* cold: a new process for a function whose module is already parsed, and the
  first invocation of a never-seen artifact (fetch + parse + spawn + load).

The tier's processes run sandboxed as the worker runs them (bubblewrap: own
uid, namespaces, seccomp); ``--bare`` runs them unsandboxed, for comparison.

Run: ``.venv/bin/python bench/js_invoke.py [--n 2000] [--concurrency 4] [--bare]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soulbox.core.natsserver import free_port
from soulbox.core.schemas import FunctionSpec, Limits, Runtime
from soulbox.core.tiersettings import LinuxSettings
from soulbox.runtimes.js.cgroup import find_parent
from soulbox.runtimes.js.config import BUN, DENO, FunctionConfig, Mode
from soulbox.runtimes.js.engines import Engine, default_engines
from soulbox.runtimes.js.factory import TOOLS_DIRS
from soulbox.runtimes.js.pool import PoolKey
from soulbox.runtimes.js.runtime import JsRuntime
from soulbox.runtimes.js.sandbox import JsSandbox

FETCH = 'export default { fetch: () => new Response("hello") };\n'
SCRIPT = 'console.log("hello");\n'
SERVE = {
    BUN: 'Bun.serve({ hostname: "127.0.0.1", port: PORT, fetch: () => new Response("hello") });',
    DENO: 'Deno.serve({ hostname: "127.0.0.1", port: PORT, onListen() {} }, () => new Response("hello"));',
}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    return await reader.readexactly(length)


async def bare(engine: Engine, n: int, concurrency: int) -> dict[str, float]:
    port = free_port()
    code = SERVE[engine.runtime].replace("PORT", str(port))
    argv = [str(engine.binary), "-e" if engine.runtime == BUN else "eval", code]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        for _ in range(200):
            try:
                conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
                break
            except OSError:
                await asyncio.sleep(0.02)
        reader, writer = conns[0]
        for _ in range(200):
            await _http_get(reader, writer)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            assert await _http_get(reader, writer) == b"hello"
            samples.append((time.perf_counter() - started) * 1000)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int) -> None:
            for _ in range(count):
                await _http_get(reader, writer)

        started = time.perf_counter()
        await asyncio.gather(*(client(r, w, n) for r, w in conns))
        rate = concurrency * n / (time.perf_counter() - started)
        for _, w in conns:
            w.close()
        return {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99), "rps": rate}
    finally:
        proc.kill()
        proc.wait()


def spec(runtime: Runtime, name: str, code: bytes) -> FunctionSpec:
    return FunctionSpec.model_construct(
        tenant="bench",
        name=name,
        runtime=runtime,
        artifact=hashlib.sha256(code).hexdigest(),
        artifact_size=len(code),
        limits=Limits(memory_mb=128),
    )


async def tier(engine: Engine, n: int, concurrency: int, tmp: Path, *, bare: bool) -> dict[str, dict[str, float]]:
    sources = {hashlib.sha256(c.encode()).hexdigest(): c.encode() for c in (FETCH, SCRIPT)}

    async def fetch(digest: str) -> bytes:
        return sources[digest]

    js = JsRuntime(
        fetch,
        engines={engine.runtime: engine},
        work_dir=tmp,
        concurrency=concurrency,
        cgroup_parent=find_parent(),
        sandbox=None if bare else JsSandbox.create(LinuxSettings()),
    )
    out: dict[str, dict[str, float]] = {}
    try:
        hello = spec(engine.runtime, "hello", FETCH.encode())
        for _ in range(200):
            await js.run(hello, b"")
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await js.run(hello, b"")
            samples.append((time.perf_counter() - started) * 1000)
        total = n * concurrency
        started = time.perf_counter()
        await asyncio.gather(*(js.run(hello, b"") for _ in range(total)))
        out["warm fetch"] = {
            "p50": pct(samples, 0.5),
            "p99": pct(samples, 0.99),
            "rps": total / (time.perf_counter() - started),
        }

        script = spec(engine.runtime, "script", SCRIPT.encode())
        samples = []
        for _ in range(max(20, n // 20)):
            await _spare_ready(js, script)
            started = time.perf_counter()
            await js.run(script, b"")
            samples.append((time.perf_counter() - started) * 1000)
        out["warm script (spare process)"] = {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99)}

        samples = []
        for i in range(20):  # a new function name: a new process, the module already parsed
            started = time.perf_counter()
            await js.run(spec(engine.runtime, f"cold-{i}", FETCH.encode()), b"")
            samples.append((time.perf_counter() - started) * 1000)
        out["cold start (new process)"] = {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99)}

        samples = []
        for i in range(10):  # never-seen artifacts: parse + spawn + load
            code = f"{FETCH}// {i}\n".encode()
            sources[hashlib.sha256(code).hexdigest()] = code
            started = time.perf_counter()
            await js.run(spec(engine.runtime, f"new-{i}", code), b"")
            samples.append((time.perf_counter() - started) * 1000)
        out["first invoke of a new artifact"] = {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99)}
    finally:
        await js.close()
    return out


async def _spare_ready(js: JsRuntime, spec: FunctionSpec) -> None:
    key = PoolKey(
        spec.runtime,
        spec.tenant,
        spec.name,
        spec.artifact,
        FunctionConfig().fingerprint,
        spec.limits.memory_mb,
        Mode.SCRIPT,
    )
    for _ in range(1000):
        if js.pool.count(key):
            return
        await asyncio.sleep(0.002)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--bare", action="store_true", help="run the tier's processes unsandboxed")
    args = parser.parse_args()
    engines = default_engines(extra_dirs=TOOLS_DIRS)
    if not engines:
        sys.exit("neither bun nor deno is installed")
    mode = "bare processes" if args.bare else "sandboxed processes (bubblewrap)"
    print(f"n={args.n} sequential, {args.concurrency} in flight, uvloop, {mode}; cgroup: {find_parent()}\n")
    print("| runtime | path | p50 ms | p99 ms | req/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for runtime, engine in sorted(engines.items()):
        base = await bare(engine, args.n, args.concurrency)
        print(
            f"| {runtime} {engine.version()} | bare serve (HTTP) | {base['p50']:.3f} | {base['p99']:.3f} "
            f"| {base['rps']:.0f} |"
        )
        with tempfile.TemporaryDirectory(prefix="sbjs-") as tmp:
            for path, row in (await tier(engine, args.n, args.concurrency, Path(tmp), bare=args.bare)).items():
                rps = f"{row['rps']:.0f}" if "rps" in row else ""
                print(f"| {runtime} | {path} | {row['p50']:.3f} | {row['p99']:.3f} | {rps} |")


if __name__ == "__main__":
    import uvloop  # as in the worker

    uvloop.run(main())
