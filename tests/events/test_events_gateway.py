"""The gateway's billing and audit routes, in process, with the real audit consumer running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.schemas import EventType, FunctionSpec, InvocationRecord, Status
from soulbox.core.settings import Settings
from soulbox.events import BillingRecorder, run
from soulbox.gateway.app import create_app

from .helpers import audit_records, event, eventually, life, process_settings, publish


@pytest_asyncio.fixture
async def api(settings: Settings, buckets: Buckets) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app (lifespan and all) plus the events consumer, both in this process."""
    stop = asyncio.Event()
    audit = asyncio.create_task(run(process_settings(settings), stop))
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client
    stop.set()
    await asyncio.wait_for(audit, 15)


async def _seed(nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings) -> None:
    spec = FunctionSpec(tenant="acme", name="resize", artifact="0" * 64, artifact_size=1)
    await buckets.functions.put(names.function_key("acme", "resize"), encode(spec))
    other = FunctionSpec(tenant="other", name="keep", artifact="0" * 64, artifact_size=1)
    await buckets.functions.put(names.function_key("other", "keep"), encode(other))
    for tenant, inv in (("acme", "inv-1"), ("acme", "inv-2"), ("other", "inv-3")):
        record = InvocationRecord(
            id=inv,
            tenant=tenant,
            function="resize",
            status=Status.COMPLETED,
            accepted_at=datetime(2025, 3, 1, tzinfo=UTC),
            stdout=b"\xff\x00bytes",
        )
        await buckets.invocations.put(inv, encode(record))
    billed = [
        event(EventType.COMPLETED, "inv-1", at=datetime(2025, 3, 1, 10, 5, tzinfo=UTC), duration_ms=1000),
        event(EventType.COMPLETED, "inv-2", at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC), duration_ms=500),
        event(EventType.COMPLETED, "inv-3", tenant="other", at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC)),
    ]
    await BillingRecorder(nc, default_memory_mb=settings.functions.memory_mb).record(billed)
    # Billed again by the events process: the same entry (same time, duration and memory).
    await publish(js, life("inv-1", at=datetime(2025, 3, 1, 10, 5, tzinfo=UTC), duration_ms=1000))


async def _audit_records(api: httpx.AsyncClient) -> list[dict[str, object]]:
    response = await api.get("/v1/audit", params={"limit": 1000})
    assert response.status_code == 200
    records: list[dict[str, object]] = response.json()["records"]
    return records


async def test_usage_verify_export_and_erasure(
    api: httpx.AsyncClient, nc: NATS, js: JetStreamContext, buckets: Buckets, settings: Settings
) -> None:
    await _seed(nc, js, buckets, settings)

    usage = await api.get(
        "/v1/usage",
        params={"tenant": "acme", "from": "2025-03-01T00:00:00Z", "to": "2025-03-01T12:00:00Z", "granularity": "hour"},
    )
    assert usage.status_code == 200, usage.text
    report = usage.json()
    assert report["total"]["invocations"] == 1  # inv-2 is at 12:00, outside [from, to)
    assert [b["start"] for b in report["buckets"]] == ["2025-03-01T10:00:00Z"]
    assert report["total"]["cost"] > 0 and report["prices"]["per_gb_second"] > 0
    bad = await api.get("/v1/usage", params={"tenant": "acme.>"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"

    # The settings' tenant is `default`: look at acme's audit through its export instead.
    async def lifecycle_chained() -> bool:
        doc = (await api.get("/v1/tenants/acme/export")).json()
        return sum(1 for r in doc["audit"] if r["kind"] == "event") == 4

    await eventually(lifecycle_chained, timeout=20)
    document = (await api.get("/v1/tenants/acme/export")).json()
    assert [f["name"] for f in document["functions"]] == ["resize"]
    assert sorted(r["id"] for r in document["invocations"]) == ["inv-1", "inv-2"]
    assert document["invocations"][0]["stdout"] == "/wBieXRlcw=="  # bytes as base64
    assert sorted(u["invocation_id"] for u in document["usage"]) == ["inv-1", "inv-2"]
    pseudonym = document["pseudonym"]
    assert pseudonym and all(r["tenant"] == pseudonym for r in document["audit"])

    verdict = (await api.get("/v1/audit/verify")).json()
    assert verdict["ok"] and verdict["records"] >= 4

    erased = await api.delete("/v1/tenants/acme/data")
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["deleted"] == {"functions": 1, "invocations": 2, "usage_entries": 2, "secrets": 0, "url_keys": 0}
    assert body["pseudonym"] == pseudonym and body["tombstone_seq"] > 0
    after = (await api.get("/v1/tenants/acme/export")).json()
    assert (after["functions"], after["invocations"], after["usage"], after["audit"]) == ([], [], [], [])
    assert after["pseudonym"] is None
    kept = (await api.get("/v1/tenants/other/export")).json()
    assert [f["name"] for f in kept["functions"]] == ["keep"] and len(kept["usage"]) == 1

    # The chain still verifies, and records the erasure under the old pseudonym.
    async def settled_chain() -> bool:
        return bool((await api.get("/v1/audit/verify")).json()["ok"])

    await eventually(settled_chain)
    tombstones = []
    for _, record in await audit_records(js):
        if record.action == "tenant.erased":
            tombstones.append(record)
    assert [(t.tenant, t.detail["invocations"]) for t in tombstones] == [(pseudonym, 2)]
    assert all("acme" not in (t.resource or "") for t in tombstones)

    # The operator's own DELETE call is in its log, without the erased tenant's name.
    async def delete_recorded() -> bool:
        calls = [r for r in await _audit_records(api) if r["action"] == "DELETE /v1/tenants/{tenant}/data"]
        return len(calls) == 1 and calls[0]["resource"] in (f"/v1/tenants/{pseudonym}/data", "/v1/tenants/_/data")

    await eventually(delete_recorded)
