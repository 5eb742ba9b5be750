"""Rate limits and quotas, per tenant and per API key, enforced before any handler runs.

:class:`LimitsGate` (pure ASGI middleware, inside the authentication gate so
the principal is known) answers 429 with ``Retry-After``:

- ``rate_limited``: the tenant's or the API key's requests per second
  (:mod:`.ratelimit`: shared counters in JetStream, every replica together);
- ``quota_exceeded``: a call that starts an invocation (invoke, webhook, HTTP
  route, dead-letter replay) when the tenant's invocations today or GB-seconds
  this month are used up (:mod:`.quotas`, Retry-After: until the period
  rolls), or a sandbox create when the tenant has its maximum of live sandboxes.

Limits come from the settings (``SOULBOX_LIMITS__*``) unless a record in KV
``sb_limits`` overrides them: ``tenant.<tenant>`` or ``key.<key id>``
(:func:`put_limits`). E2B's paths answer in E2B's error shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.kvmirror import KvMirror
from soulbox.core.schemas import NAME_RE, LimitsRecord
from soulbox.core.settings import LimitsSettings

from .errors import error_response
from .hardening import E2B_PREFIXES
from .principal import SCOPE_KEY, Principal, principal
from .quotas import Refusal, UsageLedger
from .ratelimit import RateLimiter

_UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
_INVOKING = re.compile(r"^(/v1/functions/[^/]+/invoke|/v1/hooks/[^/]+/[^/]+|/v1/dead-letters/[^/]+/replay)$")
_SANDBOX_CREATE = frozenset({"/v1/sandboxes", "/sandboxes", "/v2/sandboxes"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one tenant (None: unlimited)."""

    requests_per_s: float | None
    concurrent_sandboxes: int | None
    invocations_per_day: int | None
    gb_seconds_per_month: float | None


def key_token(key_id: str) -> str:
    """``key_id`` as one KV key / subject token: itself when it is a plain name, else a digest of it."""
    if NAME_RE.match(key_id):
        return key_id
    return "h" + hashlib.sha256(key_id.encode()).hexdigest()[:32]


async def put_limits(
    kv: KeyValue, record: LimitsRecord, *, tenant: str | None = None, key_id: str | None = None
) -> None:
    """Set the limits of ``tenant`` or of the API key ``key_id`` (every gateway follows within a moment)."""
    if (tenant is None) == (key_id is None):
        raise ValueError("give exactly one of tenant and key_id")
    key = names.tenant_limits_key(tenant) if tenant is not None else names.api_key_limits_key(key_token(key_id or ""))
    await kv.put(key, encode(record))


class LimitsService:
    """What the gate consults: the limits records, the shared rate limiter and the usage ledger."""

    def __init__(self, settings: LimitsSettings, js: JetStreamContext, limits: KeyValue, billing: KeyValue) -> None:
        self._settings = settings
        self.records: KvMirror[LimitsRecord] = KvMirror(
            limits,
            LimitsRecord,
            on_put=lambda _k, _v: self._resolved.clear(),
            on_delete=lambda _k: self._resolved.clear(),
        )
        self._resolved: dict[str, Limits] = {}  # per tenant, until a record changes
        self.limiter = RateLimiter(js, window_s=settings.window_s, chunk_fraction=settings.chunk_fraction)
        self.ledger = UsageLedger(billing)

    async def start(self) -> None:
        await self.records.start()
        await self.ledger.start()

    async def stop(self) -> None:
        await self.ledger.stop()
        await self.records.stop()

    @property
    def settings(self) -> LimitsSettings:
        """The defaults; a tenant's or key's record overrides them field by field."""
        return self._settings

    @settings.setter
    def settings(self, settings: LimitsSettings) -> None:
        self._settings = settings
        self._resolved.clear()

    def for_tenant(self, tenant: str) -> Limits:
        found = self._resolved.get(tenant)
        if found is None:
            found = self._resolved[tenant] = self._resolve(tenant)
        return found

    def _resolve(self, tenant: str) -> Limits:
        record = self.records.values.get(names.tenant_limits_key(tenant)) or LimitsRecord()
        d = self.settings
        return Limits(
            record.requests_per_s if record.requests_per_s is not None else d.requests_per_s,
            record.concurrent_sandboxes if record.concurrent_sandboxes is not None else d.concurrent_sandboxes,
            record.invocations_per_day if record.invocations_per_day is not None else d.invocations_per_day,
            record.gb_seconds_per_month if record.gb_seconds_per_month is not None else d.gb_seconds_per_month,
        )

    def key_rate(self, token: str) -> float | None:
        record = self.records.values.get(names.api_key_limits_key(token))
        if record is not None and record.requests_per_s is not None:
            return record.requests_per_s
        return self.settings.key_requests_per_s


