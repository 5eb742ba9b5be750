"""Lifecycle events through billing + audit + metrics, next to a bare nats-py loop, in one run.

* bare: ``publish_async`` of N small messages to a stream of our own, then one
  pull consumer doing ``fetch(500)`` + ack until all are consumed (one process);
* SoulBox: N lifecycle events (N/4 invocations: accepted, scheduled, started,
  completed) published as producers publish them (``core.eventbatch``: by group
  commit, up to ``--max-batch`` events of one type per message; ``--max-batch 1``:
  one message per event, pre-encoded) while the events process
  (``python -m soulbox.events run``: billing, audit and metrics over one read
  of every event) runs; the rate is N over the time from the first publish
  until the events durable has acknowledged everything. With ``--backlog`` the
  events are all stored first (the durable paused) and the rate is how fast
  the process drains them. With ``--standbys K`` K more events processes run:
  one of them all is served (holds the durable's pin), the others take nothing. The clock starts only
  once every process runs (starting one takes seconds of CPU on a loaded box). Then it checks: N/4 usage entries stored
  (0 lost), the usage report's total of invocations and billable milliseconds
  exact (0 double-billed), N records in the audit chain and the chain
  verifies, metrics counted N events.

CPU per event is each process's user + system time over the run (from
``/proc``), which depends less on how busy the machine is than the rates.
Everything (nats-server, the three consumers, this script) shares the machine.
Run: ``.venv/bin/python bench/events.py [-n 100000] [--batch 512] [--backlog]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from soulbox.core import names
from soulbox.core.bus import Buckets, connect, ensure_topology
from soulbox.core.codec import encode
from soulbox.core.eventbatch import MAX_BATCH_EVENTS, EventBatcher
from soulbox.core.natsserver import NatsServer, free_port
from soulbox.core.schemas import EventType, LifecycleEvent, Outcome, Tier
from soulbox.core.settings import EventsSettings, PriceList, Settings
from soulbox.events import ensure_events_consumer, usage, verify_log

PAYLOAD = b"x" * 200  # about the size of an encoded lifecycle event
NATS_CONFIG = Path(__file__).resolve().parents[1] / "infra" / "nats.conf"
WINDOW = 4000  # publishes in flight (nats-py's own cap)


async def publish_all(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]) -> float:
    """Publish pipelined, at most WINDOW unacknowledged; seconds taken."""
    started = time.perf_counter()
    pending: list[asyncio.Future[api.PubAck]] = []
    for subject, payload, headers in items:
        pending.append(await js.publish_async(subject, payload, headers=headers))
        if len(pending) >= WINDOW:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return time.perf_counter() - started


async def publish_batched(batcher: EventBatcher, events: list[LifecycleEvent]) -> float:
    """Publish through the producers' group-commit batcher, at most WINDOW events unacknowledged."""
    started = time.perf_counter()
    pending: list[asyncio.Future[api.PubAck]] = []
    for event in events:
        pending.append(await batcher.publish(event))
        if len(pending) >= WINDOW:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return time.perf_counter() - started


async def bare(nc: NATS, js: JetStreamContext, n: int) -> tuple[float, float]:
    """(publish/s, consume/s) of a bare publish_async loop and a fetch(500)+ack loop."""
    await js.add_stream(api.StreamConfig(name="BARE", subjects=["bare.>"], storage=api.StorageType.FILE))
    published = await publish_all(js, [("bare.x", PAYLOAD, {}) for _ in range(n)])
    sub = await js.pull_subscribe("bare.>", durable="bare", stream="BARE")
    started = time.perf_counter()
    seen = 0
    while seen < n:
        msgs = await sub.fetch(500, timeout=5)
        for msg in msgs:
            await msg.ack()
        seen += len(msgs)
    await nc.flush()
    consumed = time.perf_counter() - started
    await js.delete_stream("BARE")
    return n / published, n / consumed


