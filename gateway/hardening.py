"""What every HTTP response of the API gets, whatever the handler did.

:class:`Hardening` (pure ASGI middleware, outside everything but the sandbox
router, whose traffic belongs to the sandboxes):

- security headers on every response: ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``, and for the API (not the ``/run/`` routes,
  whose functions choose their own) ``X-Frame-Options: DENY`` and a
  ``Content-Security-Policy`` that allows nothing; HSTS when configured;
- a deadline until the response starts (``gateway.request_timeout_s``): past
  it the handler is cancelled and the answer is a 504 ``request_timeout``.
  Calls that run functions or start sandboxes keep their own, longer deadlines
  once their body is in: for them the gateway's deadline ends with the body
  (a client trickling a body in cannot hold a request open forever);
- one cap on every request body (a deploy's module limit plus room for the
  form): a larger ``Content-Length`` is a 413 at once, a longer stream fails
  the handler's read with ``payload_too_large``;
- an exception no handler caught is a 500 ``internal`` without details (the
  traceback goes to the log only).
"""

from __future__ import annotations

import asyncio
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core.errors import PayloadTooLarge
from soulbox.core.logging import get_logger
from soulbox.core.settings import GatewaySettings

from .errors import error_response

log = get_logger(__name__)

_FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and the small fields of a deploy
_API_ONLY = {
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}
# Their own deadlines: the function's timeout plus a grace, a sandbox's start.
_OWN_DEADLINE = re.compile(
    r"^(/v1/functions/[^/]+/invoke|/v1/hooks/[^/]+/[^/]+|/run/.*|/v1/sandboxes|/(v2/)?sandboxes"
    r"|/v1/sandboxes/[^/]+/resume|/(v2/)?sandboxes/[^/]+/(resume|connect))$"
)
E2B_PREFIXES = ("/sandboxes", "/v2/sandboxes")


def has_own_deadline(path: str) -> bool:
    """Whether requests to ``path`` are exempt from the gateway's deadline (they keep a longer one of their own)."""
    return _OWN_DEADLINE.match(path) is not None


def _error(path: str, status: int, code: str, message: str) -> JSONResponse:
    if path.startswith(E2B_PREFIXES):
        return JSONResponse({"code": status, "message": message, "error_code": code}, status_code=status)
    return error_response(status, code, message)


class Hardening:
    """Security headers, a response deadline, a body cap and a detail-free 500 for every HTTP request."""

    def __init__(self, app: ASGIApp, *, settings: GatewaySettings) -> None:
        self.app = app
        self.timeout_s = settings.request_timeout_s
        self.max_body = max(settings.max_body_bytes, settings.max_module_bytes) + _FORM_OVERHEAD
        headers = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
        if settings.hsts_max_age_s:
            headers["strict-transport-security"] = f"max-age={settings.hsts_max_age_s}; includeSubDomains"
        # Raw ASGI header pairs, built once: the hot path only appends them.
        self.run_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.api_headers = self.run_headers + [(k.encode(), v.encode()) for k, v in _API_ONLY.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = self.run_headers if path.startswith("/run/") else self.api_headers
        started = False
        received = 0
        deadline: asyncio.Timeout | None = None
        running = False  # inside the deadline's scope
        length = b""
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        own = has_own_deadline(path)

        async def guarded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise PayloadTooLarge(f"the request body exceeds {self.max_body} bytes")
                if own and running and deadline is not None and not message.get("more_body", False):
                    deadline.reschedule(None)  # the whole body is in: the call's own deadline takes over
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if running and deadline is not None:
                    deadline.reschedule(None)  # the deadline is until the response starts: streams may go on
                raw = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                raw.extend(header for header in extra if header[0] not in present)
                message["headers"] = raw
            await send(message)

        if length.isdigit() and int(length) > self.max_body:
            too_large = f"the request body exceeds {self.max_body} bytes"
            await _error(path, 413, "payload_too_large", too_large)(scope, receive, guarded_send)
            return
        try:
            if own and not chunked and length in (b"", b"0"):  # no body to wait for
                await self.app(scope, guarded_receive, guarded_send)
            else:
                async with asyncio.timeout(self.timeout_s) as deadline:
                    running = True
                    try:
                        await self.app(scope, guarded_receive, guarded_send)
                    finally:
                        running = False
        except TimeoutError:
            if started or deadline is None or not deadline.expired():
                raise
            log.warning("request.deadline", path=path, timeout_s=self.timeout_s)
            message = f"no response within {self.timeout_s:g} seconds"
            await _error(path, 504, "request_timeout", message)(scope, receive, guarded_send)
        except Exception as exc:
            if started:
                raise
            log.error("request.crashed", error=repr(exc), exc_info=exc)
            await _error(path, 500, "internal", "internal error")(scope, receive, guarded_send)