class LimitsGate:
    """Pure ASGI middleware: 429 before the handler when a limit or quota refuses the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: LimitsService | None = getattr(scope["app"].state, "limits", None) if "app" in scope else None
        path: str = scope.get("path", "")
        if scope["type"] != "http" or service is None or path in _UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(service, scope, path)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message, retry_after = refusal
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        response: JSONResponse
        if path.startswith(E2B_PREFIXES):
            response = JSONResponse({"code": 429, "message": message, "error_code": code}, 429, headers=headers)
        else:
            response = error_response(429, code, message, headers=headers)
        await response(scope, receive, send)

    async def _refusal(self, service: LimitsService, scope: Scope, path: str) -> tuple[str, str, float] | None:
        found = scope.get(SCOPE_KEY)
        who = found if isinstance(found, Principal) else None
        tenant = who.tenant if who is not None else scope["app"].state.platform.settings.tenant
        limits = service.for_tenant(tenant)
        if who is not None and who.key_id:
            token = key_token(who.key_id)
            rate = service.key_rate(token)
            if rate is not None:
                wait = await service.limiter.admit(f"k.{token}", rate)
                if wait is not None:
                    return "rate_limited", f"more than {rate:g} requests per second with this API key", wait
        if limits.requests_per_s is not None:
            wait = await service.limiter.admit(f"t.{names.tenant_token(tenant)}", limits.requests_per_s)
            if wait is not None:
                return "rate_limited", f"more than {limits.requests_per_s:g} requests per second", wait
        method = scope["method"]
        if (method == "POST" and _INVOKING.match(path)) or path.startswith("/run/"):
            quota: Refusal | None = service.ledger.check(
                tenant,
                invocations_per_day=limits.invocations_per_day,
                gb_seconds_per_month=limits.gb_seconds_per_month,
            )
            if quota is not None:
                return "quota_exceeded", quota.message, quota.retry_after_s
        if method == "POST" and path in _SANDBOX_CREATE and limits.concurrent_sandboxes is not None:
            live = await scope["app"].state.platform.sandboxes.list_records(tenant)
            if len(live) >= limits.concurrent_sandboxes:
                message = f"the quota of {limits.concurrent_sandboxes} live sandboxes is used up"
                return "quota_exceeded", message, service.settings.sandbox_retry_after_s
        return None


class LimitsShown(BaseModel):
    """The limits in force; null: unlimited."""

    requests_per_s: float | None
    key_requests_per_s: float | None = Field(description="the caller's API key's own limit")
    concurrent_sandboxes: int | None
    invocations_per_day: int | None
    gb_seconds_per_month: float | None


class QuotaUsage(BaseModel):
    """What counts against the quotas: billed usage of the current UTC day and month."""

    invocations_today: int
    gb_seconds_this_month: float


class LimitsOut(BaseModel):
    """``GET /v1/limits``: the caller's tenant's limits and its usage counted against them."""

    tenant: str
    limits: LimitsShown
    usage: QuotaUsage


async def get_limits(request: Request) -> Response:
    """The caller's tenant's limits in force and its usage counted against the quotas."""
    service: LimitsService = request.app.state.limits
    who = principal(request)
    limits = service.for_tenant(who.tenant)
    out = LimitsOut(
        tenant=who.tenant,
        limits=LimitsShown(
            **dataclasses.asdict(limits),
            key_requests_per_s=service.key_rate(key_token(who.key_id)) if who.key_id else None,
        ),
        usage=QuotaUsage(
            invocations_today=service.ledger.invocations_today(who.tenant),
            gb_seconds_this_month=service.ledger.gb_seconds_this_month(who.tenant),
        ),
    )
    return JSONResponse(out.model_dump(mode="json"))
