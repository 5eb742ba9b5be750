"""API keys for the sandbox APIs: ``X-API-KEY`` (E2B's header) or ``Authorization: Bearer``.

With no keys configured (``gateway.api_keys``), every request is accepted, as
on a developer's machine; with keys, a request without one of them is refused.
Comparisons are constant-time.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from soulbox.core.errors import Unauthenticated
from soulbox.core.settings import Settings

from ..platform import platform


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
