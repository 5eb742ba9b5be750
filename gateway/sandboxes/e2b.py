"""E2B's control API (``api.e2b.app``), so the official ``e2b`` SDKs work unmodified against SoulBox.

Paths, JSON field names and status codes follow E2B's OpenAPI (the generated
client in the ``e2b`` package is the reference); errors use E2B's shape
``{"code": <http status>, "message": ..., "error_code": <SoulBox's stable code>}``.
The SDK authenticates with ``X-API-KEY`` (any SoulBox API key or operator key), checked with
every other route's credentials by the gate in :mod:`soulbox.gateway.auth`, which answers E2B's paths
in this shape too.
Point the SDK at SoulBox with ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` (both the
gateway's URL).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from soulbox.core.errors import InvalidRequest, SoulboxError
from soulbox.core.logging import get_logger
from soulbox.core.sandboxes import SandboxNetwork, SandboxRecord, SandboxState, Template

from ..bodies import M, json_body
from ..errors import status_of
from ..platform import platform
from ..principal import principal
from .control import SandboxControlPlane

log = get_logger(__name__)

CLIENT_ID = "soulbox"
MAX_JSON_BYTES = 1024 * 1024  # metadata and env vars included
MAX_PAGE = 1000

Handler = Callable[[Request], Awaitable[Response]]


class E2bNetwork(BaseModel):
    """The egress part of E2B's ``SandboxNetworkConfig`` (CIDRs and addresses; domain names are refused)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    allow_out: list[str] = Field(default_factory=list, alias="allowOut", max_length=256)
    deny_out: list[str] = Field(default_factory=list, alias="denyOut", max_length=256)


class NewSandbox(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    template_id: Template = Field(alias="templateID")
    timeout: int | None = Field(None, ge=1)
    auto_pause: bool = Field(False, alias="autoPause")
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = Field(None, alias="envVars")
    allow_internet_access: bool | None = None  # SoulBox's default (unset): no network
    network: E2bNetwork | None = None

    def egress(self) -> SandboxNetwork | None:
        network = self.network or E2bNetwork()
        wanted = SandboxNetwork(
            internet=bool(self.allow_internet_access), allow_out=network.allow_out, deny_out=network.deny_out
        )
        return wanted if wanted.enabled else None


class TimeoutBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int = Field(ge=0)


class ConnectBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int | None = Field(None, ge=0)


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    duration: int | None = Field(None, ge=0)


def e2b_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message, "error_code": code}, status_code=status)


def e2b_route(handler: Handler) -> Handler:
    """Render every error in E2B's shape (the gate has authenticated the request)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except SoulboxError as exc:
            return e2b_error(status_of(exc), exc.code, exc.message)
        except Exception as exc:  # the SDK parses every error body: keep E2B's shape, hide the details
            log.error("e2b.request_crashed", error=repr(exc), exc_info=exc)
            return e2b_error(500, "internal", "internal error")

    return wrapped


async def _body(request: Request, model: type[M], *, optional: bool = False) -> M:
    return await json_body(request, model, limit=MAX_JSON_BYTES, what="request body", empty_ok=optional)


def _plane(request: Request) -> SandboxControlPlane:
    plane: SandboxControlPlane = platform(request).sandboxes
    return plane


def _tenant(request: Request) -> str:
    return principal(request).tenant


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def created(record: SandboxRecord, domain: str) -> dict[str, Any]:
    """E2B's ``Sandbox``: what create, connect and resume answer."""
    return {
        "templateID": record.template,
        "sandboxID": record.sandbox_id,
        "alias": record.template,
        "clientID": CLIENT_ID,
        "envdVersion": record.envd_version,
        "envdAccessToken": record.access_token,
        "trafficAccessToken": record.traffic_token,
        "domain": domain,
    }


