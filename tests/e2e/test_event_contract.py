"""Real lifecycle events, as published on NATS, against their documented contract and JSON Schema.

Every event type is produced through the API (a success, a failure, a timeout,
a retried asynchronous invocation, a sandbox created, paused, resumed and
killed); each event is read off ``sb.events.>`` as the raw msgpack map and
must validate against infra/schemas/lifecycle-event.schema.json and keep its
type's contract (version, id shape, the fields it always carries).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from jsonschema import Draft202012Validator

from soulbox.core.eventbatch import unpack_events
from soulbox.core.eventcontract import CONTRACT, violations
from tests.e2e.conftest import API_KEY
from tests.guests import wasm
from tests.stack import Stack

TERMINAL = frozenset({"invocation.completed", "invocation.failed", "invocation.timed_out"})
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "infra/schemas/lifecycle-event.schema.json").read_text())


def as_json(value: Any) -> Any:
    """The msgpack map as a JSON document: timestamps in RFC 3339."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return value


async def produce_every_event_type(client: httpx.AsyncClient, tag: str) -> tuple[set[str], str]:
    """Invocations and a sandbox that between them publish every event type; their ids."""

    async def deploy(name: str, guest: str, **form: str) -> None:
        files = {"module": (f"{name}.wasm", wasm(guest), "application/wasm")}
        response = await client.post("/v1/functions", data={"name": name, **form}, files=files)
        assert response.status_code in (200, 201), response.text

    await deploy(f"ok-{tag}", "hello")
    await deploy(f"trap-{tag}", "trap")
    await deploy(f"loop-{tag}", "loop", timeout_ms="300")
    retry = {"max_attempts": 2, "base_delay_ms": 50, "max_delay_ms": 50}
    await deploy(f"retry-{tag}", "trap", retry=json.dumps(retry))
    ids = set()
    for name, status in ((f"ok-{tag}", 200), (f"trap-{tag}", 502), (f"loop-{tag}", 504)):
        response = await client.post(f"/v1/functions/{name}/invoke")
        assert response.status_code == status, response.text
        ids.add(response.headers.get("x-invocation-id") or response.json()["error"]["invocation_id"])
    accepted = await client.post(f"/v1/functions/retry-{tag}/invoke", params={"async": "1"})
    ids.add(accepted.json()["id"])

    sandbox = (await client.post("/v1/sandboxes", json={"timeout_s": 60})).json()
    sid = sandbox["sandbox_id"]
    assert (await client.post(f"/v1/sandboxes/{sid}/pause")).json()["state"] == "paused"
    assert (await client.post(f"/v1/sandboxes/{sid}/resume")).json()["state"] == "running"
    assert (await client.delete(f"/v1/sandboxes/{sid}")).status_code == 204
    return ids, sid


async def test_every_published_event_keeps_its_contract_and_the_json_schema(stack: Stack) -> None:
    validator = Draft202012Validator(SCHEMA)
    nc = await nats.connect(stack.nats.url)
    seen: list[dict[str, Any]] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        seen.extend(unpack_events(msg.data))

    await nc.subscribe("sb.events.>", cb=collect)
    await nc.flush()
    tag = uuid.uuid4().hex[:6]
    try:
        async with httpx.AsyncClient(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=60) as client:
            ids, sid = await produce_every_event_type(client, tag)

        def ours() -> list[dict[str, Any]]:
            return [e for e in seen if e.get("invocation_id") in ids or e.get("sandbox_id") == sid]

        def done() -> bool:  # every type seen, and every invocation ended (the retried one ends last)
            ended = {e.get("invocation_id") for e in ours() if e["type"] in TERMINAL}
            return {e["type"] for e in ours()} == {t.value for t in CONTRACT} and ids <= ended

        deadline = asyncio.get_running_loop().time() + 30
        while not done():
            assert asyncio.get_running_loop().time() < deadline, sorted({e["type"] for e in ours()})
            await asyncio.sleep(0.1)
    finally:
        await nc.close()

    for event in ours():
        document = as_json(event)
        errors = [error.message for error in validator.iter_errors(document)]
        assert not errors, (document, errors)
        assert not violations(document), (document, violations(document))
        if event.get("sandbox_id"):
            assert event["invocation_id"] == "" and event["sandbox_id"] == sid
    # Each invocation has exactly one terminal event, whatever was retried or repaired (a re-publish
    # is seen here again but carries the same id, which the stream and every consumer de-duplicate).
    for invocation_id in ids:
        ends = {e["id"] for e in ours() if e.get("invocation_id") == invocation_id and e["type"] in TERMINAL}
        assert len(ends) == 1, (invocation_id, ends)