def lifecycle(n_invocations: int) -> list[LifecycleEvent]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i in range(n_invocations):
        inv = f"{i:012x}bench"
        for type_ in (EventType.ACCEPTED, EventType.SCHEDULED, EventType.STARTED, EventType.COMPLETED):
            done = type_ is EventType.COMPLETED
            events.append(
                LifecycleEvent(
                    id=f"{inv}.{type_.value.split('.', 1)[1]}",
                    type=type_,
                    invocation_id=inv,
                    tenant=f"t{i % 10}",
                    function=f"f{i % 7}",
                    tier=Tier.WASM,
                    worker="w-1",
                    at=at,
                    outcome=Outcome.SUCCESS if done else None,
                    duration_ms=float(i % 50) + 0.25 if done else None,
                    memory_limit_mb=128 if done else None,
                )
            )
    return events


async def settled(js: JetStreamContext, durable: str, stream: str = names.EVENTS_STREAM) -> bool:
    info = await js.consumer_info(stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_consumers(
    nats_url: str, metrics_ports: list[int], root: Path, batch: int, *, first: int = 0
) -> dict[str, subprocess.Popen[bytes]]:
    """Events processes ``events-<n>``; the durable's pin goes to whichever asks first once events flow."""
    processes = {}
    for n, port in enumerate(metrics_ports, first):
        env = {
            **os.environ,
            "SOULBOX_EVENTS__BATCH": str(batch),
            "SOULBOX_NATS__URLS": json.dumps([nats_url]),
            "SOULBOX_EVENTS__METRICS_PORT": str(port),
            "SOULBOX_LOG_LEVEL": "info",
        }
        name = f"events-{n}"
        with (root / f"{name}.log").open("wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "soulbox.events", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
    return processes


async def ready(root: Path, processes: dict[str, subprocess.Popen[bytes]], timeout: float = 180.0) -> None:
    """Until every consumer process has started consuming, and a little longer: a loaded box takes
    seconds of CPU to start a Python process, which must not count against the events."""
    deadline = time.monotonic() + timeout
    waiting = set(processes)
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumers not started: {sorted(waiting)}")
        for kind in list(waiting):
            if processes[kind].poll() is not None:
                raise RuntimeError(f"{kind} exited: {(root / f'{kind}.log').read_text()[-2000:]}")
            if "events.consumer.started" in (root / f"{kind}.log").read_text():
                waiting.discard(kind)
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)


async def soulbox(
    nc: NATS,
    js: JetStreamContext,
    buckets: Buckets,
    n: int,
    batch: int,
    root: Path,
    server_pid: int,
    *,
    backlog: bool,
    standbys: int,
    max_batch: int,
) -> dict[str, object]:
    invocations = n // 4
    events = lifecycle(invocations)
    # single: one message per event, encoded before the clock starts (the producer's pydantic cost
    # is not the consumers'); batched: what producers do, through their batcher (encoding included)
    items = (
        [(names.event_subject(e.type.value), encode(e), {"Nats-Msg-Id": e.id}) for e in events]
        if max_batch == 1
        else []
    )
    batcher = EventBatcher(js, max_events=max_batch)

    async def produce() -> float:
        return await publish_all(js, items) if max_batch == 1 else await publish_batched(batcher, events)

    metrics_ports = [free_port() for _ in range(1 + standbys)]
    await ensure_events_consumer(nc, js, EventsSettings())
    if backlog:
        await js.pause_consumer(names.EVENTS_STREAM, names.EVENTS_CONSUMER, "2100-01-01T00:00:00Z")
    url = nc.connected_url.geturl() if nc.connected_url else ""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes |= start_consumers(url, metrics_ports[:1], root, batch)
        await ready(root, processes)
        if standbys:
            processes |= start_consumers(url, metrics_ports[1:], root, batch, first=1)
            await ready(root, processes)
        if backlog:  # every event stored before the consumer may take any
            published = await produce()
        server_cpu = cpu_seconds(server_pid)
        own_cpu = time.process_time()  # this process: the publisher (and its polling of the durable)
        before = {kind: cpu_seconds(process.pid) for kind, process in processes.items()}
        started = time.perf_counter()
        if backlog:
            await js.resume_consumer(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        else:
            published = await produce()
        while not await settled(js, names.EVENTS_CONSUMER):  # noqa: ASYNC110 (polls the server)
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = {kind: cpu_seconds(process.pid) - before[kind] for kind, process in processes.items()}
        cpu["nats-server"] = cpu_seconds(server_pid) - server_cpu
        cpu["publisher"] = time.process_time() - own_cpu
        counted = []
        async with httpx.AsyncClient() as client:
            for port in metrics_ports:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                pattern = r"^soulbox_lifecycle_events_total\{[^}]*\} (\S+)$"
                counted.append(int(sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))))
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(30)
    # The bucket keeps one value per key (an invocation): what was billed, counted by the server.
    kv_entries = (await js.stream_info(f"KV_{names.BILLING_BUCKET}")).state.messages
    expected_ms = sum(math.ceil(float(i % 50) + 0.25) for i in range(invocations))
    attempts = 0
    while attempts < 3:  # the report's KV scan sometimes misses a tenant on a loaded box: read again
        attempts += 1
        billed = 0
        billable_ms = 0
        for tenant in range(10):
            report = await usage(buckets.billing, f"t{tenant}", prices=PriceList(), granularity=None)
            billed += report.total.invocations
            billable_ms += report.total.billable_ms
        if billed == kv_entries:
            break
    verdict = await verify_log(js)
    chained = verdict.records
    return {
        "events": n,
        "messages": (await js.stream_info(names.EVENTS_STREAM)).state.messages,
        "publish_per_s": n / published,
        "end_to_end_per_s": n / elapsed,
        "cpu_us_per_event": {kind: round(seconds / n * 1e6, 1) for kind, seconds in cpu.items()},
        "cpu_us_per_event_all": round(sum(cpu.values()) / n * 1e6, 1),
        "billed": billed,
        "lost": max(0, invocations - kv_entries),
        "double_billed": billed - invocations if billed > invocations else 0,
        "usage_report_attempts": attempts,
        "billable_ms_exact": billable_ms == expected_ms,
        "usage_entries_stored": kv_entries,
        "audit_records": chained,
        "audit_chain_ok": verdict.ok,
        "metrics_events": counted,
    }


