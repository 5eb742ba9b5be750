"""JS tier through the whole stack next to bare Bun.serve, Deno.serve and workerd, in one run.

One hello handler (``export default { fetch() { return new Response("hello") } }``)
served four ways, each driven by the same Python HTTP/1.1 client over a
keep-alive connection:

* bare ``Bun.serve`` and ``Deno.serve`` of that handler (no SoulBox);
* Cloudflare's ``workerd`` serving the same module (npm ``workerd``, installed
  on first use into ``.tools/bench``; skipped with ``--no-workerd``);
* SoulBox: the handler deployed as a ``bun`` and a ``deno`` function on a
  private stack (``soulbox up``: its own NATS, one worker), invoked through
  the gateway (``POST /v1/functions/{name}/invoke``: gateway → JetStream →
  scheduler → worker → sandboxed runtime process → back).

Per path: the first request (for SoulBox: the first invoke after deploy, a
cold start of a sandboxed process), warm p50/p99 of sequential requests, and
the rate with ``--concurrency`` keep-alive connections.

Run: ``.venv/bin/python bench/js_gateway.py [-n 500] [--total 3000] [--concurrency 16]``.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from soulbox.core.natsserver import free_port
from soulbox.runtimes.js.engines import TOOLS_DIRS, find_binary

sys.path.insert(0, str(Path(__file__).resolve().parent))  # stackbench.py beside it: the stack start-up is shared
from stackbench import pct, request_rate, start_stack, timed

HANDLER = 'export default { fetch(request) { return new Response("hello"); } };\n'
WORKERD_VERSION = "1.20261117.1"
TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "bench"
WORKERD_CONFIG = """using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [(name = "main", worker = .hello)],
  sockets = [(name = "http", address = "127.0.0.1:PORT", http = (), service = "main")],
);
const hello :Workerd.Worker = (
  modules = [(name = "hello.js", esModule = embed "hello.js")],
  compatibilityDate = "2025-01-01",
);
"""


def workerd_binary() -> Path:
    binary = TOOLS / "node_modules" / ".bin" / "workerd"
    if not binary.exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(TOOLS), "--no-save", "--no-audit", "--no-fund", "--loglevel=error",
             f"workerd@{WORKERD_VERSION}"],
            check=True,
        )  # fmt: skip
    return binary


@contextmanager
def bare_server(kind: str, tmp: Path) -> Iterator[str]:
    """A bare server of HANDLER; yields its URL."""
    port = free_port()
    (tmp / "hello.js").write_text(HANDLER)
    if kind == "bun":
        bun = find_binary("bun", extra_dirs=TOOLS_DIRS)
        assert bun is not None, "bun is not installed (./justw sets it up)"
        (tmp / "serve-bun.js").write_text(
            f'import h from "./hello.js";\nBun.serve({{ hostname: "127.0.0.1", port: {port}, fetch: h.fetch }});\n'
        )
        argv = [str(bun), str(tmp / "serve-bun.js")]
    elif kind == "deno":
        deno = find_binary("deno")
        assert deno is not None
        (tmp / "serve-deno.js").write_text(
            f'import h from "./hello.js";\nDeno.serve({{ hostname: "127.0.0.1", port: {port} }}, h.fetch);\n'
        )
        argv = [str(deno), "run", "--allow-net=127.0.0.1", str(tmp / "serve-deno.js")]
    else:
        (tmp / "config.capnp").write_text(WORKERD_CONFIG.replace("PORT", str(port)))
        argv = [str(workerd_binary()), "serve", str(tmp / "config.capnp")]
    process = subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{kind} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def measure(url: str, path: str, method: str, n: int) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as client:

        def call() -> None:
            response = client.request(method, path)
            assert response.status_code == 200 and response.content == b"hello", response.text

        first = timed(call, 1)[0]
        timed(call, 50)
        samples = timed(call, n)
    return {"first": first, "p50": statistics.median(samples), "p99": pct(samples, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="sequential warm requests per path")
    parser.add_argument("--total", type=int, default=3000, help="requests in each throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-workerd", action="store_true")
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    kinds = ["bun", "deno"] + ([] if args.no_workerd else ["workerd"])
    with tempfile.TemporaryDirectory(prefix="soulbox-bench-") as tmp:
        for kind in kinds:
            with bare_server(kind, Path(tmp)) as url:
                rows[f"bare {kind}"] = measure(url, "/", "GET", args.n)
                rows[f"bare {kind}"]["rate"] = asyncio.run(request_rate(url, "GET", "/", args.total, args.concurrency))
        process, url = start_stack(Path(tmp), 1)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                for runtime in ("bun", "deno"):
                    deployed = client.post(
                        "/v1/functions",
                        data={"name": f"hello-{runtime}", "runtime": runtime},
                        files={"code": ("hello.js", HANDLER.encode())},
                    )
                    assert deployed.status_code in (200, 201), deployed.text
            for runtime in ("bun", "deno"):
                path = f"/v1/functions/hello-{runtime}/invoke"
                rows[f"SoulBox {runtime}"] = measure(url, path, "POST", args.n)
                rows[f"SoulBox {runtime}"]["rate"] = asyncio.run(
                    request_rate(url, "POST", path, args.total, args.concurrency)
                )
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)

    load = os.getloadavg()[0]
    print(f"## JS through the gateway — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {load:.1f}\n")
    print(f"| path | first ms | warm p50 ms | warm p99 ms | req/s ({args.concurrency} connections) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['first']:.1f} | {row['p50']:.3f} | {row['p99']:.3f} | {row['rate']:,.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
