"""OpenTelemetry tracing: one provider per process, W3C trace context on NATS messages.

``setup`` is called once in each process's ``main`` (after logging): with
``tracing.enabled`` it installs a ``TracerProvider`` that samples new traces
at ``sample_ratio`` (and follows the caller's decision for the rest) and
exports through a ``BatchSpanProcessor`` to an OTLP/HTTP endpoint; otherwise
nothing is installed and every helper here returns at its first line, so the
hot paths pay one flag test. ``shutdown`` flushes what is still queued.

A trace crosses a NATS hop as ``traceparent`` / ``tracestate`` headers:
the sender calls ``inject`` on the headers it publishes with, the receiver
``extract`` on ``msg.headers`` and starts its span under that context.
The provider is this module's own (not the global one), so setting it up
again in one process (tests) is allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from .settings import TracingSettings

__all__ = [
    "Context",
    "Span",
    "SpanKind",
    "Status",
    "StatusCode",
    "consume",
    "current_trace_id",
    "enabled",
    "extract",
    "fail",
    "handler",
    "inject",
    "set_attribute",
    "setup",
    "shutdown",
    "span",
]

Attributes = Mapping[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C only: independent of OTEL_PROPAGATORS
TRACEPARENT = "traceparent"
# The same context manager every time tracing is off: nothing is allocated per call.
_NOOP: contextlib.nullcontext[Span] = contextlib.nullcontext(INVALID_SPAN)
_NOOP_BLOCK: contextlib.nullcontext[None] = contextlib.nullcontext()


@dataclass(slots=True)
class _State:
    enabled: bool = False
    provider: TracerProvider | None = None
    tracer: Tracer | None = None


_state = _State()


def setup(settings: TracingSettings, *, component: str) -> None:
    """Install the exporter when ``settings.enabled``; the service is ``soulbox-<component>`` unless named."""
    shutdown()
    if not settings.enabled:
        return
    resource = Resource(
        {"service.name": settings.service_name or f"soulbox-{component}", "service.namespace": "soulbox"}
    )
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        shutdown_on_exit=False,  # ours below, so that a later setup() does not leave a stale hook
    )
    exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers), timeout=settings.timeout_s)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.export_delay_s * 1000,
        )
    )
    _state.provider = provider
    _state.tracer = provider.get_tracer("soulbox")
    _state.enabled = True
    atexit.register(shutdown)


def shutdown() -> None:
    """Export what is queued and stop the exporter; safe to call more than once."""
    provider, _state.provider = _state.provider, None
    _state.enabled = False
    _state.tracer = None
    if provider is not None:
        atexit.unregister(shutdown)
        provider.shutdown()


def enabled() -> bool:
    """Whether spans are made (and exported) in this process."""
    return _state.enabled


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: Attributes | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span made current for the ``with`` block; a no-op span when tracing is off.

    ``parent`` is a context from ``extract`` (a span on the other side of a
    NATS hop); None: the current span, if any. An exception leaving the block
    is recorded on the span and marks it as an error.
    """
    if _state.tracer is None:
        return _NOOP
    return _state.tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


def set_attribute(key: str, value: AttributeValue) -> None:
    """Set ``key`` on the current span (e.g. from a runtime, which only knows it is inside one)."""
    if _state.enabled:
        trace.get_current_span().set_attribute(key, value)


def fail(description: str) -> None:
    """Mark the current span as failed (an error handled without an exception leaving the span)."""
    if _state.enabled:
        trace.get_current_span().set_status(Status(StatusCode.ERROR, description))


def current_trace_id() -> str | None:
    """The current W3C trace id (32 hex digits), or None outside a span or when tracing is off."""
    if not _state.enabled:
        return None
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def inject(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` with the current span's ``traceparent`` (and ``tracestate``) added.

    Off, or outside a span: ``headers`` as given (None stays None, so the
    message goes without a header block).
    """
    if not _state.enabled:
        return headers
    carrier: dict[str, str] = {} if headers is None else headers
    _PROPAGATOR.inject(carrier)
    return carrier if carrier else headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The remote span context carried by a message's (or request's) headers; None when there is none."""
    if not _state.enabled or not headers or TRACEPARENT not in headers:
        return None
    return _PROPAGATOR.extract(headers)


class _Headers(Protocol):
    @property
    def headers(self) -> dict[str, str] | None: ...


S = TypeVar("S")
C = TypeVar("C", bound=_Headers)
Handler = Callable[[S, C], Awaitable[None]]


def handler(name: str, *, kind: SpanKind = SpanKind.SERVER) -> Callable[[Handler[S, C]], Handler[S, C]]:
    """Decorate a method that handles a NATS message: its span, a child of the sender's, covers the call."""

    def decorate(method: Handler[S, C]) -> Handler[S, C]:
        @functools.wraps(method)
        async def traced(self: S, msg: C) -> None:
            if not _state.enabled:
                await method(self, msg)
                return
            with span(name, kind=kind, parent=extract(msg.headers)):
                await method(self, msg)

        return traced

    return decorate


class _Carrier(Protocol):
    @property
    def headers(self) -> dict[str, str] | None: ...

    @property
    def subject(self) -> str: ...


@contextlib.contextmanager
def _consume(name: str, msgs: Sequence[_Carrier], attributes: Attributes) -> Iterator[None]:
    latest: dict[str, tuple[_Carrier, int]] = {}  # by trace id: its last message in the batch, its messages
    for msg in msgs:
        carried = msg.headers.get(TRACEPARENT) if msg.headers else None
        if carried:
            trace_id = carried[3:35]  # version "00-", then the trace id
            seen = latest.get(trace_id)
            latest[trace_id] = (msg, seen[1] + 1 if seen else 1)
    spans: list[Span] = []
    tracer = _state.tracer
    if tracer is not None:
        for msg, count in latest.values():
            parent = _PROPAGATOR.extract(msg.headers or {})
            if not trace.get_current_span(parent).get_span_context().is_valid:
                continue  # a malformed header: no trace to join
            attrs = {**attributes, "messaging.destination.name": msg.subject, "messaging.batch.message_count": count}
            spans.append(tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attrs))
    try:
        yield
    except BaseException as exc:
        for s in spans:
            s.record_exception(exc)
            s.set_status(Status(StatusCode.ERROR, repr(exc)))
        raise
    finally:
        for s in spans:
            s.end()


def consume(name: str, msgs: Sequence[_Carrier], attributes: Attributes) -> contextlib.AbstractContextManager[None]:
    """Consumer spans for the block that handles a batch: one per trace the batch's messages carry.

    Each is a child of the span that sent that trace's last message in the
    batch (``messaging.batch.message_count``: how many of the batch's messages
    belong to it), so a consumer shows in every trace it handled, at one span
    per trace and batch rather than one per message (a span costs tens of
    microseconds of CPU, made and exported).
    """
    if not _state.enabled:
        return _NOOP_BLOCK
    return _consume(name, msgs, attributes)
