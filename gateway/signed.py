"""Signed URLs: ``POST /v1/signed-urls`` makes them, :class:`SignedUrlGate` lets them in.

A signed URL stands for one request — one method on one path — of the tenant
that signed it, until it expires, once. The gate, in front of the API-key
gate, checks a request that carries ``sb_`` parameters (format in
:mod:`soulbox.core.secrets_signing`): the action must be one that may be
signed, the URL unexpired, its key known and not retired past its grace
period, the signature right (constant-time), and its nonce unused — claimed
with a create-only put in the nonces bucket, so two gateways cannot both
accept it. It then puts a :class:`~.principal.Principal` for the signer's
tenant into the scope, limited to that action, and the key gate lets the
request through. A bad signed URL is refused with 401; it never falls back to
API-key authentication.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from nats.js.errors import KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from soulbox.core import names
from soulbox.core.errors import Forbidden, InvalidRequest
from soulbox.core.logging import get_logger
from soulbox.core.secrets_signing import (
    BadSignature,
    SigningKeys,
    check_signature,
    checked_expiry,
    new_nonce,
    parse_signed,
    sign_query,
)

from .bodies import json_body
from .errors import error_response
from .identity.rbac import allowed
from .platform import platform
from .principal import SCOPE_KEY, Principal, principal

log = get_logger(__name__)

SIGNABLE: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"POST"}), re.compile(r"^/v1/functions/[a-z0-9][a-z0-9_-]{0,62}/invoke$")),
    (frozenset({"GET", "POST"}), re.compile(r"^/v1/sandboxes/[a-z0-9]{8,40}/files$")),
)


def signed_permission(method: str, path: str) -> str:
    """What the signer must be allowed to do itself: a URL never grants more than its signer has."""
    if path.endswith("/invoke"):
        return "functions:invoke"
    return "sandboxes:read" if method == "GET" else "sandboxes:write"


CLOCK_SKEW_S = 60


class SignatureExpired(BadSignature):
    code = "signature_expired"


class SignatureReplayed(BadSignature):
    code = "signature_replayed"


def signable(method: str, path: str) -> bool:
    return any(method in methods and pattern.match(path) for methods, pattern in SIGNABLE)


class SignedUrlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="POST for invoke; GET (download) or POST (upload) for sandbox files")
    path: str = Field(
        max_length=2048,
        description="/v1/functions/{name}/invoke or /v1/sandboxes/{id}/files, with the query it is to carry",
    )
    expires_in: int | None = Field(None, ge=1, description="seconds; default signed_urls.default_expires_s")


class SignedUrlOut(BaseModel):
    url: str
    method: str
    expires_at: datetime
    key_id: str
    nonce: str


class SigningKeyRotated(BaseModel):
    key_id: str = Field(description="the key that signs from now on")
    previous_valid_until: datetime | None = Field(
        None, description="when URLs signed with the previous key stop working"
    )


def signing_keys(request: Request) -> SigningKeys:
    keys: SigningKeys = request.app.state.signing_keys
    return keys


async def create_signed_url(request: Request) -> Response:
    """Sign one request of the caller's tenant."""
    settings = platform(request).settings.signed_urls
    body = await json_body(request, SignedUrlIn, limit=8 * 1024, what="signed URL request")
    method = body.method.upper()
    path, _, query = body.path.partition("?")
    if not signable(method, path):
        raise InvalidRequest(
            "only POST /v1/functions/{name}/invoke and GET or POST /v1/sandboxes/{id}/files can be signed",
            code="not_signable",
        )
    rest = tuple(sorted(parse_qsl(query, keep_blank_values=True)))
    if any(k.startswith("sb_") for k, _ in rest):
        raise InvalidRequest("query parameters starting with sb_ are the signature's")
    expires = checked_expiry(body.expires_in or settings.default_expires_s, settings.max_expires_s)
    signer = principal(request)
    needed = signed_permission(method, path)
    if not allowed(signer, needed):
        raise Forbidden(f"signing this URL needs {needed}, which this key does not have")
    tenant = signer.tenant
    kid, key = await signing_keys(request).current(tenant)
    nonce = new_nonce()
    signed = sign_query(key, kid, method, path, rest, expires, nonce)
    out = SignedUrlOut(
        url=f"{str(request.base_url).rstrip('/')}{path}?{signed}",
        method=method,
        expires_at=datetime.fromtimestamp(expires, UTC),
        key_id=kid,
        nonce=nonce,
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=201)


async def rotate_signing_key(request: Request) -> Response:
    """A new signing key for the caller's tenant; URLs signed before keep working for the grace period."""
    kid, until = await signing_keys(request).rotate(principal(request).tenant)
    return JSONResponse(SigningKeyRotated(key_id=kid, previous_valid_until=until).model_dump(mode="json"))


class SignedUrlGate:
    """Pure ASGI middleware: a request with a valid signed URL acts as its signer, limited to its one action."""

    def __init__(self, app: ASGIApp, *, max_expires_s: int) -> None:
        self.app = app
        self.max_expires_s = max_expires_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/"):
            try:
                who = await self._verify(scope)
            except BadSignature as exc:
                await error_response(401, exc.code, exc.message)(scope, receive, send)
                return
            if who is not None:
                scope[SCOPE_KEY] = who
        await self.app(scope, receive, send)

    async def _verify(self, scope: Scope) -> Principal | None:
        params = parse_signed(scope.get("query_string", b"").decode("latin-1"))
        if params is None:
            return None
        method, path = scope["method"], scope["path"]
        if not signable(method, path):
            raise BadSignature(f"{method} {path} cannot be reached by a signed URL")
        now = time.time()
        if params.expires < now:
            raise SignatureExpired("the signed URL has expired")
        if params.expires > now + self.max_expires_s + CLOCK_SKEW_S:
            raise BadSignature("the signed URL expires later than any URL may")
        keys: SigningKeys = scope["app"].state.signing_keys
        key = await keys.verification_key(params.kid)
        check_signature(key, method, path, params)
        # Claimed only once the signature is right: a forged URL cannot burn somebody's nonce.
        nonces = scope["app"].state.platform.buckets.signed_nonces
        try:
            await nonces.create(names.signed_nonce_key(params.tenant, params.nonce), b"")
        except KeyWrongLastSequenceError:
            raise SignatureReplayed("the signed URL was used already") from None
        return Principal(
            tenant=params.tenant,
            subject=f"signed-url:{params.nonce}",
            role="developer",
            scopes=frozenset({f"signed-url:{method} {path}"}),
            key_id=params.kid,
        )
