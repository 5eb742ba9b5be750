"""core/tracing: off by default at no cost, spans exported over OTLP/HTTP, trace context across real NATS hops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from soulbox.core import tracing
from soulbox.core.settings import Settings, TracingSettings
from tests.otlp import OtlpReceiver

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def traced(receiver: OtlpReceiver) -> Iterator[OtlpReceiver]:
    tracing.setup(TracingSettings(enabled=True, endpoint=receiver.endpoint, export_delay_s=0.1), component="test")
    try:
        yield receiver
    finally:
        tracing.shutdown()


def _exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


def test_off_by_default_nothing_runs_nothing_is_sent(receiver: OtlpReceiver) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.tracing.enabled is False
    tracing.setup(settings.tracing.model_copy(update={"endpoint": receiver.endpoint}), component="test")
    try:
        assert not tracing.enabled()
        assert _exporter_threads() == []
        with tracing.span("a", kind=tracing.SpanKind.SERVER) as span:
            assert not span.is_recording()
            headers = {"Nats-Msg-Id": "x"}
            assert tracing.inject(headers) is headers and headers == {"Nats-Msg-Id": "x"}
            assert tracing.inject() is None  # a message stays without a header block
            assert tracing.current_trace_id() is None
        # a caller's context is not even parsed
        assert tracing.extract({"traceparent": TRACEPARENT}) is None
        # the same no-op context manager every time: nothing allocated per call
        assert tracing.span("a") is tracing.span("b", kind=tracing.SpanKind.CONSUMER)
    finally:
        tracing.shutdown()
    time.sleep(0.3)
    assert receiver.requests == 0


def test_off_costs_next_to_nothing() -> None:
    """The helpers on the hot path, as one invocation calls them, with tracing off."""
    tracing.shutdown()
    headers = {"traceparent": TRACEPARENT}
    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        with tracing.span("publish", kind=tracing.SpanKind.PRODUCER) as span:
            if span.is_recording():
                span.set_attribute("never", 1)
            tracing.inject({"Nats-Msg-Id": "id"})
            tracing.extract(headers)
            tracing.current_trace_id()
    per_call_us = (time.perf_counter() - started) / n * 1e6
    print(f"tracing off: {per_call_us:.3f} µs per span+inject+extract+trace id")
    assert per_call_us < 5.0  # ~0.3 µs on an idle core; generous for a shared, loaded box


def test_spans_are_exported_with_the_service_name_and_parents(traced: OtlpReceiver) -> None:
    with tracing.span("outer", kind=tracing.SpanKind.SERVER, attributes={"k": "v"}):
        trace_id = tracing.current_trace_id()
        with tracing.span("inner"):
            tracing.set_attribute("soulbox.cold_start", True)
    assert trace_id is not None and len(trace_id) == 32
    assert _exporter_threads()
    spans = traced.wait_for(lambda s: len(s) >= 2)
    outer = next(s for s in spans if s.name == "outer")
    inner = next(s for s in spans if s.name == "inner")
    assert outer.service == inner.service == "soulbox-test"
    assert outer.kind == "SERVER" and outer.parent_id == "" and outer.attributes == {"k": "v"}
    assert inner.trace_id == outer.trace_id == trace_id
    assert inner.parent_id == outer.span_id
    assert inner.attributes == {"soulbox.cold_start": True}


def test_an_exception_marks_the_span(traced: OtlpReceiver) -> None:
    with pytest.raises(RuntimeError), tracing.span("fails"):
        raise RuntimeError("boom")
    (span,) = traced.wait_for(lambda s: len(s) >= 1)
    assert span.status == "ERROR"


def test_a_callers_traceparent_is_continued(traced: OtlpReceiver) -> None:
    with tracing.span("server", parent=tracing.extract({"traceparent": TRACEPARENT})):
        assert tracing.current_trace_id() == "0af7651916cd43dd8448eb211c80319c"
    (span,) = traced.wait_for(lambda s: len(s) >= 1)
    assert span.parent_id == "b7ad6b7169203331"


async def test_context_crosses_core_nats_and_jetstream(traced: OtlpReceiver, nc: NATS, js: JetStreamContext) -> None:
    await js.add_stream(StreamConfig(name="TRACED", subjects=["traced.>"]))
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await received.put(msg)

    await nc.subscribe("plain", cb=on_msg)
    with tracing.span("send", kind=tracing.SpanKind.PRODUCER):
        await nc.publish("plain", b"x", headers=tracing.inject())
        await js.publish("traced.a", b"y", headers=tracing.inject({"Nats-Msg-Id": "m1"}))
        await js.publish("traced.b", b"z", headers=tracing.inject({"Nats-Msg-Id": "m2"}))
    plain = await asyncio.wait_for(received.get(), 5)
    with tracing.span("receive", kind=tracing.SpanKind.CONSUMER, parent=tracing.extract(plain.headers)):
        pass
    sub = await js.pull_subscribe("traced.>", durable="reader", stream="TRACED")
    msgs = await sub.fetch(2, timeout=5)
    assert all(m.headers and m.headers["Nats-Msg-Id"] in ("m1", "m2") for m in msgs)  # ours are kept
    with tracing.consume("reader process", msgs, {"messaging.consumer.group.name": "reader"}):
        pass

    spans = traced.wait_for(lambda s: len(s) >= 3)
    send = next(s for s in spans if s.name == "send")
    receive = next(s for s in spans if s.name == "receive")
    (consumed,) = [s for s in spans if s.name == "reader process"]  # one per trace of the batch
    assert receive.trace_id == send.trace_id and receive.parent_id == send.span_id
    assert consumed.kind == "CONSUMER" and consumed.trace_id == send.trace_id and consumed.parent_id == send.span_id
    assert consumed.attributes == {
        "messaging.consumer.group.name": "reader",
        "messaging.destination.name": "traced.b",  # the trace's last message in the batch
        "messaging.batch.message_count": 2,
    }


def test_consume_makes_a_span_per_trace_and_marks_a_failed_batch(traced: OtlpReceiver) -> None:
    class Carried:
        def __init__(self, subject: str, trace_id: str | None, span_id: str = "b7ad6b7169203331") -> None:
            self.subject = subject
            self.headers = {"traceparent": f"00-{trace_id}-{span_id}-01"} if trace_id else None

    one, two = "1" * 32, "2" * 32
    batch = [
        Carried("a", one, "a" * 16),
        Carried("b", two),
        Carried("c", one, "c" * 16),
        Carried("d", None),  # no context: no span
        Carried("e", "not-hex"),  # a malformed one: no span either
    ]
    with pytest.raises(ValueError), tracing.consume("batch", batch, {}):
        raise ValueError("recorder failed")
    spans = traced.wait_for(lambda s: len(s) >= 2)
    time.sleep(0.3)
    assert len(traced.spans) == 2
    by_trace = {s.trace_id: s for s in spans}
    assert by_trace[one].parent_id == "c" * 16 and by_trace[one].attributes["messaging.batch.message_count"] == 2
    assert (
        by_trace[two].parent_id == "b7ad6b7169203331" and by_trace[two].attributes["messaging.destination.name"] == "b"
    )
    assert all(s.status == "ERROR" for s in spans)


def test_sampled_out_traces_keep_their_ids_but_send_nothing(receiver: OtlpReceiver) -> None:
    settings = TracingSettings(enabled=True, endpoint=receiver.endpoint, export_delay_s=0.1, sample_ratio=0.0)
    tracing.setup(settings, component="test")
    try:
        with tracing.span("dropped"):
            trace_id = tracing.current_trace_id()
            headers = tracing.inject()
    finally:
        tracing.shutdown()
    assert trace_id is not None  # logs still join on it
    assert headers is not None
    assert int(headers["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # not sampled: downstream follows
    assert receiver.requests == 0


def test_shutdown_flushes_what_is_queued(receiver: OtlpReceiver) -> None:
    tracing.setup(TracingSettings(enabled=True, endpoint=receiver.endpoint, export_delay_s=60), component="test")
    with tracing.span("last words"):
        pass
    tracing.shutdown()
    assert [s.name for s in receiver.spans] == ["last words"]
    assert not tracing.enabled() and _exporter_threads() == []
    tracing.shutdown()  # again: nothing happens


async def test_a_decorated_handler_runs_in_a_child_of_the_senders_span(receiver: OtlpReceiver) -> None:
    class Received:
        def __init__(self) -> None:
            self.headers = {"traceparent": TRACEPARENT}

    class Service:
        def __init__(self) -> None:
            self.seen: list[str | None] = []

        @tracing.handler("handle")
        async def on_msg(self, msg: Received) -> None:
            self.seen.append(tracing.current_trace_id())

    service = Service()
    await service.on_msg(Received())  # off: called as it is
    tracing.setup(TracingSettings(enabled=True, endpoint=receiver.endpoint, export_delay_s=0.1), component="test")
    try:
        await service.on_msg(Received())
    finally:
        tracing.shutdown()
    assert service.seen == [None, "0af7651916cd43dd8448eb211c80319c"]
    (span,) = receiver.spans
    assert (span.name, span.kind, span.parent_id) == ("handle", "SERVER", "b7ad6b7169203331")
