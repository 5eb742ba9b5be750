"""The Starlette application: routes, error handling and the NATS lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.settings import Settings

from . import functions, invocations, reports, tenants
from .errors import EXCEPTION_HANDLERS, error_response
from .middleware import RequestTrail
from .openapi import openapi_document
from .platform import Platform, platform
from .registry import FunctionRegistry
from .results import ResultWaiter


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    p = platform(request)
    if not p.nc.is_connected:
        return error_response(503, "unavailable", "not connected to NATS")
    return JSONResponse({"status": "ready"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.routes))


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/v1/functions", functions.deploy, methods=["POST"]),
        Route("/v1/functions", functions.list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", functions.get_function, methods=["GET"]),
        Route("/v1/functions/{name}", functions.delete_function, methods=["DELETE"]),
        Route("/v1/functions/{name}/invoke", invocations.invoke, methods=["POST"]),
        Route("/v1/invocations/{invocation_id}", invocations.get_invocation, methods=["GET"], name="get_invocation"),
        Route("/v1/usage", reports.get_usage, methods=["GET"]),
        Route("/v1/audit", reports.get_audit, methods=["GET"]),
        Route("/v1/audit/verify", reports.verify_audit, methods=["GET"]),
        Route("/v1/tenants/{tenant}/export", tenants.export_tenant, methods=["GET"]),
        Route("/v1/tenants/{tenant}/data", tenants.delete_tenant_data, methods=["DELETE"]),
    ]


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await connect(settings, name="soulbox-gateway")
        js = nc.jetstream()
        buckets = await ensure_topology(js, settings)
        registry = FunctionRegistry(buckets.functions, buckets.artifacts)
        waiter = ResultWaiter(nc, buckets.invocations)
        await registry.start()
        await waiter.start()
        app.state.platform = Platform(settings, nc, js, buckets, registry, waiter)
        try:
            yield
        finally:
            await waiter.stop()
            await registry.stop()
            await nc.drain()

    return Starlette(
        routes=routes(),
        middleware=[Middleware(RequestTrail)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
