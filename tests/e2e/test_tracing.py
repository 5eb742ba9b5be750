"""Tracing end to end: real processes export to a real OTLP/HTTP receiver, one trace per invocation.

gateway (server span, producer of the JetStream message) -> scheduler (consumer,
dispatch client) -> worker (server span, lifecycle event producers) -> billing
(consumer), joined by W3C trace context in NATS headers; the invocation's
record and log lines carry the same trace id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from tests.e2e.conftest import API_KEY, deploy
from tests.guests import wasm
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.stack import Stack

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INVOKE = "POST /v1/functions/{name}/invoke"
EXPECTED = {
    ("soulbox-gateway", INVOKE),
    ("soulbox-gateway", "publish SB_INVOCATIONS"),
    ("soulbox-gateway", "publish invocation.accepted"),
    ("soulbox-scheduler", "process sb.invocations.default"),
    ("soulbox-scheduler", "dispatch wasm"),
    ("soulbox-scheduler", "publish invocation.scheduled"),
    ("soulbox-worker", "invoke hello"),
    ("soulbox-worker", "publish invocation.started"),
    ("soulbox-worker", "publish invocation.completed"),
}


def _stack(root: Path, receiver: OtlpReceiver, *, enabled: bool) -> Stack:
    env = {
        "SOULBOX_GATEWAY__API_KEYS": f'["{API_KEY}"]',
        "SOULBOX_TRACING__ENABLED": "true" if enabled else "false",
        "SOULBOX_TRACING__ENDPOINT": receiver.endpoint,
        "SOULBOX_TRACING__EXPORT_DELAY_S": "0.2",
    }
    return Stack(root, workers=1, triggers=1 if enabled else 0, env=env)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Stack]:
    s = _stack(tmp_path_factory.mktemp("traced"), receiver, enabled=True)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(traced: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=traced.url, headers={"X-API-KEY": API_KEY}, timeout=30) as client:
        yield client


def _one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def _trace(receiver: OtlpReceiver, trace_id: str, *required: tuple[str, str]) -> list[ReceivedSpan]:
    """The spans of ``trace_id`` once every (service, name) of ``required`` is among them."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        return set(required) <= {(s.service, s.name) for s in spans if s.trace_id == trace_id}

    return [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]


def _log_lines(stack: Stack, name: str, event: str) -> list[dict[str, object]]:
    lines = []
    for line in stack.log(name).splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            lines.append(json.loads(line))
    return lines


def test_one_trace_from_gateway_to_billing(api: httpx.Client, traced: Stack, receiver: OtlpReceiver) -> None:
    assert deploy(api, "hello", wasm("hello")).status_code in (200, 201)
    response = api.post("/v1/functions/hello/invoke")
    assert response.status_code == 200, response.text
    invocation_id = response.headers["x-invocation-id"]
    record = api.get(f"/v1/invocations/{invocation_id}").json()
    trace_id = record["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        seen = {(s.service, s.name) for s in mine}
        billed = {s.attributes.get("messaging.destination.name") for s in mine if s.name == "events process"}
        return seen >= EXPECTED and "sb.events.invocation.completed" in billed

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in spans}

    server = _one(spans, "soulbox-gateway", INVOKE)
    assert server.kind == "SERVER" and server.parent_id == ""
    assert server.attributes["http.route"] == "/v1/functions/{name}/invoke"
    assert server.attributes["http.response.status_code"] == 200
    enqueue = _one(spans, "soulbox-gateway", "publish SB_INVOCATIONS")
    assert enqueue.kind == "PRODUCER" and enqueue.parent_id == server.span_id
    assert enqueue.attributes["soulbox.invocation_id"] == invocation_id

    consume = _one(spans, "soulbox-scheduler", "process sb.invocations.default")
    assert consume.kind == "CONSUMER" and consume.parent_id == enqueue.span_id
    dispatch = _one(spans, "soulbox-scheduler", "dispatch wasm")
    assert dispatch.kind == "CLIENT" and dispatch.parent_id == consume.span_id
    assert dispatch.attributes["soulbox.dispatch"] == "accepted"

    run = _one(spans, "soulbox-worker", "invoke hello")
    assert run.kind == "SERVER" and run.parent_id == dispatch.span_id
    assert run.attributes["soulbox.tier"] == "wasm" and run.attributes["soulbox.runtime"] == "wasi"
    assert run.attributes["soulbox.function"] == "hello" and run.attributes["soulbox.outcome"] == "success"
    assert run.attributes["soulbox.cold_start"] is True  # the module was compiled for this first run
    completed = _one(spans, "soulbox-worker", "publish invocation.completed")
    assert completed.kind == "PRODUCER" and completed.parent_id == run.span_id
    assert _one(spans, "soulbox-worker", "publish invocation.started").parent_id == run.span_id
    assert _one(spans, "soulbox-scheduler", "publish invocation.scheduled").parent_id == dispatch.span_id

    billed = [s for s in spans if s.name == "events process"]
    assert all(s.service == "soulbox-events" and s.kind == "CONSUMER" for s in billed)
    assert completed.span_id in {s.parent_id for s in billed}
    # every billing span hangs under one of this trace's event producers
    assert all(by_id[s.parent_id].kind == "PRODUCER" for s in billed)

    # logs join the trace: the gateway's access line and the worker's lines carry its id
    requests = [line for line in _log_lines(traced, "gateway", "request") if line.get("trace_id") == trace_id]
    assert requests and requests[0]["path"] == "/v1/functions/hello/invoke"
    finished = [
        line for line in _log_lines(traced, "worker-0", "invocation.finished") if line["invocation_id"] == invocation_id
    ]
    assert finished and finished[0]["trace_id"] == trace_id


