"""Async invocation throughput and trigger-to-start latency, on a private stack.

Starts the whole stack as processes (``tests/stack.py``: own nats-server on a
free port, gateway, scheduler, one worker, event consumers, one trigger
service) and measures, with the WASI echo guest:

* async invokes: accepted/s (202s from 32 concurrent keep-alive connections)
  with the scheduler stopped, so ingest has the CPU to itself; drained/s of
  that backlog once a scheduler starts (first to last completed event); and
  accepted/s again while ingest and drain share the two cores;
* trigger-to-start latency: from the moment a message is published on a
  NATS-subject trigger's subject, or a signed webhook request is sent, to the
  ``invocation.started`` event's timestamp (same host clock), sequentially.

Run: ``.venv/bin/python bench/triggers.py [--total 2000] [-n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the checkout

from soulbox.core.eventbatch import decode_events
from soulbox.core.schemas import LifecycleEvent
from soulbox.triggers.signatures import sign_hmac
from tests.guests import wasm
from tests.stack import Stack

SECRET = "bench-secret-0123456789"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def deploy(api: httpx.AsyncClient, name: str) -> None:
    r = await api.post(
        "/v1/functions", data={"name": name}, files={"module": (f"{name}.wasm", wasm("echo"), "application/wasm")}
    )
    r.raise_for_status()


async def throughput(
    stack: Stack, api: httpx.AsyncClient, nc: nats.NATS, total: int, concurrency: int
) -> tuple[float, float, float]:
    """(accepted/s with no scheduler running, drained/s of that backlog, accepted/s while draining)."""
    completed = 0
    done = asyncio.Event()
    first_completed = last_completed = 0.0

    async def on_completed(msg: Msg) -> None:
        nonlocal completed, first_completed, last_completed
        for _event in (e for e in decode_events(msg.data) if e.function == "bench-async"):
            completed += 1
            last_completed = time.perf_counter()
            first_completed = first_completed or last_completed
            if completed >= total:
                done.set()

    async def submit(count: int) -> float:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(count):
            queue.put_nowait(n)

        async def client() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                r = await api.post("/v1/functions/bench-async/invoke?async=1", content=str(n).encode())
                if r.status_code != 202:
                    raise RuntimeError(f"{r.status_code}: {r.text}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)

    sub = await nc.subscribe("sb.events.invocation.completed", cb=on_completed)
    scheduler = stack.processes["scheduler"]
    scheduler.send_signal(signal.SIGTERM)  # ingest alone: the backlog waits in the stream
    await asyncio.to_thread(scheduler.wait, 15)
    ingest = await submit(total)
    stack.spawn("scheduler", "soulbox.scheduler")
    await asyncio.wait_for(done.wait(), 600)
    drain = (total - 1) / (last_completed - first_completed)
    completed, first_completed = 0, 0.0
    done.clear()
    mixed = await submit(total)  # ingest and drain share the CPU
    await asyncio.wait_for(done.wait(), 600)
    await sub.unsubscribe()
    return ingest, drain, mixed


async def start_latency(nc: nats.NATS, function: str, fire, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    """ms from ``fire()`` to the started event of ``function``'s next invocation, ``n`` times in turn."""
    events: asyncio.Queue[LifecycleEvent] = asyncio.Queue()

    async def on_started(msg: Msg) -> None:
        for event in decode_events(msg.data):
            if event.function == function:
                events.put_nowait(event)

    sub = await nc.subscribe("sb.events.invocation.started", cb=on_started)
    samples = []
    for i in range(n):
        sent = time.time()
        await fire(i)
        event = await asyncio.wait_for(events.get(), 30)
        samples.append((event.at.timestamp() - sent) * 1000)
    await sub.unsubscribe()
    return samples[max(1, n // 20) :]  # the first calls warm caches


async def main(total: int, n: int, concurrency: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="soulbox-bench-triggers-"))
    stack = Stack(root, workers=1, triggers=1)
    try:
        await asyncio.to_thread(stack.start)  # its readiness probe runs its own event loop
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as api:
            nc = await nats.connect(stack.nats.url)
            for name in ("bench-async", "bench-nats", "bench-hook"):
                await deploy(api, name)
            for trigger in (
                {"id": "t-nats", "function": "bench-nats", "kind": "nats", "nats": {"subject": "bench.in"}},
                {"id": "t-hook", "function": "bench-hook", "kind": "webhook", "webhook": {"secret": SECRET}},
            ):
                (await api.post("/v1/triggers", json=trigger)).raise_for_status()
            await asyncio.sleep(1.0)  # the trigger service subscribes

            accepted, drained, mixed = await throughput(stack, api, nc, total, concurrency)

            async def publish(i: int) -> None:
                await nc.publish("bench.in", str(i).encode())
                await nc.flush()

            async def hook(i: int) -> None:
                body = str(i).encode()
                at = int(time.time())
                headers = {"X-Soulbox-Timestamp": str(at), "X-Soulbox-Signature": sign_hmac(SECRET, body, at)}
                (await api.post("/v1/hooks/t-hook", content=body, headers=headers)).raise_for_status()

            nats_ms = await start_latency(nc, "bench-nats", publish, n)
            hook_ms = await start_latency(nc, "bench-hook", hook, n)
            await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)
    print(
        f"async invokes, {total} from {concurrency} connections: {accepted:.0f} accepted/s (no scheduler running), "
        f"{drained:.0f} drained/s (that backlog), {mixed:.0f} accepted/s while draining"
    )
    print("| trigger | p50 ms | p99 ms | mean ms |")
    print("| --- | ---: | ---: | ---: |")
    for label, samples in (("NATS subject", nats_ms), ("webhook (HMAC, async)", hook_ms)):
        print(f"| {label} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {statistics.mean(samples):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2000, help="async invocations for the throughput run")
    parser.add_argument("-n", type=int, default=200, help="sequential triggers per latency run")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.total, args.n, args.concurrency))
