"""Where the events process's CPU goes: the same backlog drained with recorders switched off.

Runs the events service (``soulbox.events.run``) in this process against a
nats-server of its own, N stored lifecycle events, and drains them four
times on a fresh server: with every recorder, without audit, without billing
and metrics, and with none (receiving, decoding and acking only). A recorder
is switched off by replacing its ``record`` with one that does nothing, in
this process only. Prints events/s and CPU microseconds per event of this
process and of nats-server.

Run: ``.venv/bin/python bench/events_breakdown.py [-n 40000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from soulbox.core import names
from soulbox.core.bus import connect, ensure_topology
from soulbox.core.codec import encode
from soulbox.core.natsserver import NatsServer, free_port
from soulbox.core.schemas import LifecycleEvent
from soulbox.core.settings import Settings
from soulbox.events import AuditRecorder, BillingRecorder, MetricsRecorder, ensure_events_consumer, run

# bench/events.py beside this file, by path: a plain `import events` finds the soulbox.events folder first.
_spec = importlib.util.spec_from_file_location("bench_events", Path(__file__).with_name("events.py"))
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
NATS_CONFIG, cpu_seconds, lifecycle, publish_all = (
    _bench.NATS_CONFIG,
    _bench.cpu_seconds,
    _bench.lifecycle,
    _bench.publish_all,
)

VARIANTS = {
    "billing + audit + metrics": (),
    "billing + metrics (no audit)": (AuditRecorder,),
    "audit (no billing, no metrics)": (BillingRecorder, MetricsRecorder),
    "nothing recorded: receive, decode, ack": (AuditRecorder, BillingRecorder, MetricsRecorder),
}


async def _nothing(self: object, events: list[LifecycleEvent]) -> None:
    return None


async def drain(n: int, off: tuple[type, ...]) -> tuple[float, float, float]:
    """(events/s, this process's CPU µs/event, nats-server's CPU µs/event) for one variant."""
    saved = {cls: cls.record for cls in off}
    for cls in off:
        cls.record = _nothing  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="soulbox-bench-breakdown-") as tmp:
            server = NatsServer(Path(tmp) / "nats", config=NATS_CONFIG)
            server.start()
            assert server.process is not None
            try:
                settings = Settings(
                    nats={"urls": [server.url]},  # type: ignore[arg-type]
                    events={"metrics_port": free_port()},  # type: ignore[arg-type]
                    log_level="warning",
                    _env_file=None,  # type: ignore[call-arg]
                )
                nc = await connect(settings, name="bench-breakdown")
                js = nc.jetstream()
                await ensure_topology(js, settings)
                await ensure_events_consumer(nc, js, settings.events)
                await js.pause_consumer(names.EVENTS_STREAM, names.EVENTS_CONSUMER, "2100-01-01T00:00:00Z")
                events = lifecycle(n // 4)
                await publish_all(
                    js, [(names.event_subject(e.type.value), encode(e), {"Nats-Msg-Id": e.id}) for e in events]
                )
                stop = asyncio.Event()
                task = asyncio.create_task(run(settings, stop))
                await asyncio.sleep(2.0)  # started and idle
                cpu, wall, server_cpu = time.process_time(), time.perf_counter(), cpu_seconds(server.process.pid)
                await js.resume_consumer(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
                while True:
                    info = await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        break
                    await asyncio.sleep(0.02)
                wall = time.perf_counter() - wall
                cpu = time.process_time() - cpu
                server_cpu = cpu_seconds(server.process.pid) - server_cpu
                stop.set()
                await task
                await nc.close()
            finally:
                server.stop()
    finally:
        for cls, record in saved.items():
            cls.record = record  # type: ignore[method-assign]
    return n / wall, cpu / n * 1e6, server_cpu / n * 1e6


async def main(n: int) -> None:
    rows = [(name, *await drain(n, off)) for name, off in VARIANTS.items()]
    print(f"cores: {os.cpu_count()}, events: {n} (stored, then drained), load average: {os.getloadavg()[0]:.1f}")
    print()
    print("| recorders | events/s | events process µs/event | nats-server µs/event |")
    print("| --- | ---: | ---: | ---: |")
    for name, rate, own, server in rows:
        print(f"| {name} | {rate:,.0f} | {own:.1f} | {server:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40_000, help="events (a multiple of 4)")
    asyncio.run(main(parser.parse_args().n))
