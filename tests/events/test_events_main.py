"""``python -m soulbox.events <kind>`` as a real process, and the public surface."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext, api

import soulbox.events
from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.natsserver import NatsServer, free_port
from soulbox.core.schemas import EventType, UsageEntry
from soulbox.core.settings import PriceList
from soulbox.core.store import get_model
from soulbox.events import main, usage, verify_log

from .helpers import event, eventually, life, publish, settled


async def _start(kind: str, nats_server: NatsServer, tmp_path: Path, **env: str) -> asyncio.subprocess.Process:
    environment = {
        **os.environ,
        "SOULBOX_NATS__URLS": f'["{nats_server.url}"]',
        "SOULBOX_LOG_LEVEL": "debug",
        **env,
    }
    log = (tmp_path / f"{kind}.log").open("wb")
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


async def test_billing_process_bills_and_exits_cleanly_on_sigterm(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, tmp_path: Path
) -> None:
    process = await _start("billing", nats_server, tmp_path)
    try:
        done = event(EventType.COMPLETED, "inv-1", duration_ms=250.5, memory_limit_mb=256)
        await publish(js, [done])
        key = names.billing_key("acme", "resize", "inv-1")

        async def billed() -> bool:
            return await get_model(buckets.billing, key, UsageEntry) is not None

        await eventually(billed, timeout=20)
    finally:
        code = await _stop(process, tmp_path, "billing")
    entry = await get_model(buckets.billing, key, UsageEntry)
    assert entry is not None and (entry.billable_ms, entry.memory_mb) == (251, 256)
    log = (tmp_path / "billing.log").read_text()
    assert code == 0, log
    assert '"event": "events.batch"' in log and '"component": "events.billing"' in log


async def test_metrics_process_serves_metrics(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, tmp_path: Path
) -> None:
    port = free_port()
    process = await _start("metrics", nats_server, tmp_path, SOULBOX_EVENTS__METRICS_PORT=str(port))
    try:
        await publish(js, [event(EventType.COMPLETED, "inv-1")])

        async def counted() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return False
            return 'soulbox_invocations_total{outcome="success",tier="wasm"} 1.0' in text

        await eventually(counted, timeout=20, interval=0.2)
    finally:
        code = await _stop(process, tmp_path, "metrics")
    assert code == 0, (tmp_path / "metrics.log").read_text()


def test_unknown_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "billing" in capsys.readouterr().err


def test_public_api_is_exactly_all() -> None:
    public = {name for name in vars(soulbox.events) if not name.startswith("_")}
    modules = {
        "audit", "auditexport", "auditlog", "billing", "chain", "cli", "consumer", "fetch", "metrics",
        "pipeline", "s3", "sandbox_metrics", "service", "streamread", "tenantkeys", "usage", "usageexport",
    }  # fmt: skip
    exported = set(soulbox.events.__all__)
    assert public - (modules - exported) - {"annotations"} == exported  # `usage` is a module and a function
    assert all(getattr(soulbox.events, name) is not None for name in soulbox.events.__all__)


async def test_killed_consumers_bill_and_audit_exactly_once(
    nats_server: NatsServer, js: JetStreamContext, buckets: Buckets, tmp_path: Path
) -> None:
    """SIGKILL billing and audit mid-batch, redeliver some events, restart: totals and chain exact."""
    for durable in ("billing", "audit"):  # a short ack wait so the killed batch comes back quickly
        await js.delete_consumer(names.EVENTS_STREAM, durable)
        await js.add_consumer(
            names.EVENTS_STREAM,
            api.ConsumerConfig(
                durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=2.0, max_ack_pending=20_000
            ),
        )
    invocations = 3000
    events = [e for i in range(invocations) for e in life(f"inv-{i:05d}", duration_ms=float(i % 100) + 0.5)]
    await publish(js, events)
    env = {"SOULBOX_EVENTS__BATCH": "200", "SOULBOX_LOG_LEVEL": "info"}
    processes = {kind: await _start(kind, nats_server, tmp_path, **env) for kind in ("billing", "audit")}

    async def mid_batch(durable: str) -> bool:
        info = await js.consumer_info(names.EVENTS_STREAM, durable)
        return bool(info.delivered.stream_seq and info.ack_floor.stream_seq and info.num_ack_pending)

    killed_at = {}
    for kind, process in processes.items():
        await eventually(lambda kind=kind: mid_batch(kind), timeout=30, interval=0.005)  # type: ignore[misc]
        process.kill()
        await process.wait()
        info = await js.consumer_info(names.EVENTS_STREAM, kind)
        killed_at[kind] = (info.ack_floor.stream_seq, info.num_ack_pending)
    assert all(0 < floor < len(events) and pending > 0 for floor, pending in killed_at.values()), killed_at

    await publish(js, events[:400], msg_id_suffix=".again")  # redelivered copies on top
    processes = {kind: await _start(kind, nats_server, tmp_path, **env) for kind in ("billing", "audit")}
    try:
        for kind in processes:
            await eventually(lambda kind=kind: settled(js, kind), timeout=60, interval=0.2)  # type: ignore[misc]
    finally:
        for kind, process in processes.items():
            await _stop(process, tmp_path, kind)

    report = await usage(buckets.billing, "acme", prices=PriceList(), granularity=None)
    assert report.total.invocations == invocations
    assert report.total.billable_ms == sum(math.ceil(i % 100 + 0.5) for i in range(invocations))
    audit = await js.stream_info(names.AUDIT_STREAM)
    assert audit.state.messages == len(events)  # every event chained exactly once
    verdict = await verify_log(js)
    assert verdict.ok and verdict.records == len(events), verdict
