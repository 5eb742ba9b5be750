"""API keys for the sandbox APIs: ``X-API-KEY`` (E2B's header) or ``Authorization: Bearer``.

With no keys configured (``gateway.api_keys``), every request is accepted, as
on a developer's machine; with keys, a request without one of them is refused.
Comparisons are constant-time.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from soulbox.core.errors import Unauthenticated

from ..platform import platform


def authenticate(request: Request) -> None:
    keys = platform(request).settings.gateway.api_keys
    if not keys:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None:
        raise Unauthenticated("an API key is required (X-API-KEY header)")
    supplied = given.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(supplied, key.get_secret_value().encode())
    if not ok:
        raise Unauthenticated("invalid API key")
