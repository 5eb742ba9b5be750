"""Delivery guarantees through the whole stack: retries with backoff, dead letters and their replay."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
from nats.aio.client import Client as NATS

from soulbox.core.codec import decode
from soulbox.core.schemas import ConcurrencyLeases
from tests.guests import wasm
from tests.stack import Stack
from tests.triggers.helpers import deploy, events_of, eventually, finished


async def dead_letters(api: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    r = await api.get("/v1/dead-letters")
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()["dead_letters"]}


async def test_failing_function_retried_then_dead_lettered_and_replayed(api: httpx.AsyncClient, client: NATS) -> None:
    retry = {"max_attempts": 3, "base_delay_ms": 200, "max_delay_ms": 1000}
    spec = await deploy(api, "flaky", wasm("trap"), retry=json.dumps(retry), timeout_ms="2000")
    assert spec["retry"] == retry

    accepted = await api.post("/v1/functions/flaky/invoke?async=1", content=b"input-1")
    assert accepted.status_code == 202
    invocation_id = accepted.json()["id"]
    letter = await eventually(lambda: _letter(api, invocation_id), timeout=30)
    assert letter["attempts"] == 3 and letter["status"] == "failed" and letter["outcome"] == "function_error"
    assert letter["error"]["kind"] == "trap" and letter["input_bytes"] == 7

    events = await events_of(client, invocation_id)
    kinds = Counter(e.type.value for e in events)
    assert kinds["invocation.started"] == 3  # three attempts ran
    assert kinds["invocation.retrying"] == 2 and kinds["invocation.failed"] == 1  # one terminal event
    retrying = sorted((e for e in events if e.type.value == "invocation.retrying"), key=lambda e: e.attempt)
    started = {e.attempt: e.at for e in events if e.type.value == "invocation.started"}
    # Backoff: attempt 2 starts at least 100 ms (half of 200 ms, the jitter floor) after attempt 1 failed.
    assert (started[2] - retrying[0].at).total_seconds() >= 0.1
    assert (started[3] - retrying[1].at).total_seconds() >= 0.2
    record = (await api.get(f"/v1/invocations/{invocation_id}")).json()
    assert record["status"] == "failed" and record["attempt"] == 3

    replay = await api.post(f"/v1/dead-letters/{invocation_id}/replay")
    assert replay.status_code == 202, replay.text
    replay_id = replay.json()["id"]
    assert replay_id != invocation_id
    assert invocation_id not in await dead_letters(api)
    again = await eventually(lambda: _letter(api, replay_id), timeout=30)  # the trap still traps
    assert again["attempts"] == 3
    missing = await api.post(f"/v1/dead-letters/{invocation_id}/replay")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "dead_letter_not_found"


async def test_sync_callers_get_the_first_failure_and_no_dead_letter(api: httpx.AsyncClient, client: NATS) -> None:
    retry = {"max_attempts": 3, "base_delay_ms": 100, "max_delay_ms": 100}
    await deploy(api, "flaky-sync", wasm("trap"), retry=json.dumps(retry))
    r = await api.post("/v1/functions/flaky-sync/invoke")
    assert r.status_code == 502
    invocation_id = r.json()["error"]["invocation_id"]
    kinds = Counter(e.type.value for e in await events_of(client, invocation_id))
    assert kinds["invocation.started"] == 1 and kinds["invocation.failed"] == 1
    assert invocation_id not in await dead_letters(api)


async def _letter(api: httpx.AsyncClient, invocation_id: str) -> dict[str, object] | None:
    return (await dead_letters(api)).get(invocation_id)


async def test_concurrency_limit_held_across_two_schedulers(api: httpx.AsyncClient, client: NATS, stack: Stack) -> None:
    if "scheduler-2" not in stack.processes:
        stack.spawn("scheduler-2", "soulbox.scheduler")
    await deploy(api, "limited", wasm("slow"), max_concurrency="2", timeout_ms="5000")
    accepted = await asyncio.gather(*(api.post("/v1/functions/limited/invoke?async=1") for _ in range(10)))
    ids = [r.json()["id"] for r in accepted]
    for invocation_id in ids:
        record = await finished(api, invocation_id, timeout=60)
        assert record["status"] == "completed"
    spans = []
    for invocation_id in ids:
        events = {e.type.value: e.at for e in await events_of(client, invocation_id)}
        spans.append((events["invocation.started"], events["invocation.completed"]))
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2, spans  # the limit was reached and never passed (the worker could run more)
    leases = await client.jetstream().key_value("sb_concurrency")
    assert not decode(ConcurrencyLeases, (await leases.get("default.limited")).value or b"").leases
