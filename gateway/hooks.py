"""Requests that invoke functions through triggers: signed webhooks and HTTP routes.

Neither has a caller identity: the tenant is the first segment of the URL
(the authentication gate makes it the request's principal), so a trigger id
or route path means the same in every tenant without clashing.

``POST /v1/hooks/{tenant}/{trigger_id}``: the signature is checked against the raw
body first (401 ``signature_missing`` / ``signature_invalid`` /
``signature_stale`` otherwise), and a request accepted before is refused (401
``signature_replayed``; the record of it is in NATS, shared by every gateway);
then the body is the function's input and the answer is a 202 with the
invocation id, or the result when the trigger is ``sync``.

``<METHOD> /run/{tenant}/<path>``: the HTTP trigger whose method and path template
match; always synchronous. Fetch-handler runtimes (Bun, Deno) get the whole
request (method, URL with the query, headers, body); the others the body.
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import Response

from soulbox.core import names
from soulbox.core.errors import NotFound
from soulbox.core.triggerspecs import TriggerKind, TriggerSpec
from soulbox.runtimes.js.http import HttpRequest
from soulbox.triggers.replay import claim, release
from soulbox.triggers.signatures import SignatureError, verify

from .bodies import read_body
from .errors import error_response
from .invocations import accepted_response, finished_response, speaks_http
from .middleware import AUTH_FAILURE_KEY
from .platform import platform
from .principal import principal
from .streaming import stream_mode
from .triggers import TriggerNotFound, catalog, trigger_id

_DROPPED_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class RouteNotFound(NotFound):
    code = "route_not_found"


async def webhook(request: Request) -> Response:
    p = platform(request)
    tid = trigger_id(request)
    trigger = catalog(request).get(names.trigger_key(principal(request).tenant, tid))
    if trigger is None or trigger.kind is not TriggerKind.WEBHOOK or trigger.webhook is None or not trigger.enabled:
        raise TriggerNotFound(tid)
    body = await read_body(request, p.settings.gateway.max_body_bytes)
    try:
        identity = verify(trigger.webhook, request.headers, body, now=time.time())
        seen = await claim(p.buckets.webhooks_seen, principal(request).tenant, tid, identity)
    except SignatureError as exc:
        # 401 here, not in the shared error table: only this endpoint authenticates by signature.
        request.scope[AUTH_FAILURE_KEY] = {"code": exc.code, "tenant": principal(request).tenant, "key_id": None}
        return error_response(401, exc.code, exc.message)
    return await _invoke(request, trigger, body, wait=trigger.webhook.sync, seen=seen)


async def route(request: Request) -> Response:
    p = platform(request)
    path = "/" + request.path_params["path"]
    found = catalog(request).route(principal(request).tenant, request.method, path)
    if found is None:
        raise RouteNotFound(f"no HTTP trigger for {request.method} {path} in tenant {principal(request).tenant}")
    trigger, _ = found
    body = await read_body(request, p.settings.gateway.max_body_bytes)
    spec = await p.registry.get(principal(request).tenant, trigger.function)
    if speaks_http(spec):
        headers = tuple((k, v) for k, v in request.headers.items() if k not in _DROPPED_HEADERS)
        body = HttpRequest(method=request.method, url=str(request.url), headers=headers, body=body).encode()
    return await _invoke(request, trigger, body, wait=True)


async def _invoke(
    request: Request, trigger: TriggerSpec, body: bytes, *, wait: bool, seen: str | None = None
) -> Response:
    """Submit ``body`` to the trigger's function; ``seen``: the webhook's claim to release if nothing is queued."""
    p = platform(request)
    try:
        stream = stream_mode(request, wait=True, api=False) if wait else None
        spec = await p.registry.get(principal(request).tenant, trigger.function)
        submission = await p.submit(
            spec,
            body,
            invocation_id=None,
            wait=wait,
            trace_id=request.headers.get("x-trace-id"),
            trigger=trigger.id,
        )
    except BaseException:
        if seen is not None:
            # Nothing runs: the sender's retry of this very request is not a replay.
            await release(p.buckets.webhooks_seen, seen)
        raise
    structlog.contextvars.bind_contextvars(invocation_id=submission.request.id, trigger=trigger.id)
    if not wait:
        return accepted_response(request, submission.request.id)
    return await finished_response(p, spec, submission, stream)
