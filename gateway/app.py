"""The Starlette application: routes, error handling and the NATS lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.logging import get_logger
from soulbox.core.secrets import MasterKeys
from soulbox.core.secrets_signing import SigningKeys
from soulbox.core.secrets_store import SecretStore
from soulbox.core.settings import Settings
from soulbox.core.tunnel import TunnelClient
from soulbox.triggers.catalog import TriggerCatalog

from . import aliases, deadletters, functions, hooks, invocations, reports, secrets, signed, tenants, triggers
from .auth import AuthGate, unlisted_routes
from .errors import EXCEPTION_HANDLERS, error_response
from .hardening import Hardening
from .identity import api as identity_api
from .identity import open_identity
from .instruments import GatewayInstruments, metrics
from .limits import LimitsGate, LimitsService, get_limits
from .middleware import RequestTrail
from .openapi import openapi_document
from .platform import Platform, platform
from .registry import FunctionRegistry
from .results import ResultWaiter
from .sandboxes import api as sandbox_api
from .sandboxes import e2b
from .sandboxes.control import SandboxControlPlane
from .sandboxes.dataplane import SandboxRouter
from .tracing import TraceRequests

log = get_logger(__name__)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    p = platform(request)
    if not p.nc.is_connected:
        return error_response(503, "unavailable", "not connected to NATS")
    return JSONResponse({"status": "ready"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.routes))


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
        Route("/v1/functions", functions.deploy, methods=["POST"]),
        Route("/v1/functions", functions.list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", functions.get_function, methods=["GET"]),
        Route("/v1/functions/{name}", functions.delete_function, methods=["DELETE"]),
        Route("/v1/functions/{name}/invoke", invocations.invoke, methods=["POST"]),
        Route("/v1/invocations/{invocation_id}", invocations.get_invocation, methods=["GET"], name="get_invocation"),
        Route("/v1/invocations/{invocation_id}/logs", invocations.get_invocation_logs, methods=["GET"]),
        Route("/v1/usage", reports.get_usage, methods=["GET"]),
        Route("/v1/limits", get_limits, methods=["GET"]),
        Route("/v1/audit", reports.get_audit, methods=["GET"]),
        Route("/v1/audit/verify", reports.verify_audit, methods=["GET"]),
        Route("/v1/tenants/{tenant}/export", tenants.export_tenant, methods=["GET"]),
        Route("/v1/tenants/{tenant}/data", tenants.delete_tenant_data, methods=["DELETE"]),
        Route("/v1/triggers", triggers.create_trigger, methods=["POST"]),
        Route("/v1/triggers", triggers.list_triggers, methods=["GET"]),
        Route("/v1/triggers/{trigger_id}", triggers.get_trigger, methods=["GET"]),
        Route("/v1/triggers/{trigger_id}", triggers.replace_trigger, methods=["PUT"]),
        Route("/v1/triggers/{trigger_id}", triggers.delete_trigger, methods=["DELETE"]),
        Route("/v1/hooks/{tenant}/{trigger_id}", hooks.webhook, methods=["POST"]),
        Route("/v1/functions/{name}/versions", aliases.list_versions, methods=["GET"]),
        Route("/v1/functions/{name}/aliases", aliases.list_aliases, methods=["GET"]),
        Route("/v1/functions/{name}/aliases/{alias}", aliases.put_alias, methods=["PUT"]),
        Route("/v1/functions/{name}/aliases/{alias}", aliases.delete_alias, methods=["DELETE"]),
        Route("/v1/functions/{name}/aliases/{alias}/rollback", aliases.rollback_alias, methods=["POST"]),
        Route("/v1/dead-letters", deadletters.list_dead_letters, methods=["GET"]),
        Route("/v1/dead-letters/{invocation_id}/replay", deadletters.replay_dead_letter, methods=["POST"]),
        Route("/v1/secrets", secrets.list_secrets, methods=["GET"]),
        Route("/v1/secrets/{name}", secrets.put_secret, methods=["PUT"]),
        Route("/v1/secrets/{name}", secrets.get_secret, methods=["GET"]),
        Route("/v1/secrets/{name}", secrets.delete_secret, methods=["DELETE"]),
        Route("/v1/signed-urls", signed.create_signed_url, methods=["POST"]),
        Route("/v1/signed-urls/rotate", signed.rotate_signing_key, methods=["POST"]),
        Route("/run/{tenant}/{path:path}", hooks.route, methods=list(ROUTE_METHODS), include_in_schema=False),
        *sandbox_api.routes(),
        *e2b.routes(),
        *identity_api.routes(),
    ]


ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def cors(settings: Settings) -> list[Middleware]:
    """CORS only when origins are configured: by default browsers get no cross-origin access."""
    origins = settings.gateway.cors_origins
    if not origins:
        return []
    expose = ["Retry-After", "X-Invocation-Id", "X-Exit-Code", "X-Duration-Ms", "Location"]
    every = ["*"]
    return [
        Middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=every, allow_headers=every, expose_headers=expose
        )
    ]


def create_app(settings: Settings) -> Starlette:
    master_keys = MasterKeys.from_settings(settings)  # at once: a bad master key stops the start

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await connect(settings, name="soulbox-gateway")
        js = nc.jetstream()
        buckets = await ensure_topology(js, settings)
        registry = FunctionRegistry(buckets.functions, buckets.artifacts, buckets.versions)
        waiter = ResultWaiter(nc, buckets.invocations)
        trigger_catalog = TriggerCatalog(buckets.triggers)
        await registry.start()
        await waiter.start()
        sandboxes = SandboxControlPlane(settings, nc, buckets.sandboxes, buckets.workers)
        tunnel = TunnelClient(nc)
        await tunnel.start()
        await trigger_catalog.start()
        app.state.authenticator = await open_identity(settings, buckets)
        for route in unlisted_routes(app.routes):
            log.warning("auth.route_without_permission", route=route, allowed="operator only")
        limits = LimitsService(settings.limits, js, buckets.limits, buckets.billing)
        await limits.start()
        app.state.limits = limits
        app.state.platform = Platform(settings, nc, js, buckets, registry, waiter, sandboxes, tunnel)
        app.state.triggers = trigger_catalog
        app.state.secrets = SecretStore(buckets.secrets, master_keys)
        app.state.signing_keys = SigningKeys(
            buckets.url_keys, master_keys, grace_s=settings.signed_urls.rotation_grace_s
        )
        # After a master-key rotation: every data key still wrapped by a retired key is rewrapped.
        await app.state.secrets.rewrap_all()
        await app.state.signing_keys.rewrap_all()
        try:
            yield
        finally:
            await app.state.authenticator.issuers.aclose()
            await limits.stop()
            await trigger_catalog.stop()
            await tunnel.close()
            await waiter.stop()
            await registry.stop()
            await nc.drain()

    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(SandboxRouter, domain=settings.sandboxes.domain),
            Middleware(Hardening, settings=settings.gateway),  # headers, deadline, body cap: on every answer
            *cors(settings),
            Middleware(TraceRequests),  # outside the trail: its log line carries the trace id
            Middleware(RequestTrail),  # outside the gate: refused calls are audited too
            Middleware(signed.SignedUrlGate, max_expires_s=settings.signed_urls.max_expires_s),
            Middleware(AuthGate),
            Middleware(LimitsGate),  # inside the gate: knows the principal
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.instruments = GatewayInstruments()
    return app
