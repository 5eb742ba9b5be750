"""Replayed webhooks through the whole stack: a signed request is accepted once, a new one always."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from nats.aio.client import Client as NATS

from soulbox.core.schemas import EventType
from tests.guests import wasm
from tests.triggers.helpers import Published, deploy, events_of, eventually, finished
from tests.triggers.test_webhooks import SECRET, make_hook, signed


async def audit_records(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The whole audit log, page by page."""
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await api.get("/v1/audit", params={"after": after, "limit": 1000})).json()
        records += page["records"]
        if page["next"] == after:
            return records
        after = page["next"]


async def started(nc: NATS, invocation_ids: list[str]) -> int:
    """How many of these invocations have a ``started`` lifecycle event."""
    count = 0
    for invocation_id in invocation_ids:
        count += sum(1 for e in await events_of(nc, invocation_id) if e.type is EventType.STARTED)
    return count


async def test_same_request_twice_runs_once(api: httpx.AsyncClient, client: NATS) -> None:
    await make_hook(api, "replayed", "hmac")
    published = await Published().start(client)
    body = b'{"event":"paid"}'
    headers = signed("hmac", body, at=int(time.time()))
    first = await api.post("/v1/hooks/default/replayed", content=body, headers=headers)
    assert first.status_code == 202, first.text
    await finished(api, first.json()["id"])
    again = await api.post("/v1/hooks/default/replayed", content=body, headers=headers)
    assert again.status_code == 401
    replayed = {"code": "signature_replayed", "message": "this signed request was already received"}
    assert again.json()["error"] == replayed
    # The same signature spelt differently (sha256= prefix, upper case) is the same request.
    respelt = {**headers, "X-Soulbox-Signature": "sha256=" + headers["X-Soulbox-Signature"].upper()}
    assert (await api.post("/v1/hooks/default/replayed", content=body, headers=respelt)).status_code == 401
    await asyncio.sleep(0.5)  # a wrongly accepted replay would have been published by now
    await published.stop()
    ids = [r.id for r in published.of("replayed")]
    assert ids == [first.json()["id"]]
    assert await started(client, ids) == 1

    async def refusals() -> list[dict[str, Any]]:
        found = [
            r
            for r in await audit_records(api)
            if r["resource"] == "/v1/hooks/default/replayed" and r["result"] == "401"
        ]
        return found if len(found) >= 2 else []

    # Audited like any refused call: the API-call record with the route and the status.
    refused = await eventually(refusals)
    assert {r["action"] for r in refused} == {"POST /v1/hooks/{tenant}/{trigger_id}"}


async def test_concurrent_replays_accept_one(api: httpx.AsyncClient, client: NATS) -> None:
    await make_hook(api, "raced", "stripe")
    published = await Published().start(client)
    body = b'{"event":"raced"}'
    headers = signed("stripe", body, at=int(time.time()))
    answers = await asyncio.gather(
        *(api.post("/v1/hooks/default/raced", content=body, headers=headers) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] + [401] * 7, [r.text for r in answers]
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 401} == {"signature_replayed"}
    await asyncio.sleep(0.5)
    await published.stop()
    assert len(published.of("raced")) == 1


async def test_different_requests_in_the_window_all_run(api: httpx.AsyncClient) -> None:
    await make_hook(api, "distinct", "stripe")
    now = int(time.time())
    bodies = [b'{"n":1}', b'{"n":2}', b'{"n":1}']  # the third: same body, signed a second later
    stamps = [now, now, now + 1]
    ids = []
    for body, at in zip(bodies, stamps, strict=True):
        r = await api.post("/v1/hooks/default/distinct", content=body, headers=signed("stripe", body, at=at))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    for invocation_id, body in zip(ids, bodies, strict=True):
        record = await finished(api, invocation_id)
        assert record["status"] == "completed" and record["stdout"]["data"] == body.decode()


async def test_github_replays_are_told_apart_by_delivery(api: httpx.AsyncClient, client: NATS) -> None:
    await make_hook(api, "gh-deliveries", "github")
    published = await Published().start(client)
    body = b'{"action":"opened"}'
    headers = signed("github", body, at=0)
    url = "/v1/hooks/default/gh-deliveries"
    one = await api.post(url, content=body, headers={**headers, "X-GitHub-Delivery": "7f3c-0001"})
    two = await api.post(url, content=body, headers={**headers, "X-GitHub-Delivery": "7f3c-0002"})
    assert one.status_code == 202 and two.status_code == 202
    again = await api.post(url, content=body, headers={**headers, "X-GitHub-Delivery": "7f3c-0001"})
    assert again.status_code == 401 and again.json()["error"]["code"] == "signature_replayed"
    # Without a delivery id the body identifies the request.
    plain = await api.post(url, content=body, headers=headers)
    assert plain.status_code == 202
    assert (await api.post(url, content=body, headers=headers)).json()["error"]["code"] == "signature_replayed"
    await asyncio.sleep(0.5)
    await published.stop()
    assert len(published.of("gh-deliveries")) == 3


async def test_request_that_queued_nothing_may_be_retried(api: httpx.AsyncClient) -> None:
    await deploy(api, "comes-back", wasm("echo"))
    webhook = {"scheme": "hmac", "secret": SECRET}
    r = await api.post(
        "/v1/triggers", json={"id": "retried", "function": "comes-back", "kind": "webhook", "webhook": webhook}
    )
    assert r.status_code == 201, r.text
    body = b"retry me"
    headers = signed("hmac", body, at=int(time.time()))
    assert (await api.delete("/v1/functions/comes-back")).status_code == 204
    gone = await api.post("/v1/hooks/default/retried", content=body, headers=headers)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "function_not_found"
    await deploy(api, "comes-back", wasm("echo"))

    async def accepted() -> httpx.Response | None:
        r = await api.post("/v1/hooks/default/retried", content=body, headers=headers)
        return r if r.status_code == 202 else None

    r = await eventually(accepted)  # the registry may serve the deleted function for a moment
    assert (await finished(api, r.json()["id"]))["stdout"]["data"] == "retry me"