async def main(n: int, batch: int, backlog: bool, standbys: int, max_batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="soulbox-bench-events-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats", config=NATS_CONFIG)
        server.start()
        try:
            settings = Settings(nats={"urls": [server.url]}, _env_file=None)  # type: ignore[arg-type, call-arg]
            nc = await connect(settings, name="bench-events")
            js = nc.jetstream()
            buckets = await ensure_topology(js, settings)
            bare_pub, bare_con = await bare(nc, js, n)
            assert server.process is not None
            result = await soulbox(
                nc,
                js,
                buckets,
                n,
                batch,
                root,
                server.process.pid,
                backlog=backlog,
                standbys=standbys,
                max_batch=max_batch,
            )
            await nc.close()
        finally:
            server.stop()
    mode = "backlog (published first)" if backlog else "live (published while consumed)"
    print(
        f"cores: {os.cpu_count()}, events: {n}, {mode}, producer batch <= {max_batch}, consumer batch: {batch}, "
        f"standbys: {standbys}, "
        f"load average: {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| path | publish events/s | consume events/s |")
    print("| --- | ---: | ---: |")
    print(f"| bare nats-py: publish_async; fetch(500) + ack, 1 consumer | {bare_pub:,.0f} | {bare_con:,.0f} |")
    print(
        f"| SoulBox: events process (billing + audit + metrics), all acked | {result['publish_per_s']:,.0f} "
        f"| {result['end_to_end_per_s']:,.0f} |"
    )
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000, help="events (a multiple of 4)")
    parser.add_argument("--batch", type=int, default=EventsSettings().batch, help="the consumers' batch size")
    parser.add_argument(
        "--backlog", action="store_true", help="publish every event first, then time the consumers draining them"
    )
    parser.add_argument("--standbys", type=int, default=0, help="events processes standing by (pinned out)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=MAX_BATCH_EVENTS,
        help="the most events producers put in one message (1: one message per event, as before batching)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.n, args.batch, args.backlog, args.standbys, args.max_batch))
