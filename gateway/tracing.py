"""A server span per HTTP request, continuing the caller's W3C trace context if it sent one.

Pure ASGI middleware, outside ``RequestTrail`` so that the access log line
(and everything logged while handling the request) carries the trace id.
The span is named after the route template (``POST /v1/functions/{name}/invoke``),
which ``RequestTrail`` leaves in the scope. Tracing off: the request passes
straight through.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core import tracing

from .middleware import ROUTE_KEY

_CONTEXT_HEADERS = (b"traceparent", b"tracestate")


class TraceRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        carried = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _CONTEXT_HEADERS}
        method: str = scope["method"]
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(
            method, kind=tracing.SpanKind.SERVER, parent=tracing.extract(carried), attributes=attributes
        ) as span:
            trace_id = tracing.current_trace_id()
            with structlog.contextvars.bound_contextvars(trace_id=trace_id):
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    route = scope.get(ROUTE_KEY)
                    if route:
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(tracing.Status(tracing.StatusCode.ERROR))
