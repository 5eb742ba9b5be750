"""What the trigger tests share: polling the API and watching the invocation stream's subjects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from soulbox.core.codec import decode
from soulbox.core.eventbatch import decode_events
from soulbox.core.schemas import InvocationRequest, LifecycleEvent


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def finished(api: httpx.AsyncClient, invocation_id: str, timeout: float = 15.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await api.get(f"/v1/invocations/{invocation_id}")
        body: dict[str, Any] = r.json()
        return body if r.status_code == 200 and body["status"] in ("completed", "failed", "timed_out") else None

    result: dict[str, Any] = await eventually(check, timeout)
    return result


class Published:
    """Every invocation request published (core NATS sees each publish, even ones the stream drops)."""

    def __init__(self) -> None:
        self.requests: list[InvocationRequest] = []
        self._sub: Subscription | None = None

    async def start(self, nc: NATS) -> Published:
        async def on(msg: Msg) -> None:
            self.requests.append(decode(InvocationRequest, msg.data))

        self._sub = await nc.subscribe("sb.invocations.>", cb=on)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def of(self, trigger: str) -> list[InvocationRequest]:
        return [r for r in self.requests if r.trigger == trigger]


async def events_of(nc: NATS, invocation_id: str) -> list[LifecycleEvent]:
    """Every lifecycle event of one invocation stored so far, in stream order."""
    js = nc.jetstream()
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL)
    sub = await js.pull_subscribe("sb.events.>", stream="SB_EVENTS", config=config)
    found: list[LifecycleEvent] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            msgs = await sub.fetch(min(pending, 512), timeout=5)
            for msg in msgs:
                found.extend(e for e in decode_events(msg.data) if e.invocation_id == invocation_id)
            pending = (msgs[-1].metadata.num_pending or 0) if msgs else 0
    finally:
        await sub.unsubscribe()
    return found


async def deploy(api_: httpx.AsyncClient, name: str, module: bytes, **fields: str) -> dict[str, Any]:
    r = await api_.post(
        "/v1/functions", data={"name": name, **fields}, files={"module": (f"{name}.wasm", module, "application/wasm")}
    )
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body
