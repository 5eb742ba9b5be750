"""``/v1/triggers``: create, list, read, replace and delete triggers.

A trigger is JSON: ``{"id", "function", "kind", "<kind>": {...}, "enabled"}``
with one configuration object named after its kind (``webhook``, ``http``,
``nats``, ``cron``). A webhook's secret may be given, or is generated and
shown once, in the response that created it; later reads never show it.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from nats.js.errors import KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.errors import Conflict, InvalidRequest, NotFound
from soulbox.core.schemas import NAME_PATTERN, NAME_RE, utcnow
from soulbox.core.store import get_model, scan
from soulbox.core.triggerspecs import (
    CronConfig,
    HttpRouteConfig,
    NatsTriggerConfig,
    SignatureScheme,
    TriggerKind,
    TriggerSpec,
    WebhookConfig,
)
from soulbox.triggers import cron
from soulbox.triggers.catalog import TriggerCatalog
from soulbox.triggers.routes import RoutePattern, normalized

from .bodies import json_body
from .platform import platform
from .principal import principal

MAX_TRIGGER_JSON = 64 * 1024


class TriggerNotFound(NotFound):
    code = "trigger_not_found"

    def __init__(self, trigger_id: str) -> None:
        super().__init__(f"trigger {trigger_id!r} does not exist")


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheme: SignatureScheme = SignatureScheme.HMAC
    secret: str | None = Field(None, min_length=16, max_length=256)
    tolerance_s: int = Field(300, ge=1, le=86_400)
    sync: bool = False


class TriggerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=NAME_PATTERN)
    function: str = Field(pattern=NAME_PATTERN)
    kind: TriggerKind
    enabled: bool = True
    webhook: WebhookIn | None = None
    http: HttpRouteConfig | None = None
    nats: NatsTriggerConfig | None = None
    cron: CronConfig | None = None


class TriggerOut(BaseModel):
    id: str
    function: str
    kind: str
    enabled: bool
    webhook: dict[str, Any] | None
    http: HttpRouteConfig | None
    nats: NatsTriggerConfig | None
    cron: CronConfig | None
    url: str | None = Field(description="where to send requests (webhooks and HTTP routes)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, spec: TriggerSpec, *, show_secret: bool = False) -> TriggerOut:
        webhook = (
            spec.webhook.model_dump(mode="json", exclude=set() if show_secret else {"secret"}) if spec.webhook else None
        )
        url = None
        if spec.webhook is not None:
            url = f"/v1/hooks/{spec.tenant}/{spec.id}"
        elif spec.http is not None:
            url = f"/run/{spec.tenant}{spec.http.path}"
        return cls(
            id=spec.id,
            function=spec.function,
            kind=spec.kind.value,
            enabled=spec.enabled,
            webhook=webhook,
            http=spec.http,
            nats=spec.nats,
            cron=spec.cron,
            url=url,
            created_at=spec.created_at,
            updated_at=spec.updated_at,
        )


def catalog(request: Request) -> TriggerCatalog:
    c: TriggerCatalog = request.app.state.triggers
    return c


def trigger_id(request: Request) -> str:
    value: str = request.path_params["trigger_id"]
    if not NAME_RE.match(value):
        raise TriggerNotFound(value)
    return value


async def _parse(request: Request) -> TriggerIn:
    return await json_body(request, TriggerIn, limit=MAX_TRIGGER_JSON, what="trigger")


async def _build(request: Request, given: TriggerIn, previous: TriggerSpec | None) -> TriggerSpec:
    p = platform(request)
    tenant = principal(request).tenant
    await p.registry.get(tenant, given.function)  # 404 unless the function exists
    webhook = None
    if given.webhook is not None:
        secret = given.webhook.secret
        if secret is None:
            secret = previous.webhook.secret if previous and previous.webhook else secrets.token_urlsafe(32)
        webhook = WebhookConfig(**given.webhook.model_dump(exclude={"secret"}), secret=secret)
    now = utcnow()
    try:
        spec = TriggerSpec(
            tenant=tenant,
            id=given.id,
            function=given.function,
            kind=given.kind,
            enabled=given.enabled,
            webhook=webhook,
            http=given.http,
            nats=given.nats,
            cron=given.cron,
            created_at=previous.created_at if previous else now,
            updated_at=now,
        )
    except ValidationError as exc:
        raise InvalidRequest("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None
    if spec.cron is not None:
        cron.validate(spec.cron)
    if spec.http is not None:
        RoutePattern.compile(spec.http.path)
        route = (spec.http.method, normalized(spec.http.path))
        for other in catalog(request).of_kind(TriggerKind.HTTP):
            clash = other.http is not None and (other.http.method, normalized(other.http.path)) == route
            if clash and other.tenant == tenant and other.id != spec.id:
                assert other.http is not None
                raise Conflict(f"trigger {other.id!r} already serves {route[0]} {other.http.path}")
    return spec


async def create_trigger(request: Request) -> Response:
    p = platform(request)
    given = await _parse(request)
    spec = await _build(request, given, None)
    key = names.trigger_key(spec.tenant, spec.id)
    try:
        await p.buckets.triggers.create(key, encode(spec))
    except KeyWrongLastSequenceError:
        raise Conflict(f"trigger {spec.id!r} exists: PUT /v1/triggers/{spec.id} replaces it") from None
    catalog(request).apply(key, spec)
    return JSONResponse(TriggerOut.of(spec, show_secret=True).model_dump(mode="json"), status_code=201)


async def replace_trigger(request: Request) -> Response:
    p = platform(request)
    given = await _parse(request)
    if given.id != trigger_id(request):
        raise InvalidRequest("the body's id must be the id in the path")
    key = names.trigger_key(principal(request).tenant, given.id)
    previous = await get_model(p.buckets.triggers, key, TriggerSpec)
    spec = await _build(request, given, previous)
    await p.buckets.triggers.put(key, encode(spec))
    catalog(request).apply(key, spec)
    status = 200 if previous else 201
    out = TriggerOut.of(
        spec, show_secret=given.webhook is not None and given.webhook.secret is None and previous is None
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=status)


async def list_triggers(request: Request) -> Response:
    p = platform(request)
    specs = [spec async for _, spec in scan(p.buckets.triggers, f"{principal(request).tenant}.>", TriggerSpec)]
    body = [TriggerOut.of(s).model_dump(mode="json") for s in sorted(specs, key=lambda s: s.id)]
    return JSONResponse({"triggers": body})


async def get_trigger(request: Request) -> Response:
    p = platform(request)
    spec = await get_model(
        p.buckets.triggers, names.trigger_key(principal(request).tenant, trigger_id(request)), TriggerSpec
    )
    if spec is None:
        raise TriggerNotFound(trigger_id(request))
    return JSONResponse(TriggerOut.of(spec).model_dump(mode="json"))


async def delete_trigger(request: Request) -> Response:
    p = platform(request)
    key = names.trigger_key(principal(request).tenant, trigger_id(request))
    if await get_model(p.buckets.triggers, key, TriggerSpec) is None:
        raise TriggerNotFound(trigger_id(request))
    await p.buckets.triggers.delete(key)
    await p.buckets.cron.delete(key)  # a trigger made again later starts its schedule afresh
    catalog(request).forget(key)
    return Response(status_code=204)
