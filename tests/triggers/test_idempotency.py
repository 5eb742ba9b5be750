"""``Idempotency-Key``: repeats within the window get the first invocation's result."""

from __future__ import annotations

import asyncio

import httpx

from tests.triggers.helpers import finished


async def test_sync_repeats_get_the_first_result(api: httpx.AsyncClient) -> None:
    first = await api.post("/v1/functions/echo/invoke", content=b"first", headers={"Idempotency-Key": "order-7"})
    assert first.status_code == 200 and first.content == b"first"
    assert "idempotent-replayed" not in first.headers
    again = await api.post("/v1/functions/echo/invoke", content=b"second", headers={"Idempotency-Key": "order-7"})
    assert again.status_code == 200 and again.content == b"first"
    assert again.headers["x-invocation-id"] == first.headers["x-invocation-id"]
    assert again.headers["idempotent-replayed"] == "true"
    other_function = await api.post("/v1/functions/slow/invoke", headers={"Idempotency-Key": "order-7"})
    assert other_function.headers["x-invocation-id"] != first.headers["x-invocation-id"]  # keys are per function


async def test_concurrent_async_repeats_start_one_invocation(api: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(
            api.post("/v1/functions/echo/invoke?async=1", content=f"{n}".encode(), headers={"Idempotency-Key": "k-42"})
            for n in range(8)
        )
    )
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 7
    record = await finished(api, ids.pop())
    assert record["status"] == "completed"


async def test_bad_key(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/functions/echo/invoke", headers={"Idempotency-Key": "x" * 256})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