def listed(record: SandboxRecord) -> dict[str, Any]:
    """E2B's ``ListedSandbox``."""
    return {
        "templateID": record.template,
        "alias": record.template,
        "sandboxID": record.sandbox_id,
        "clientID": CLIENT_ID,
        "startedAt": _stamp(record.started_at),
        "endAt": _stamp(record.end_at),
        "cpuCount": record.cpu_count,
        "memoryMB": record.memory_mb,
        "diskSizeMB": record.disk_mb,
        "metadata": record.metadata,
        "state": record.state.value,
        "envdVersion": record.envd_version,
    }


def detail(record: SandboxRecord, domain: str) -> dict[str, Any]:
    """E2B's ``SandboxDetail``."""
    return {
        **listed(record),
        "envdAccessToken": record.access_token,
        "domain": domain,
        "allowInternetAccess": bool(record.network and record.network.internet),
    }


@e2b_route
async def create_sandbox(request: Request) -> Response:
    body: NewSandbox = await _body(request, NewSandbox)
    plane = _plane(request)
    record = await plane.create(
        _tenant(request),
        body.template_id,
        timeout_s=body.timeout,
        metadata=body.metadata or {},
        env_vars=body.env_vars or {},
        auto_pause=body.auto_pause,
        network=body.egress(),
    )
    return JSONResponse(created(record, plane.settings.sandboxes.domain), status_code=201)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in urllib.parse.parse_qsl(raw)}


def _states(raw: str | None) -> set[SandboxState] | None:
    if not raw:
        return None
    try:
        return {SandboxState(s.strip()) for s in raw.split(",") if s.strip()}
    except ValueError:
        raise InvalidRequest(f"state must be a comma-separated list of running, paused; got {raw!r}") from None


@e2b_route
async def list_sandboxes(request: Request) -> Response:
    query = request.query_params
    wanted = _metadata_filter(query.get("metadata"))
    states = _states(query.get("state")) if request.url.path.startswith("/v2/") else {SandboxState.RUNNING}
    template = query.get("template")
    records = [
        r
        for r in await _plane(request).list_records(_tenant(request))
        if (states is None or r.state in states)
        and all(r.metadata.get(k) == v for k, v in wanted.items())
        and (not template or r.template == template)
    ]
    if query.get("order") == "desc":
        records.reverse()
    try:
        limit = min(int(query.get("limit") or MAX_PAGE), MAX_PAGE)
        offset = int(query.get("nextToken") or 0)
    except ValueError:
        raise InvalidRequest("limit and nextToken must be integers") from None
    page = records[offset : offset + max(limit, 1)]
    headers = {"X-Next-Token": str(offset + len(page))} if offset + len(page) < len(records) else {}
    return JSONResponse([listed(r) for r in page], headers=headers)


@e2b_route
async def get_sandbox(request: Request) -> Response:
    plane = _plane(request)
    record = await plane.get(_tenant(request), request.path_params["sandbox_id"])
    return JSONResponse(detail(record, plane.settings.sandboxes.domain))


@e2b_route
async def kill_sandbox(request: Request) -> Response:
    await _plane(request).control(_tenant(request), request.path_params["sandbox_id"], "kill")
    return Response(status_code=204)


@e2b_route
async def set_timeout(request: Request) -> Response:
    body: TimeoutBody = await _body(request, TimeoutBody)
    await _plane(request).control(
        _tenant(request), request.path_params["sandbox_id"], "set_timeout", timeout_s=max(body.timeout, 1)
    )
    return Response(status_code=204)


@e2b_route
async def refresh(request: Request) -> Response:
    body: RefreshBody = await _body(request, RefreshBody, optional=True)
    await _plane(request).control(
        _tenant(request), request.path_params["sandbox_id"], "set_timeout", timeout_s=max(body.duration or 60, 1)
    )
    return Response(status_code=204)


@e2b_route
async def pause(request: Request) -> Response:
    await _plane(request).control(_tenant(request), request.path_params["sandbox_id"], "pause")
    return Response(status_code=204)


