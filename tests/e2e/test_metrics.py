"""Each process's own /metrics through the real stack: the counters move when work is done."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.conftest import API_KEY, deploy
from tests.guests import wasm
from tests.stack import Stack

Samples = list[Sample]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def gateway(stack: Stack) -> Samples:
    return scrape(f"{stack.url}/metrics")


def scheduler(stack: Stack) -> Samples:
    return scrape(f"http://127.0.0.1:{stack.scheduler_metrics_port}/metrics")


def workers(stack: Stack) -> Samples:
    return [s for port in stack.worker_metrics_ports.values() for s in scrape(f"http://127.0.0.1:{port}/metrics")]


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_an_invocation_moves_the_gateway_scheduler_and_worker_counters(stack: Stack, api: httpx.Client) -> None:
    name = f"metrics-{uuid.uuid4().hex[:6]}"
    assert deploy(api, name, wasm("hello")).status_code in (200, 201)
    route = "/v1/functions/{name}/invoke"
    g0, s0, w0 = gateway(stack), scheduler(stack), workers(stack)

    for _ in range(2):
        assert api.post(f"/v1/functions/{name}/invoke").status_code == 200

    g1 = gateway(stack)
    assert total(g1, "soulbox_gateway_requests_total", method="POST", route=route, status="200") == (
        total(g0, "soulbox_gateway_requests_total", method="POST", route=route, status="200") + 2
    )
    count = "soulbox_gateway_request_duration_seconds_count"
    assert total(g1, count, route=route) == total(g0, count, route=route) + 2
    assert total(g1, "soulbox_gateway_inflight_requests") == 1  # the scrape itself
    assert not [s for s in g1 if name in s.labels.get("route", "")]  # templates, never raw paths

    # The worker answers the scheduler after the caller: its counters may trail by a moment.
    wasm_ok = {"tier": "wasm", "outcome": "success"}
    base = total(w0, "soulbox_worker_invocations_total", **wasm_ok)
    eventually(lambda: total(workers(stack), "soulbox_worker_invocations_total", **wasm_ok) == base + 2)
    w1 = workers(stack)
    assert (
        total(w1, "soulbox_worker_run_seconds_count", tier="wasm")
        >= total(w0, "soulbox_worker_run_seconds_count", tier="wasm") + 2
    )
    assert total(w1, "soulbox_worker_in_flight") == 0

    accepted = {"tier": "wasm", "result": "accepted"}
    eventually(
        lambda: (
            total(scheduler(stack), "soulbox_scheduler_dispatches_total", **accepted)
            >= total(s0, "soulbox_scheduler_dispatches_total", **accepted) + 2
        )
    )
    s1 = scheduler(stack)
    assert (
        total(s1, "soulbox_scheduler_dispatch_seconds_count", tier="wasm")
        >= total(s0, "soulbox_scheduler_dispatch_seconds_count", tier="wasm") + 2
    )
    assert total(s1, "soulbox_scheduler_live_workers") == stack.workers


def test_data_plane_requests_count_under_one_route_without_sandbox_ids(stack: Stack) -> None:
    before = total(gateway(stack), "soulbox_gateway_requests_total", route="sandbox", status="502")
    sandbox_id = f"gone{uuid.uuid4().hex[:12]}"
    response = httpx.get(f"{stack.url}/health", headers={"E2b-Sandbox-Id": sandbox_id}, timeout=10)
    assert response.status_code == 502
    after = gateway(stack)
    assert total(after, "soulbox_gateway_requests_total", method="GET", route="sandbox", status="502") == before + 1
    assert not [s for s in after if sandbox_id in "".join(s.labels.values())]


def test_unknown_paths_count_as_unmatched(stack: Stack) -> None:
    before = total(gateway(stack), "soulbox_gateway_requests_total", route="unmatched", status="404")
    path = f"/nothing-here-{uuid.uuid4().hex[:8]}"
    assert httpx.get(f"{stack.url}{path}", timeout=10).status_code == 404
    after = gateway(stack)
    assert total(after, "soulbox_gateway_requests_total", method="GET", route="unmatched", status="404") == before + 1
    assert not [s for s in after if path in s.labels.get("route", "")]


def test_a_sandbox_from_the_warm_pool_is_counted_warm_with_the_pool_start_time(stack: Stack) -> None:
    starts = "soulbox_worker_sandbox_starts_total"
    # Every worker pre-starts one "base" sandbox (sandboxes.pool_size = 1): a create takes one of them.
    eventually(lambda: total(workers(stack), "soulbox_worker_sandboxes", state="pooled") >= stack.workers, 60)
    before = workers(stack)
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=60) as client:
        created = client.post("/v1/sandboxes", json={"timeout_s": 60})
        assert created.status_code in (200, 201), created.text
        sandbox_id = created.json()["sandbox_id"]
        try:
            samples = workers(stack)
            for kind, more in (("warm", 1), ("cold", 0)):
                was = total(before, starts, template="base", kind=kind)
                assert total(samples, starts, template="base", kind=kind) == was + more, kind
            assert total(samples, "soulbox_worker_sandbox_start_seconds_count", template="base") >= stack.workers
            assert (
                total(samples, "soulbox_worker_sandboxes", state="in_use")
                == total(before, "soulbox_worker_sandboxes", state="in_use") + 1
            )
        finally:
            assert client.delete(f"/v1/sandboxes/{sandbox_id}").status_code in (200, 204)
