"""Every request leaves three traces: one structlog line, its request metrics and (for the API) one audit record.

Pure ASGI middleware, so streaming responses pass through untouched. The
audit record says who, what (method and route template), which resource,
the result and the source address; it is published without waiting, and its
acknowledgement is checked in the background.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.js.api import PubAck
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core.ledger import AuditRecord
from soulbox.core.logging import get_logger
from soulbox.core.store import settle
from soulbox.events import new_record_id, record_api_call

from .instruments import UNMATCHED_ROUTE, instruments_of
from .principal import SCOPE_KEY, Principal

AUTH_FAILURE_KEY = "soulbox.auth_failure"
"""Set by the authentication gate on a refused request: ``{"code", "tenant", "key_id"}``."""

log = get_logger("soulbox.gateway.access")

_UNAUDITED = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})
_ACK_TIMEOUT_S = 10.0
ROUTE_KEY = "soulbox.route"  # the matched route's template, left in the scope for the tracing middleware


class RequestTrail:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._confirming: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        instruments = instruments_of(scope.get("app"))
        if instruments is not None:
            instruments.started()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with structlog.contextvars.bound_contextvars(method=scope["method"], path=scope["path"]):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - started
                log.info(
                    "request",
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    client=scope["client"][0] if scope.get("client") else None,
                )
                structlog.contextvars.unbind_contextvars("invocation_id")
                template = _route_template(scope)
                scope[ROUTE_KEY] = template
                if instruments is not None:
                    instruments.finished(scope["method"], template or UNMATCHED_ROUTE, status, elapsed)
                if scope["path"] not in _UNAUDITED:
                    await self._audit(scope, status, template or scope["path"])

    async def _audit(self, scope: Scope, status: int, route: str) -> None:
        record = api_record(scope, status, route)
        if record is None:
            return
        platform = scope["app"].state.platform
        try:
            ack = await record_api_call(platform.js, record)
        except Exception as exc:
            log.warning("audit.api_call_not_recorded", error=repr(exc))
            return
        task = asyncio.create_task(self._confirm(ack))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    @staticmethod
    async def _confirm(ack: asyncio.Future[PubAck]) -> None:
        try:
            await asyncio.wait_for(ack, _ACK_TIMEOUT_S)
        except Exception as exc:
            log.warning("audit.api_call_not_confirmed", error=repr(exc))


def api_record(scope: Scope, status: int, route: str) -> AuditRecord | None:
    """The audit record of a request (None before the platform is up); a refusal says why in ``detail``."""
    platform = getattr(scope["app"].state, "platform", None)
    if platform is None:
        return None
    found = scope.get(SCOPE_KEY)  # set by the authentication gate inside this middleware
    who = found if isinstance(found, Principal) else None
    refused = scope.get(AUTH_FAILURE_KEY)
    detail: dict[str, str | int | float | bool | None] = {}
    tenant = who.tenant if who else platform.settings.tenant
    if who is not None and who.operator:
        # The operator acting for a tenant: the call is the operator's (its log names the tenant by pseudonym),
        # and an erased tenant's log gets no new record.
        tenant = platform.settings.tenant
    if isinstance(refused, dict):
        detail = {"auth_failure": refused["code"], "key_id": refused["key_id"]}
        # A refused key's own tenant sees the attempt; unattributable ones go to the operator's tenant.
        tenant = refused["tenant"] or tenant
    return AuditRecord(
        id=new_record_id(),
        kind="api",
        tenant=tenant,
        actor=who.subject if who else None,
        action=f"{scope.get('method', 'WEBSOCKET')} {route}",
        resource=scope["path"],
        result=str(status),
        source=scope["client"][0] if scope.get("client") else None,
        detail=detail,
    )


async def audit_websocket_refusal(scope: Scope, status: int, route: str) -> None:
    """Audit a WebSocket refused before its upgrade (the trail above sees HTTP requests only)."""
    record = api_record(scope, status, route)
    if record is None:
        return
    try:
        await settle([await record_api_call(scope["app"].state.platform.js, record)])
    except Exception as exc:
        log.warning("audit.api_call_not_recorded", error=repr(exc))


def _route_template(scope: Scope) -> str | None:
    """The template of the route that matches the request (None: no route does)."""
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", scope["path"]))
    return None
