"""SoulBox's own sandbox API, ``/v1/sandboxes``: the same operations as E2B's, in SoulBox's shapes.

Errors are SoulBox's usual ``{"error": {"code", "message"}}`` (the gateway's
exception handlers); the data plane of a sandbox is the same for both APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute

from soulbox.core.errors import InvalidRequest
from soulbox.core.outputlog import until
from soulbox.core.sandboxes import (
    SandboxLogLine,
    SandboxMetric,
    SandboxNetwork,
    SandboxRecord,
    SandboxState,
    Template,
)

from ..bodies import M, json_body
from ..platform import platform
from ..principal import principal
from .control import SandboxControlPlane
from .e2b import MAX_JSON_BYTES
from .files import SandboxFiles
from .terminal import terminal


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: Template = "base"
    timeout_s: int | None = Field(None, ge=1, description="default: sandboxes.default_timeout_s")
    auto_pause: bool = Field(False, description="pause instead of kill at the timeout")
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, description="environment of every process started")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="env var -> name of one of the tenant's secrets: put into the environment of every process",
    )
    network: SandboxNetwork | None = Field(None, description="network egress; default: none")


class SetTimeout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: int = Field(ge=1, description="seconds from now")


class SandboxOut(BaseModel):
    sandbox_id: str
    template: str
    state: SandboxState
    started_at: datetime
    end_at: datetime
    metadata: dict[str, str]
    cpu_count: int
    memory_mb: int
    disk_mb: int
    envd_version: str
    access_token: str | None = Field(None, description="for the data plane's X-Access-Token; on create only")
    network: SandboxNetwork | None = Field(None, description="the egress it was given; absent: no network")

    @classmethod
    def of(cls, record: SandboxRecord, *, with_token: bool = False) -> SandboxOut:
        return cls(
            sandbox_id=record.sandbox_id,
            template=record.template,
            state=record.state,
            started_at=record.started_at,
            end_at=record.end_at,
            metadata=record.metadata,
            cpu_count=record.cpu_count,
            memory_mb=record.memory_mb,
            disk_mb=record.disk_mb,
            envd_version=record.envd_version,
            access_token=record.access_token if with_token else None,
            network=record.network,
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxOut]


class MetricsOut(BaseModel):
    metrics: list[SandboxMetric]


class LogsOut(BaseModel):
    logs: list[SandboxLogLine]


async def _json(request: Request, model: type[M]) -> M:
    return await json_body(request, model, limit=MAX_JSON_BYTES, what="request body", empty_ok=True)


def _ctx(request: Request) -> tuple[SandboxControlPlane, str]:
    p = platform(request)
    return p.sandboxes, principal(request).tenant


def _out(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", exclude_none=True), status_code=status)


async def create(request: Request) -> Response:
    plane, tenant = _ctx(request)
    body = await _json(request, CreateSandbox)
    if both := sorted(set(body.env_vars) & set(body.secrets)):
        raise InvalidRequest(f"env_vars and secrets both bind {', '.join(both)}")
    await request.app.state.secrets.check_exist(tenant, set(body.secrets.values()))
    record = await plane.create(
        tenant,
        body.template,
        timeout_s=body.timeout_s,
        metadata=body.metadata,
        env_vars=body.env_vars,
        auto_pause=body.auto_pause,
        secrets=body.secrets,
        network=body.network,
    )
    return _out(SandboxOut.of(record, with_token=True), 201)


async def list_sandboxes(request: Request) -> Response:
    plane, tenant = _ctx(request)
    raw_state = request.query_params.get("state")
    try:
        state = SandboxState(raw_state) if raw_state is not None else None
    except ValueError:
        raise InvalidRequest(f"state must be running or paused, got {raw_state!r}") from None
    records = await plane.list_records(tenant, state=state)
    return _out(SandboxList(sandboxes=[SandboxOut.of(r) for r in records]))


async def get(request: Request) -> Response:
    plane, tenant = _ctx(request)
    return _out(SandboxOut.of(await plane.get(tenant, request.path_params["sandbox_id"])))


async def kill(request: Request) -> Response:
    plane, tenant = _ctx(request)
    await plane.control(tenant, request.path_params["sandbox_id"], "kill")
    return Response(status_code=204)


async def set_timeout(request: Request) -> Response:
    plane, tenant = _ctx(request)
    body = await _json(request, SetTimeout)
    reply = await plane.control(tenant, request.path_params["sandbox_id"], "set_timeout", timeout_s=body.timeout_s)
    assert reply.record is not None
    return _out(SandboxOut.of(reply.record))


async def pause(request: Request) -> Response:
    plane, tenant = _ctx(request)
    reply = await plane.control(tenant, request.path_params["sandbox_id"], "pause")
    assert reply.record is not None
    return _out(SandboxOut.of(reply.record))


async def resume(request: Request) -> Response:
    plane, tenant = _ctx(request)
    reply = await plane.control(tenant, request.path_params["sandbox_id"], "resume")
    assert reply.record is not None
    return _out(SandboxOut.of(reply.record))


async def metrics(request: Request) -> Response:
    plane, tenant = _ctx(request)
    return _out(MetricsOut(metrics=await plane.metrics(tenant, request.path_params["sandbox_id"])))


async def logs(request: Request) -> Response:
    plane, tenant = _ctx(request)
    if request.query_params.get("follow", "").lower() in ("1", "true", "yes"):
        lines = await plane.follow_logs(tenant, request.path_params["sandbox_id"])
        deadline = asyncio.get_running_loop().time() + platform(request).settings.logs.follow_max_s
        return StreamingResponse(_ndjson(until(lines, deadline)), media_type="application/x-ndjson")
    return _out(LogsOut(logs=await plane.logs(tenant, request.path_params["sandbox_id"])))


async def _ndjson(lines: AsyncIterator[SandboxLogLine]) -> AsyncIterator[str]:
    async for line in lines:
        yield line.model_dump_json() + "\n"


def routes() -> list[BaseRoute]:
    one = "/v1/sandboxes/{sandbox_id}"
    return [
        Route("/v1/sandboxes", create, methods=["POST"]),
        Route("/v1/sandboxes", list_sandboxes, methods=["GET"]),
        Route(one, get, methods=["GET"]),
        Route(one, kill, methods=["DELETE"]),
        Route(f"{one}/timeout", set_timeout, methods=["POST"]),
        Route(f"{one}/pause", pause, methods=["POST"]),
        Route(f"{one}/resume", resume, methods=["POST"]),
        Route(f"{one}/metrics", metrics, methods=["GET"]),
        Route(f"{one}/logs", logs, methods=["GET"]),
        Route(f"{one}/files", SandboxFiles(), methods=["GET", "POST"]),
        WebSocketRoute(f"{one}/pty", terminal),
    ]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_body(model: type[BaseModel], description: str) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_ID = {"name": "sandbox_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _error(description: str) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


MODELS: list[type[BaseModel]] = [CreateSandbox, SetTimeout, SandboxOut, SandboxList, MetricsOut, LogsOut]
OPERATIONS: dict[tuple[str, str], dict[str, object]] = {
    ("/v1/sandboxes", "post"): {
        "summary": "Create a sandbox from a template (taken from the warm pool when one is ready)",
        "requestBody": {"content": {"application/json": {"schema": _ref(CreateSandbox)}}},
        "responses": {
            "201": _json_body(SandboxOut, "created; access_token is shown only here"),
            "400": _error("bad parameters"),
            "404": _error("no such template"),
            "429": _error("no worker has room"),
        },
    },
    ("/v1/sandboxes", "get"): {
        "summary": "List the tenant's sandboxes",
        "parameters": [{"name": "state", "in": "query", "schema": {"enum": ["running", "paused"]}}],
        "responses": {"200": _json_body(SandboxList, "sandboxes")},
    },
    ("/v1/sandboxes/{sandbox_id}", "get"): {
        "summary": "Get a sandbox",
        "parameters": [_ID],
        "responses": {"200": _json_body(SandboxOut, "the sandbox"), "404": _error("no such sandbox")},
    },
    ("/v1/sandboxes/{sandbox_id}", "delete"): {
        "summary": "Kill a sandbox",
        "parameters": [_ID],
        "responses": {"204": {"description": "killed"}, "404": _error("no such sandbox")},
    },
    ("/v1/sandboxes/{sandbox_id}/timeout", "post"): {
        "summary": "Set the sandbox's timeout, counted from now",
        "parameters": [_ID],
        "requestBody": {"content": {"application/json": {"schema": _ref(SetTimeout)}}},
        "responses": {"200": _json_body(SandboxOut, "the sandbox"), "404": _error("no such sandbox")},
    },
    ("/v1/sandboxes/{sandbox_id}/pause", "post"): {
        "summary": "Pause (freeze) every process of the sandbox, keeping its memory",
        "parameters": [_ID],
        "responses": {
            "200": _json_body(SandboxOut, "paused"),
            "404": _error("no such sandbox"),
            "409": _error("already paused"),
        },
    },
    ("/v1/sandboxes/{sandbox_id}/resume", "post"): {
        "summary": "Resume a paused sandbox",
        "parameters": [_ID],
        "responses": {"200": _json_body(SandboxOut, "running"), "404": _error("no such sandbox")},
    },
    ("/v1/sandboxes/{sandbox_id}/logs", "get"): {
        "summary": "The sandbox's log: its daemons' output and lifecycle, timestamped (kept after it ends)",
        "parameters": [
            _ID,
            {
                "name": "follow",
                "in": "query",
                "schema": {"type": "boolean"},
                "description": "NDJSON, one SandboxLogLine per line as it comes, until the sandbox ends",
            },
        ],
        "responses": {
            "200": {
                **_json_body(LogsOut, "lines (JSON), or followed live (NDJSON)"),
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/LogsOut"}},
                    "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/SandboxLogLine"}},
                },
            },
            "404": _error("no such sandbox"),
        },
    },
    ("/v1/sandboxes/{sandbox_id}/metrics", "get"): {
        "summary": "CPU, memory and disk samples of the sandbox (every 5 s, the last hour)",
        "parameters": [_ID],
        "responses": {"200": _json_body(MetricsOut, "samples"), "404": _error("no such sandbox")},
    },
}
