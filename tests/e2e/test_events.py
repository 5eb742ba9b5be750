"""Every lifecycle event reaches billing, audit and metrics."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import deploy
from tests.e2e.test_invoke import wait_for
from tests.guests import wasm
from tests.stack import Stack

LIFECYCLE = {"invocation.accepted", "invocation.scheduled", "invocation.started", "invocation.completed"}


def _audit(api: httpx.Client) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    after = 0
    while True:
        page = api.get("/v1/audit", params={"after": after, "limit": 1000}).json()
        records += page["records"]
        if page["next"] == after:
            return records
        after = page["next"]


API_CALLS = {"POST /v1/functions", "POST /v1/functions/{name}/invoke"}


def test_three_consumers_see_every_event(api: httpx.Client, stack: Stack) -> None:
    deploy(api, "billed", wasm("echo"), memory_mb=128)
    response = api.post("/v1/functions/billed/invoke", content=b"bill me")
    assert response.status_code == 200
    invocation_id = response.headers["x-invocation-id"]

    # Billing: one usage entry for the invocation, GB-seconds from the function's memory.
    def billed() -> dict[str, object] | None:
        report = api.get("/v1/usage", params={"function": "billed", "granularity": "day"}).json()
        return report if report["total"]["invocations"] >= 1 else None

    report = wait_for(billed)
    total = report["total"]
    assert total["invocations"] == 1 and total["billable_ms"] >= 1
    assert abs(total["gb_seconds"] - 128 / 1024 * total["billable_ms"] / 1000) < 1e-9
    assert report["buckets"] and report["functions"][0]["function"] == "billed"

    # Audit: the deploy and invoke API calls, and every lifecycle event of the invocation.
    def audited() -> list[dict[str, object]] | None:
        records = _audit(api)
        seen = {
            r["action"]
            for r in records
            if r["kind"] == "event" and r["detail"].get("invocation_id") == invocation_id  # type: ignore[index]
        }
        # API calls come through the audit intake, not the event stream: they may be chained later.
        actions = {r["action"] for r in records if r["kind"] == "api"}
        return records if seen == LIFECYCLE and actions >= API_CALLS else None

    records = wait_for(audited)
    tenants = {r["tenant"] for r in records}
    assert len(tenants) == 1 and next(iter(tenants)).startswith("p")  # the tenant's pseudonym, not its name
    assert api.get("/v1/audit/verify").json()["ok"]

    # Metrics: counted by tier and outcome, with a duration histogram.
    def metrics() -> str | None:
        text = httpx.get(stack.metrics_url).text
        return text if 'soulbox_invocations_total{outcome="success",tier="wasm"}' in text else None

    text = wait_for(metrics)
    assert "soulbox_invocation_duration_seconds_bucket" in text
    assert "soulbox_invocation_queue_depth" in text


def test_usage_rejects_bad_parameters(api: httpx.Client) -> None:
    response = api.get("/v1/usage", params={"granularity": "fortnight"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert api.get("/v1/usage", params={"since": "yesterday"}).status_code == 400
    assert api.get("/v1/audit", params={"limit": "0"}).status_code == 400
