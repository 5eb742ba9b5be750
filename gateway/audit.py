"""Every API call goes into the audit log: who, what, which resource, result, from where."""

from __future__ import annotations

import asyncio

from nats.js.api import PubAck
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core.logging import get_logger
from soulbox.core.schemas import AuditRecord
from soulbox.events import new_record_id, record_api_call

log = get_logger(__name__)

_UNAUDITED = frozenset({"/healthz", "/readyz", "/openapi.json"})
_ACK_TIMEOUT_S = 10.0


class AuditTrail:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._pending: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNAUDITED:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        platform = getattr(scope["app"].state, "platform", None)
        if platform is None:
            return
        record = AuditRecord(
            id=new_record_id(),
            kind="api",
            tenant=platform.settings.tenant,
            actor=None,
            action=f"{scope['method']} {_route_template(scope)}",
            resource=scope["path"],
            result=str(status),
            source=scope["client"][0] if scope.get("client") else None,
        )
        try:
            ack = await record_api_call(platform.js, record)
        except Exception as exc:
            log.warning("audit.api_call_not_recorded", error=repr(exc))
            return
        # Confirm in the background: the response does not wait for the audit log.
        task = asyncio.create_task(self._confirm(ack))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _confirm(ack: asyncio.Future[PubAck]) -> None:
        try:
            await asyncio.wait_for(ack, _ACK_TIMEOUT_S)
        except Exception as exc:
            log.warning("audit.api_call_not_confirmed", error=repr(exc))


def _route_template(scope: Scope) -> str:
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", scope["path"]))
    return str(scope["path"])
