"""Per-request logging (one structlog line per request) as pure ASGI middleware."""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core.logging import get_logger

log = get_logger("soulbox.gateway.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with structlog.contextvars.bound_contextvars(method=scope["method"], path=scope["path"]):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                log.info(
                    "request",
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    client=scope["client"][0] if scope.get("client") else None,
                )
                structlog.contextvars.unbind_contextvars("invocation_id")
