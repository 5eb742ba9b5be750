"""``python -m soulbox.events <kind>`` as a real process, and the public surface."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

import soulbox.events
from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.natsserver import NatsServer, free_port
from soulbox.core.schemas import EventType, UsageEntry
from soulbox.core.store import get_model
from soulbox.events import main

from .helpers import event, eventually, publish


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
    assert main("nonsense") == 2
    assert "billing|audit|metrics" in capsys.readouterr().err


def test_public_api_is_exactly_all() -> None:
    public = {name for name in vars(soulbox.events) if not name.startswith("_")}
    modules = {"audit", "billing", "consumer", "metrics", "metrics_server", "service"}
    assert public - modules - {"annotations"} == set(soulbox.events.__all__)
    assert all(getattr(soulbox.events, name) is not None for name in soulbox.events.__all__)