@e2b_route
async def connect(request: Request) -> Response:
    """Connect (v1/v2) and resume: a running sandbox answers 200, a paused one is resumed (201)."""
    body: ConnectBody = await _body(request, ConnectBody, optional=True)
    plane = _plane(request)
    sandbox_id = request.path_params["sandbox_id"]
    before = await plane.get(_tenant(request), sandbox_id)
    reply = await plane.control(_tenant(request), sandbox_id, "resume", timeout_s=body.timeout or None)
    assert reply.record is not None
    status = 201 if before.state == SandboxState.PAUSED else 200
    return JSONResponse(created(reply.record, plane.settings.sandboxes.domain), status_code=status)


@e2b_route
async def metrics(request: Request) -> Response:
    samples = await _plane(request).metrics(_tenant(request), request.path_params["sandbox_id"])
    start, end = request.query_params.get("start"), request.query_params.get("end")
    try:
        low = int(start) if start else None
        high = int(end) if end else None
    except ValueError:
        raise InvalidRequest("start and end are Unix timestamps in seconds") from None
    out = []
    for m in samples:
        unix = int(m.at.timestamp())
        if (low is not None and unix < low) or (high is not None and unix > high):
            continue
        out.append(
            {
                "timestamp": _stamp(m.at),
                "timestampUnix": unix,
                "cpuCount": m.cpu_count,
                "cpuUsedPct": m.cpu_used_pct,
                "memUsed": m.mem_used,
                "memTotal": m.mem_total,
                "memCache": 0,
                "diskUsed": m.disk_used,
                "diskTotal": m.disk_total,
            }
        )
    return JSONResponse(out)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@e2b_route
async def logs(request: Request) -> Response:
    """v2: ``{"logs": [{timestamp, level, message, fields}]}`` paged by ``cursor`` (ms) and ``direction``;
    v1: ``{"logs": [{timestamp, line}], "logEntries": [...]}`` from ``start`` (ms)."""
    query = request.query_params
    try:
        cursor = int(query.get("cursor") or query.get("start") or 0)
        limit = max(1, min(int(query.get("limit") or 1000), 10_000))
    except ValueError:
        raise InvalidRequest("cursor, start and limit are integers") from None
    backward = query.get("direction") == "backward"
    level, search = query.get("level"), query.get("search")
    lines = await _plane(request).logs(_tenant(request), request.path_params["sandbox_id"])
    picked = [
        line
        for line in lines
        if (not cursor or (_ms(line.at) <= cursor if backward else _ms(line.at) >= cursor))
        and (not level or line.level == level)
        and (not search or search in line.message)
    ]
    picked = (picked[::-1] if backward else picked)[:limit]
    entries = [{"timestamp": _stamp(x.at), "level": x.level, "message": x.message, "fields": {}} for x in picked]
    if request.url.path.startswith("/v2/"):
        return JSONResponse({"logs": entries})
    return JSONResponse(
        {"logs": [{"timestamp": _stamp(x.at), "line": x.message} for x in picked], "logEntries": entries}
    )


def routes() -> list[Route]:
    sid = "{sandbox_id}"
    return [
        Route("/sandboxes", create_sandbox, methods=["POST"], include_in_schema=False),
        Route("/v2/sandboxes", create_sandbox, methods=["POST"], include_in_schema=False),
        Route("/sandboxes", list_sandboxes, methods=["GET"], include_in_schema=False),
        Route("/v2/sandboxes", list_sandboxes, methods=["GET"], include_in_schema=False),
        Route(f"/sandboxes/{sid}", get_sandbox, methods=["GET"], include_in_schema=False),
        Route(f"/sandboxes/{sid}", kill_sandbox, methods=["DELETE"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/timeout", set_timeout, methods=["POST"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/refreshes", refresh, methods=["POST"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/pause", pause, methods=["POST"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/resume", connect, methods=["POST"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/connect", connect, methods=["POST"], include_in_schema=False),
        Route(f"/v2/sandboxes/{sid}/connect", connect, methods=["POST"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/metrics", metrics, methods=["GET"], include_in_schema=False),
        Route(f"/sandboxes/{sid}/logs", logs, methods=["GET"], include_in_schema=False),
        Route(f"/v2/sandboxes/{sid}/logs", logs, methods=["GET"], include_in_schema=False),
    ]
