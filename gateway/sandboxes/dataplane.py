"""The sandbox data plane on the gateway's port: requests addressed to a sandbox go to its worker.

A request is for a sandbox when it carries E2B's ``E2b-Sandbox-Id`` header
(with ``E2b-Sandbox-Port``; what the SDKs send when ``E2B_SANDBOX_URL`` is
set) or when its host is ``<port>-<sandbox id>.<domain>`` (E2B's per-port
URLs). It is then forwarded, streamed both ways, through the NATS tunnel to
the worker hosting the sandbox, which hands it to envd inside. Everything
else goes on to the API. A sandbox that does not exist (or whose worker is
gone) answers 502, which the SDKs read as "not running".

envd checks the access token on its own port; the code interpreter's port
(it runs code) wants the access token or the sandbox's traffic token
(E2B's ``E2B-Traffic-Access-Token``, which the code-interpreter SDK sends);
other ports are public, as on E2B.
"""

from __future__ import annotations

import hmac
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soulbox.core import names
from soulbox.core.errors import NotFound
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import SANDBOX_ID_RE, SandboxRecord

from ..instruments import SANDBOX_ROUTE, instruments_of
from ..proxy import forward
from .control import SandboxControlPlane
from .e2b import e2b_error

log = get_logger("soulbox.gateway.dataplane")

ENVD_PORT = 49983
GUARDED_PORTS = frozenset({49999})  # the code interpreter: it runs code, so it wants the access token
LOOKUP_TTL_S = 1.0  # a located sandbox is trusted this long (the worker answers 502 once it is gone)


def sandbox_target(headers: list[tuple[bytes, bytes]], domain: str) -> tuple[str, int] | None:
    """(sandbox id, port) when the request is addressed to a sandbox, else None."""
    sandbox_id = port = host = None
    for key, value in headers:
        name = key.lower()
        if name == b"e2b-sandbox-id":
            sandbox_id = value.decode("latin-1").strip()
        elif name == b"e2b-sandbox-port":
            port = value.decode("latin-1").strip()
        elif name == b"host":
            host = value.decode("latin-1").strip().lower()
    if sandbox_id is not None:
        return sandbox_id, int(port) if port and port.isdigit() else ENVD_PORT
    if host is not None:
        match = _host_re(domain).match(host)
        if match is not None:
            return match.group(2), int(match.group(1))
    return None


_HOST_RES: dict[str, re.Pattern[str]] = {}


def _host_re(domain: str) -> re.Pattern[str]:
    pattern = _HOST_RES.get(domain)
    if pattern is None:
        pattern = re.compile(rf"^(\d{{1,5}})-([a-z0-9]+)\.{re.escape(domain.lower())}(?::\d+)?$")
        _HOST_RES[domain] = pattern
    return pattern


class SandboxRouter:
    """Pure ASGI middleware in front of the API (outermost: data-plane traffic is not an API call)."""

    def __init__(self, app: ASGIApp, *, domain: str) -> None:
        self.app = app
        self.domain = domain
        self._located: dict[str, tuple[float, SandboxRecord]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = sandbox_target(scope["headers"], self.domain) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        sandbox_id, port = target
        started = time.perf_counter()
        instruments = instruments_of(scope.get("app"))
        if instruments is not None:
            instruments.started()
        status: int | None = None
        try:
            status = await self._route(scope, receive, send, sandbox_id, port)
        finally:
            if instruments is not None:  # one route label for every sandbox: no ids in series
                instruments.finished(scope["method"], SANDBOX_ROUTE, status, time.perf_counter() - started)
        log.info(
            "sandbox.request",
            sandbox=sandbox_id,
            port=port,
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def _route(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str, port: int) -> int | None:
        record = await self._locate(scope, sandbox_id)
        if record is None:
            await e2b_error(502, "sandbox_not_found", f"sandbox {sandbox_id!r} is not running")(scope, receive, send)
            return 502
        if port in GUARDED_PORTS and not _has_token(scope, record):
            await e2b_error(401, "unauthenticated", "invalid or missing access token")(scope, receive, send)
            return 401
        status: int | None = None

        async def tap(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        platform = scope["app"].state.platform
        await forward(
            scope,
            receive,
            tap,
            client=platform.tunnel,
            subject=names.worker_tunnel_subject(record.worker_id),
            target={"sandbox": sandbox_id, "port": str(port)},
        )
        return status

    async def _locate(self, scope: Scope, sandbox_id: str) -> SandboxRecord | None:
        if not SANDBOX_ID_RE.match(sandbox_id):
            return None
        now = time.monotonic()
        cached = self._located.get(sandbox_id)
        if cached is not None and now - cached[0] < LOOKUP_TTL_S:
            return cached[1]
        try:
            plane: SandboxControlPlane = scope["app"].state.platform.sandboxes
            record = await plane.locate(sandbox_id)
        except NotFound:
            self._located.pop(sandbox_id, None)
            return None
        if len(self._located) > 10_000:
            self._located.clear()
        self._located[sandbox_id] = (now, record)
        return record


def _has_token(scope: Scope, record: SandboxRecord) -> bool:
    wanted = {
        b"x-access-token": record.access_token.encode(),
        b"e2b-traffic-access-token": record.traffic_token.encode(),
    }
    for key, value in scope["headers"]:
        token = wanted.get(key.lower())
        if token and hmac.compare_digest(value, token):
            return True
    return False
