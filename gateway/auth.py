"""API keys: ``X-API-KEY`` (E2B's header) or ``Authorization: Bearer``, checked in one place.

With no keys configured (``gateway.api_keys``), every request is accepted, as
on a developer's machine; with keys, a request without one of them is refused.
:class:`ApiKeyGate` guards every ``/v1/`` route except webhooks (they carry a
signature instead); E2B's own paths are checked by their handlers, to answer
in E2B's error shape, and the terminal WebSocket before its upgrade.
Comparisons are constant-time. Tenants, scoped and revocable keys are issue #10.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from soulbox.core.errors import Unauthenticated
from soulbox.core.settings import Settings

from .errors import error_response
from .platform import platform
from .principal import SCOPE_KEY


def authenticate(request: Request) -> None:
    check_key(platform(request).settings, request.headers.get("x-api-key"), request.headers.get("authorization"))


def check_key(settings: Settings, api_key: str | None, authorization: str | None) -> None:
    """Accept ``api_key`` (or a Bearer ``authorization``) if it is one of the configured keys."""
    keys = settings.gateway.api_keys
    if not keys:
        return
    given = api_key
    if given is None:
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None:
        raise Unauthenticated("an API key is required (X-API-KEY header)")
    supplied = given.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(supplied, key.get_secret_value().encode())
    if not ok:
        raise Unauthenticated("invalid API key")


OPEN_PREFIXES = ("/v1/hooks/",)  # authenticated by their signature


class ApiKeyGate:
    """Pure ASGI middleware: a ``/v1/`` HTTP request without a valid key is a 401 before any handler runs."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        signed = SCOPE_KEY in scope  # an earlier middleware (signed URLs) authenticated the request
        if scope["type"] == "http" and path.startswith("/v1/") and not path.startswith(OPEN_PREFIXES) and not signed:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                check_key(self.settings, headers.get("x-api-key"), headers.get("authorization"))
            except Unauthenticated as exc:
                await error_response(401, exc.code, exc.message)(scope, receive, send)
                return
        await self.app(scope, receive, send)
