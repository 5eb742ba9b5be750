"""Rate limits and quotas: shared across gateway replicas through NATS, answered as 429 + Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from starlette.types import ASGIApp, Receive, Scope, Send

from soulbox.core import names
from soulbox.core.bus import Buckets, connect
from soulbox.core.codec import encode
from soulbox.core.ledger import UsageEntry
from soulbox.core.sandboxes import SandboxRecord, SandboxState
from soulbox.core.schemas import LimitsRecord, WorkerHeartbeat
from soulbox.core.settings import Settings
from soulbox.gateway import limits_cli
from soulbox.gateway.app import create_app
from soulbox.gateway.limits import LimitsService, key_token, put_limits
from soulbox.gateway.principal import SCOPE_KEY, Principal
from soulbox.gateway.quotas import UsageLedger, next_day, next_month
from soulbox.gateway.ratelimit import RateLimiter
from tests.events.helpers import eventually as events_eventually


async def window_start(window_s: float, need_s: float) -> None:
    """Wait, if needed, so that at least ``need_s`` of the current window is left."""
    left = window_s - time.time() % window_s
    if left < need_s:
        await asyncio.sleep(left + 0.01)


async def eventually(check: Callable[[], bool]) -> None:
    async def checked() -> bool:
        return check()

    await events_eventually(checked, timeout=5)


async def flood(limiter: RateLimiter, scope: str, per_s: float, n: int) -> int:
    admitted = 0
    for _ in range(n):
        if await limiter.admit(scope, per_s) is None:
            admitted += 1
    return admitted


async def test_replicas_together_admit_exactly_the_limit(settings: Settings, buckets: Buckets) -> None:
    # Two gateway replicas: separate connections, one shared counter per window.
    ncs = [await connect(settings, name=f"gw-{i}") for i in range(2)]
    try:
        replicas = [RateLimiter(nc.jetstream(), window_s=5.0, chunk_fraction=0.05) for nc in ncs]
        await window_start(5.0, 3.0)
        # 20/s over a 5 s window: 100 requests; each replica tries 150, concurrently (4 tasks each).
        tasks = [flood(r, "t.acme", 20, 150 // 4) for r in replicas for _ in range(4)]
        admitted = sum(await asyncio.gather(*tasks))
        assert admitted == 100
        # A chunk is 5 requests: ~20 claims in all, not one round trip per request.
        claims = sum(r.claims for r in replicas)
        assert claims <= 100 // 5 + 2 * 4
        # Refused from local state: more requests in the window cost no round trip.
        wait = await replicas[0].admit("t.acme", 20)
        assert wait is not None and 0 < wait <= 5.0
        assert sum(r.claims for r in replicas) == claims
        # Another scope has its own counter.
        assert await replicas[1].admit("t.other", 20) is None
    finally:
        for nc in ncs:
            await nc.close()


async def test_the_next_window_admits_again(js: JetStreamContext, buckets: Buckets) -> None:
    limiter = RateLimiter(js, window_s=1.0)
    await window_start(1.0, 0.5)
    assert await flood(limiter, "k.key1", 3, 10) == 3
    wait = await limiter.admit("k.key1", 3)
    assert wait is not None and wait <= 1.0
    await asyncio.sleep(wait + 0.01)
    assert await limiter.admit("k.key1", 3) is None


def as_principal(app: ASGIApp, who: Principal) -> ASGIApp:
    """What an authentication middleware does: put the caller's principal into the scope."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = who
        await app(scope, receive, send)

    return wrapped


