"""What tracing costs: the hot-path helpers in process, and HTTP invokes of a whole stack, off and on.

In process: the calls one hop makes (a span, an extract, an inject, the trace
id) with tracing off, and the CPU of one exported span with it on (made,
batched, encoded and sent to a receiver in another process).

End to end: a private stack per mode (``off``, ``on`` at sample ratio 1,
``on`` at 0.1), exporting to an OTLP/HTTP receiver in its own process;
warm sequential invokes of a WASI hello (p50/p99) and the throughput of
concurrent ones. The modes run in turn, ``--rounds`` times, so that load
drift on a shared box hits them alike.

Run: ``.venv/bin/python bench/tracing.py [--rounds 2] [-n 300] [--total 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the checkout

import invoke  # bench/invoke.py, next to this file

from soulbox.core import tracing
from soulbox.core.settings import TracingSettings
from tests.stack import Stack

MODES = {"off": None, "on": 1.0, "on, ratio 0.1": 0.1}
RECEIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.otlp import OtlpReceiver
with OtlpReceiver() as r:
    print(r.endpoint, flush=True)
    while True:
        time.sleep(3600)
"""
HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def hop(n: int) -> None:
    for _ in range(n):
        with tracing.span("publish", kind=tracing.SpanKind.PRODUCER, parent=tracing.extract(HEADERS)) as span:
            if span.is_recording():
                span.set_attributes({"messaging.system": "nats", "soulbox.event_id": "0123456789abcdef.completed"})
            tracing.inject({"Nats-Msg-Id": "0123456789abcdef"})
            tracing.current_trace_id()


def in_process(endpoint: str) -> tuple[float, float]:
    """(µs per hop with tracing off, CPU µs per hop with it on, export included)."""
    tracing.shutdown()
    n = 200_000
    started = time.perf_counter()
    hop(n)
    off = (time.perf_counter() - started) / n * 1e6
    tracing.setup(TracingSettings(enabled=True, endpoint=endpoint, max_queue_size=100_000), component="bench")
    n = 20_000
    cpu = time.process_time()
    hop(n)
    tracing.shutdown()  # flushes: the export thread's CPU is counted
    return off, (time.process_time() - cpu) / n * 1e6


def stack_run(root: Path, endpoint: str, ratio: float | None, n: int, total: int) -> tuple[float, float, float]:
    env = {"SOULBOX_LOG_LEVEL": "warning"}
    if ratio is not None:
        env |= {
            "SOULBOX_TRACING__ENABLED": "true",
            "SOULBOX_TRACING__ENDPOINT": endpoint,
            "SOULBOX_TRACING__SAMPLE_RATIO": str(ratio),
        }
    stack = Stack(root, workers=1, triggers=0, env=env)
    stack.start()
    try:
        row = invoke.end_to_end(stack.url, n)["hello-wasi"]
        rate = asyncio.run(invoke.throughput(stack.url, "hello-wasi", total, 16))
    finally:
        stack.stop()
    return row["p50"], row["p99"], rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-n", type=int, default=300, help="warm sequential invokes per run")
    parser.add_argument("--total", type=int, default=2000, help="invokes in each throughput run")
    args = parser.parse_args()
    invoke.FUNCTIONS = {"hello-wasi": invoke.FUNCTIONS["hello-wasi"]}
    root = str(Path(__file__).resolve().parents[1])
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, root], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        endpoint = receiver.stdout.readline().strip()
        off, on = in_process(endpoint)
        results: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
        with tempfile.TemporaryDirectory(prefix="soulbox-bench-") as tmp:
            for i in range(args.rounds):
                for mode, ratio in MODES.items():
                    run = stack_run(
                        Path(tmp) / f"{i}-{len(results[mode])}-{ratio}", endpoint, ratio, args.n, args.total
                    )
                    results[mode].append(run)
                    print(f"round {i + 1} {mode}: p50 {run[0]:.2f} ms, p99 {run[1]:.2f} ms, {run[2]:.0f}/s", flush=True)
    finally:
        receiver.kill()
        receiver.wait()
    print(f"\n## Tracing — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    print(f"in process, one hop (span + extract + inject + trace id): off **{off:.2f} µs**, ", end="")
    print(f"on **{on:.1f} µs CPU** (made and exported)\n")
    print("| mode | warm HTTP p50 ms | warm HTTP p99 ms | invokes/s (16 concurrent) |")
    print("| --- | ---: | ---: | ---: |")
    for mode, runs in results.items():
        p50, p99, rate = (statistics.median(r[k] for r in runs) for k in range(3))
        print(f"| {mode} | {p50:.2f} | {p99:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
