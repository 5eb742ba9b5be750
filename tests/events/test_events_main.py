"""``python -m soulbox.events run`` as a real process, and the public surface."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

import soulbox.events
from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.ledger import UsageEntry
from soulbox.core.natsserver import NatsServer, free_port
from soulbox.core.schemas import EventType
from soulbox.core.settings import PriceList
from soulbox.core.store import get_model
from soulbox.events import main, usage, verify_log

from .helpers import audit_records, event, eventually, life, publish, settled


async def _start(
    kind: str, nats_server: NatsServer, tmp_path: Path, *, log_name: str | None = None, **env: str
) -> asyncio.subprocess.Process:
    environment = {
        **os.environ,
        "SOULBOX_NATS__URLS": f'["{nats_server.url}"]',
        "SOULBOX_LOG_LEVEL": "debug",
        **env,
    }
    log = (tmp_path / f"{log_name or kind}.log").open("wb")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "soulbox.events", kind, cwd=tmp_path, env=environment, stderr=log
        )
    finally:
        log.close()


async def _stop(process: asyncio.subprocess.Process, tmp_path: Path, kind: str) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError((tmp_path / f"{kind}.log").read_text()) from None


async def test_events_process_bills_chains_counts_and_exits_cleanly_on_sigterm(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, tmp_path: Path
) -> None:
    port = free_port()
    process = await _start("run", nats_server, tmp_path, SOULBOX_EVENTS__METRICS_PORT=str(port))
    key = names.billing_key("acme", "resize", "inv-1")
    try:
        done = event(EventType.COMPLETED, "inv-1", duration_ms=250.5, memory_limit_mb=256)
        await publish(js, [done])

        async def billed() -> bool:
            return await get_model(buckets.billing, key, UsageEntry) is not None

        async def counted() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return False
            return 'soulbox_invocations_total{outcome="success",tier="wasm"} 1.0' in text

        await eventually(billed, timeout=20)
        await eventually(counted, timeout=20, interval=0.2)
        await eventually(lambda: settled(js), timeout=20)
    finally:
        code = await _stop(process, tmp_path, "run")
    entry = await get_model(buckets.billing, key, UsageEntry)
    assert entry is not None and (entry.billable_ms, entry.memory_mb) == (251, 256)
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == 1
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log
    assert '"event": "events.batch"' in log and '"component": "events"' in log
    info = await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    assert str(info.config.ack_policy) in ("all", "AckPolicy.ALL")


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "run" in capsys.readouterr().err
    assert main(["billing"]) == 2  # the per-recorder processes are gone: one process runs all three


def test_public_api_is_exactly_all() -> None:
    public = {name for name in vars(soulbox.events) if not name.startswith("_")}
    modules = {
        "audit", "auditblocks", "auditexport", "auditlog", "billing", "chain", "cli", "consumer", "fanout", "metrics",
        "pipeline", "s3", "sandbox_metrics", "service", "streamread", "tenantkeys", "topology", "usage",
        "usageexport",
    }  # fmt: skip
    exported = set(soulbox.events.__all__)
    assert public - (modules - exported) - {"annotations"} == exported  # `usage` is a module and a function
    assert all(getattr(soulbox.events, name) is not None for name in soulbox.events.__all__)


async def test_a_killed_events_process_bills_and_audits_exactly_once(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, tmp_path: Path
) -> None:
    """SIGKILL the events process mid-batch, redeliver some events, start two (one serves, one stands
    by): totals, chain and metrics exact."""
    invocations = 3000
    events = [e for i in range(invocations) for e in life(f"inv-{i:05d}", duration_ms=float(i % 100) + 0.5)]
    await publish(js, events)
    # Short timeouts so that the killed process's batch and pin come back quickly.
    env = {
        "SOULBOX_EVENTS__BATCH": "200",
        "SOULBOX_LOG_LEVEL": "info",
        "SOULBOX_EVENTS__ACK_WAIT_S": "2",
        "SOULBOX_EVENTS__PIN_TIMEOUT_S": "3",
    }
    process = await _start("run", nats_server, tmp_path, SOULBOX_EVENTS__METRICS_PORT=str(free_port()), **env)

    async def mid_batch() -> bool:
        try:
            info = await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
        except NotFoundError:
            return False
        return bool(info.delivered.stream_seq and info.ack_floor.stream_seq and info.num_ack_pending)

    await eventually(mid_batch, timeout=30, interval=0.005)
    process.kill()
    await process.wait()
    info = await js.consumer_info(names.EVENTS_STREAM, names.EVENTS_CONSUMER)
    floor, pending = info.ack_floor.stream_seq, info.num_ack_pending
    assert 0 < floor < len(events) and pending > 0, (floor, pending)

    await publish(js, events[:400], msg_id_suffix=".again")  # redelivered copies on top
    ports = [free_port(), free_port()]
    processes = [
        await _start("run", nats_server, tmp_path, log_name=f"run-{n}", SOULBOX_EVENTS__METRICS_PORT=str(port), **env)
        for n, port in enumerate(ports)
    ]
    try:
        await eventually(lambda: settled(js), timeout=90, interval=0.2)
        counts = [await _counted(port) for port in ports]
    finally:
        for n, started in enumerate(processes):
            await _stop(started, tmp_path, f"run-{n}")

    report = await usage(buckets.billing, "acme", prices=PriceList(), granularity=None)
    assert report.total.invocations == invocations
    assert report.total.billable_ms == sum(math.ceil(i % 100 + 0.5) for i in range(invocations))
    chained = [record.origin for _, record in await audit_records(js)]
    assert len(chained) == len(set(chained)) == len(events)  # every event chained exactly once
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == len(events), verdict
    # One of the two was served every event after the kill (each counted once); the other stood by.
    assert min(counts) == 0 and len(events) - floor <= max(counts) <= len(events) - floor + 400, (counts, floor)


async def _counted(port: int) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("soulbox_lifecycle_events_total{")
        )
    )