@pytest_asyncio.fixture
async def gateway(settings: Settings, buckets: Buckets) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings.model_copy(update={"limits": settings.limits.model_copy(update={"window_s": 10.0})})
    app = create_app(settings)
    who = Principal(tenant="acme", subject="key-a", key_id="sb_key_a")
    transport = httpx.ASGITransport(app=as_principal(app, who))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def eventually_status(client: httpx.AsyncClient, method: str, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 5
    while True:
        response = await client.request(method, path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.05)


async def test_gateway_answers_429_per_key_and_per_tenant(gateway: httpx.AsyncClient, buckets: Buckets) -> None:
    await window_start(10.0, 6.0)
    # The key's own record: 0.5/s over a 10 s window = 5 requests.
    await put_limits(buckets.limits, LimitsRecord(requests_per_s=0.5), key_id="sb_key_a")
    refused = await eventually_status(gateway, "GET", "/v1/functions", 429)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "API key" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    # E2B's paths answer in E2B's shape.
    e2b = await gateway.get("/v2/sandboxes")
    assert e2b.status_code == 429
    assert e2b.json()["code"] == 429 and e2b.json()["error_code"] == "rate_limited"
    assert "retry-after" in e2b.headers
    # Health and the document are never limited.
    assert (await gateway.get("/healthz")).status_code == 200

    # The tenant's limit applies over all its keys.
    await put_limits(buckets.limits, LimitsRecord(requests_per_s=1000), key_id="sb_key_a")
    await put_limits(buckets.limits, LimitsRecord(requests_per_s=0.3), tenant="acme")
    refused = await eventually_status(gateway, "GET", "/v1/limits", 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "API key" not in refused.json()["error"]["message"]


def usage(tenant: str, unit: str, at: datetime, *, gb_seconds: float = 0.001) -> tuple[str, UsageEntry]:
    entry = UsageEntry(
        invocation_id=unit,
        tenant=tenant,
        function="resize",
        tier=None,
        outcome=None,
        at=at,
        billable_ms=1,
        memory_mb=64,
        gb_seconds=gb_seconds,
    )
    return names.billing_key(tenant, "resize", unit), entry


async def test_ledger_counts_today_and_this_month_once(buckets: Buckets) -> None:
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    for key, entry in (
        usage("acme", "inv-1", now, gb_seconds=1.5),
        usage("acme", "inv-2", now, gb_seconds=0.5),
        usage("acme", "inv-old", month_start - timedelta(days=1), gb_seconds=100),  # last month
        usage("other", "inv-3", now),
    ):
        await buckets.billing.put(key, encode(entry))
    ledger = UsageLedger(buckets.billing)
    await ledger.start()
    try:
        assert ledger.invocations_today("acme") == 2
        assert ledger.gb_seconds_this_month("acme") == pytest.approx(2.0)
        key, entry = usage("acme", "inv-1", now, gb_seconds=1.5)
        await buckets.billing.put(key, encode(entry))  # a redelivered event rewrites its entry
        fourth, entry = usage("acme", "inv-4", now)
        await buckets.billing.put(fourth, encode(entry))
        await eventually(lambda: ledger.invocations_today("acme") == 3)
        assert ledger.gb_seconds_this_month("acme") == pytest.approx(2.001)
        refusal = ledger.check("acme", invocations_per_day=3, gb_seconds_per_month=None)
        assert refusal is not None
        assert refusal.retry_after_s == pytest.approx((next_day(now) - now).total_seconds(), abs=5)
        refusal = ledger.check("acme", invocations_per_day=None, gb_seconds_per_month=2.0)
        assert refusal is not None and "GB-seconds" in refusal.message
        assert refusal.retry_after_s == pytest.approx((next_month(now) - now).total_seconds(), abs=5)
        assert ledger.check("acme", invocations_per_day=4, gb_seconds_per_month=3.0) is None
        await buckets.billing.delete(key)  # erasure removes entries: they stop counting
        await eventually(lambda: ledger.invocations_today("acme") == 2)
    finally:
        await ledger.stop()


async def test_gateway_refuses_invocations_past_a_quota(gateway: httpx.AsyncClient, buckets: Buckets) -> None:
    now = datetime.now(UTC)
    for unit in ("inv-1", "inv-2"):
        key, entry = usage("acme", unit, now)
        await buckets.billing.put(key, encode(entry))
    await put_limits(buckets.limits, LimitsRecord(invocations_per_day=2), tenant="acme")
    refused = await eventually_status(gateway, "POST", "/v1/functions/resize/invoke", 429)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    until_midnight = (next_day(now) - now).total_seconds()
    assert abs(int(refused.headers["retry-after"]) - until_midnight) < 10
    # Webhooks and HTTP routes start invocations too; reads do not.
    assert (await gateway.post("/v1/hooks/acme/any")).status_code == 429
    assert (await gateway.get("/run/acme/anything")).status_code == 429
    shown = (await gateway.get("/v1/limits")).json()
    assert shown["limits"]["invocations_per_day"] == 2
    assert shown["usage"]["invocations_today"] == 2
    # Raised quota: the call reaches the handler again (no such function here).
    await put_limits(buckets.limits, LimitsRecord(invocations_per_day=3), tenant="acme")
    assert (await eventually_status(gateway, "POST", "/v1/functions/resize/invoke", 404)).status_code == 404


async def test_gateway_refuses_sandboxes_past_the_concurrency_quota(
    gateway: httpx.AsyncClient, buckets: Buckets
) -> None:
    now = datetime.now(UTC)
    await buckets.workers.put(
        "w1",
        encode(WorkerHeartbeat(worker_id="w1", tiers=[], capacity=4, in_flight=0, pid=1, host="h", started_at=now)),
    )
    record = SandboxRecord(
        sandbox_id="sbx00000001",
        tenant="acme",
        template="base",
        worker_id="w1",
        state=SandboxState.PAUSED,
        started_at=now,
        end_at=now + timedelta(hours=1),
        cpu_count=1,
        memory_mb=512,
        disk_mb=1024,
        envd_version="0.1.1",
        access_token="t",
    )
    await buckets.sandboxes.put(record.sandbox_id, encode(record))
    await put_limits(buckets.limits, LimitsRecord(concurrent_sandboxes=1), tenant="acme")
    refused = await eventually_status(gateway, "POST", "/v1/sandboxes", 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert refused.headers["retry-after"] == str(math.ceil(10.0))
    e2b = await gateway.post("/v2/sandboxes", json={"templateID": "base"})
    assert e2b.status_code == 429 and e2b.json()["error_code"] == "quota_exceeded"


async def test_operators_set_show_and_clear_limits(
    settings: Settings, buckets: Buckets, js: JetStreamContext, capsys: pytest.CaptureFixture[str]
) -> None:
    service = LimitsService(settings.limits, js, buckets.limits, buckets.billing)
    await service.start()
    try:
        argv = ["set", "--tenant", "acme", "--requests-per-s", "5", "--invocations-per-day", "100"]
        assert await limits_cli._run(limits_cli._parser().parse_args(argv), settings) == 0
        await eventually(lambda: service.for_tenant("acme").requests_per_s == 5)
        assert service.for_tenant("acme").invocations_per_day == 100
        assert service.for_tenant("acme").gb_seconds_per_month is None  # the settings' default: unlimited
        assert service.for_tenant("other").requests_per_s is None
        await limits_cli._run(
            limits_cli._parser().parse_args(["set", "--key", "sb key/1", "--requests-per-s", "2"]), settings
        )
        await eventually(lambda: service.key_rate(key_token("sb key/1")) == 2)
        capsys.readouterr()
        await limits_cli._run(limits_cli._parser().parse_args(["show", "--tenant", "acme"]), settings)
        assert json.loads(capsys.readouterr().out)["requests_per_s"] == 5
        await limits_cli._run(limits_cli._parser().parse_args(["clear", "--tenant", "acme"]), settings)
        await eventually(lambda: service.for_tenant("acme").requests_per_s is None)
    finally:
        await service.stop()


async def test_two_gateways_share_a_tenants_limit(settings: Settings, buckets: Buckets) -> None:
    tuned = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"window_s": 10.0, "requests_per_s": 3.0})}
    )
    apps = [create_app(tuned) for _ in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://gw"))
            )
        await window_start(10.0, 6.0)
        statuses = [(await clients[i % 2].get("/v1/functions")).status_code for i in range(60)]
    # 3/s over a 10 s window: 30 requests admitted by the two gateways together, the rest refused.
    assert statuses.count(200) == 30
    assert statuses.count(429) == 30
