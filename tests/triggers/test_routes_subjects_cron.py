"""HTTP routes, NATS subjects and cron schedules through the whole stack (two trigger services)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from datetime import datetime, timedelta

import httpx
from nats.aio.client import Client as NATS

from tests.triggers.helpers import Published, eventually, finished


async def test_http_route(api: httpx.AsyncClient) -> None:
    for tid, method, path in [("orders-get", "POST", "/orders/{id}"), ("orders-new", "POST", "/orders/new")]:
        r = await api.post(
            "/v1/triggers",
            json={"id": tid, "function": "echo", "kind": "http", "http": {"method": method, "path": path}},
        )
        assert r.status_code == 201, r.text
    r = await api.post("/run/default/orders/42", content=b"order 42")
    assert r.status_code == 200 and r.content == b"order 42"
    record = (await api.get(f"/v1/invocations/{r.headers['x-invocation-id']}")).json()
    assert record["function"] == "echo" and record["status"] == "completed"
    literal = await api.post("/run/default/orders/new", content=b"new")  # the literal route wins over {id}
    assert literal.status_code == 200
    assert (await api.get("/run/default/orders/42")).json()["error"]["code"] == "route_not_found"  # method matters
    assert (await api.post("/run/default/nothing/here")).status_code == 404
    clash = await api.post(
        "/v1/triggers",
        json={"id": "dup", "function": "echo", "kind": "http", "http": {"method": "POST", "path": "/orders/{x}"}},
    )
    assert clash.status_code == 409


async def test_nats_subject_with_and_without_reply(api: httpx.AsyncClient, client: NATS) -> None:
    r = await api.post(
        "/v1/triggers",
        json={"id": "on-order", "function": "echo", "kind": "nats", "nats": {"subject": "shop.orders.*"}},
    )
    assert r.status_code == 201
    published = await Published().start(client)
    try:

        async def answered() -> bool:
            try:
                reply = await client.request("shop.orders.created", b"order-1", timeout=2)
            except Exception:
                return False  # the trigger services have not subscribed yet
            assert reply.data == b"order-1"
            assert reply.headers is not None and reply.headers["Soulbox-Status"] == "completed"
            return True

        await eventually(answered)
        before = len(published.of("on-order"))
        for n in range(10):
            await client.publish("shop.orders.paid", f"paid-{n}".encode())
        await client.flush()
        await eventually(lambda: _count(published, "on-order", before + 10))
        await asyncio.sleep(0.5)
        inputs = [r.input for r in published.of("on-order")[before:]]
        assert sorted(inputs) == sorted(f"paid-{n}".encode() for n in range(10))  # each once, by one service
        records = [await finished(api, r.id) for r in published.of("on-order")[before:]]
        assert all(rec["status"] == "completed" for rec in records)
    finally:
        await published.stop()


async def _count(published: Published, trigger: str, n: int) -> bool:
    return len(published.of(trigger)) >= n


async def test_cron_fires_once_per_tick_with_two_services(api: httpx.AsyncClient, client: NATS) -> None:
    published = await Published().start(client)
    try:
        r = await api.post(
            "/v1/triggers",
            json={
                "id": "every-second",
                "function": "echo",
                "kind": "cron",
                "cron": {"expression": "* * * * * *", "timezone": "America/New_York"},
            },
        )
        assert r.status_code == 201, r.text
        await eventually(lambda: _count(published, "every-second", 4))
        assert (await api.delete("/v1/triggers/every-second")).status_code == 204
        await asyncio.sleep(1.5)
        fired = published.of("every-second")
        ids = Counter(r.id for r in fired)
        assert all(n == 1 for n in ids.values()), ids  # no tick published twice, not even to be deduplicated
        ticks = sorted(datetime.fromisoformat(json.loads(r.input)["tick"]) for r in fired)
        # Whole, distinct seconds; a tick may be skipped if the box stalls past it, never doubled.
        assert all(b > a and (b - a) % timedelta(seconds=1) == timedelta(0) for a, b in itertools.pairwise(ticks))
        assert ticks[0].utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))  # read in the trigger's zone
        record = await finished(api, fired[0].id)
        assert record["status"] == "completed" and json.loads(record["stdout"]["data"])["trigger"] == "every-second"
    finally:
        await published.stop()