def test_a_callers_trace_is_continued_and_warm_runs_say_so(api: httpx.Client, receiver: OtlpReceiver) -> None:
    assert deploy(api, "hello", wasm("hello")).status_code in (200, 201)
    api.post("/v1/functions/hello/invoke")  # compiled by now
    response = api.post("/v1/functions/hello/invoke", headers={"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"})
    assert response.status_code == 200
    assert api.get(f"/v1/invocations/{response.headers['x-invocation-id']}").json()["trace_id"] == CALLER_TRACE
    trace = _trace(receiver, CALLER_TRACE, *EXPECTED)
    assert _one(trace, "soulbox-gateway", INVOKE).parent_id == "00f067aa0ba902b7"
    run = _one(trace, "soulbox-worker", "invoke hello")
    assert run.attributes["soulbox.cold_start"] is False


async def _request(url: str, subject: str, traceparent: str) -> bytes:
    nc = await nats.connect(url)
    try:
        for _ in range(100):  # until the trigger service has the new trigger
            try:
                reply = await nc.request(subject, b"", timeout=5, headers={"traceparent": traceparent})
                return reply.data
            except (NoRespondersError, NatsTimeoutError):
                await asyncio.sleep(0.1)
        raise AssertionError("the trigger never answered")
    finally:
        await nc.close()


def test_a_nats_trigger_continues_the_publishers_trace(
    api: httpx.Client, traced: Stack, receiver: OtlpReceiver
) -> None:
    publisher = "1234567890abcdef1234567890abcdef"
    assert deploy(api, "hello", wasm("hello")).status_code in (200, 201)
    trigger = {"id": "traced-orders", "function": "hello", "kind": "nats", "nats": {"subject": "traced.orders"}}
    assert api.post("/v1/triggers", json=trigger).status_code == 201
    reply = asyncio.run(_request(traced.nats.url, "traced.orders", f"00-{publisher}-a1a2a3a4a5a6a7a8-01"))
    assert reply == b"hello from wasm\n"
    trace = _trace(
        receiver,
        publisher,
        ("soulbox-triggers", "trigger"),
        ("soulbox-triggers", "publish SB_INVOCATIONS"),
        ("soulbox-worker", "invoke hello"),
    )
    fired = _one(trace, "soulbox-triggers", "trigger")
    assert fired.parent_id == "a1a2a3a4a5a6a7a8" and fired.attributes["soulbox.trigger"] == "traced-orders"
    assert _one(trace, "soulbox-triggers", "publish SB_INVOCATIONS").parent_id == fired.span_id


def test_sandbox_create_is_one_trace(api: httpx.Client, receiver: OtlpReceiver) -> None:
    created = api.post("/v1/sandboxes", json={"timeout_s": 30})
    assert created.status_code == 201, created.text
    sandbox_id = created.json()["sandbox_id"]
    api.delete(f"/v1/sandboxes/{sandbox_id}")  # (the stack's end would kill it too)

    def placed(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == "sandbox place" and s.attributes.get("soulbox.sandbox_id") == sandbox_id for s in spans)

    spans = receiver.wait_for(placed)
    place = next(s for s in spans if s.name == "sandbox place" and s.attributes["soulbox.sandbox_id"] == sandbox_id)
    trace = _trace(
        receiver,
        place.trace_id,
        ("soulbox-gateway", "POST /v1/sandboxes"),
        ("soulbox-worker", "sandbox create"),
        ("soulbox-worker", "publish sandbox.created"),
    )
    server = _one(trace, "soulbox-gateway", "POST /v1/sandboxes")
    assert place.service == "soulbox-scheduler" and place.parent_id == server.span_id
    create = _one(trace, "soulbox-worker", "sandbox create")
    assert create.kind == "SERVER" and create.parent_id == place.span_id
    assert isinstance(create.attributes["soulbox.cold_start"], bool)
    assert _one(trace, "soulbox-worker", "publish sandbox.created").parent_id == create.span_id


def test_tracing_off_sends_nothing(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        s = _stack(tmp_path, receiver, enabled=False)
        s.start()
        try:
            with httpx.Client(base_url=s.url, headers={"X-API-KEY": API_KEY}, timeout=30) as client:
                assert deploy(client, "hello", wasm("hello")).status_code in (200, 201)
                response = client.post("/v1/functions/hello/invoke", headers={"x-trace-id": "caller-chosen"})
                assert response.status_code == 200
                record = client.get(f"/v1/invocations/{response.headers['x-invocation-id']}").json()
                assert record["trace_id"] == "caller-chosen"  # as before tracing existed
            time.sleep(1.0)  # five export intervals, had an exporter been running
        finally:
            s.stop()  # the processes exit: a running exporter would flush now
        assert receiver.requests == 0
