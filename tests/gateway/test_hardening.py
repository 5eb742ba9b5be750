"""Every answer of the gateway: security headers, a deadline, a body cap, no details in a 500, CORS only when set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest_asyncio
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core.bus import Buckets
from soulbox.core.settings import Settings
from soulbox.gateway.app import create_app

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def crash(request: Request) -> Response:
    raise RuntimeError("secret detail /etc/passwd")


async def slow(request: Request) -> Response:
    await asyncio.sleep(5)
    return JSONResponse({})


@pytest_asyncio.fixture
async def gateway(settings: Settings, buckets: Buckets) -> AsyncIterator[Gateway]:
    @asynccontextmanager
    async def started(**gateway: Any) -> AsyncIterator[httpx.AsyncClient]:
        tuned = settings.model_copy(update={"gateway": settings.gateway.model_copy(update=gateway)})
        app = create_app(tuned)
        # Routes that misbehave, to see what the middleware makes of it.
        app.add_route("/v1/test/crash", crash, methods=["GET"])
        app.add_route("/v1/test/slow", slow, methods=["GET"])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c

    yield started


def assert_hardened(response: httpx.Response, *, api: bool = True) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    if api:
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_security_headers_on_every_answer(gateway: Gateway) -> None:
    async with gateway(api_keys=[SecretStr("k" * 20)]) as client:
        for response in (
            await client.get("/healthz"),
            await client.get("/v1/functions", headers={"x-api-key": "k" * 20}),
            await client.get("/v1/functions"),  # 401 from the key gate
            await client.get("/v1/nowhere"),  # 404
            await client.post("/healthz"),  # 405
        ):
            assert_hardened(response)
            assert response.headers["content-type"].startswith("application/json")
        assert "strict-transport-security" not in response.headers
        # Functions behind /run/ answer with their own content: no frame or CSP policy imposed.
        run = await client.get("/run/nothing", headers={"x-api-key": "k" * 20})
        assert_hardened(run, api=False)
        assert "content-security-policy" not in run.headers
    async with gateway(hsts_max_age_s=31536000) as client:
        assert (await client.get("/healthz")).headers["strict-transport-security"].startswith("max-age=31536000")


async def test_a_crash_is_a_500_without_details(gateway: Gateway) -> None:
    async with gateway() as client:
        response = await client.get("/v1/test/crash")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "passwd" not in response.text and "Traceback" not in response.text
    assert_hardened(response)


async def test_a_slow_handler_meets_the_deadline(gateway: Gateway) -> None:
    async with gateway(request_timeout_s=0.3) as client:
        response = await client.get("/v1/test/slow")
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "request_timeout"
        assert_hardened(response)
        assert (await client.get("/healthz")).status_code == 200


async def test_bodies_past_the_cap_are_413(gateway: Gateway) -> None:
    async with gateway(max_body_bytes=1024, max_module_bytes=1024) as client:
        cap = 1024 + 1024 * 1024
        declared = await client.post("/v1/functions", content=b"x" * (cap + 1))
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        assert_hardened(declared)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(cap // 65536 + 2):
                yield b"x" * 65536

        streamed = await client.post("/v1/triggers", content=chunks())
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
        e2b = await client.post("/v2/sandboxes", content=b"x" * (cap + 1))
        assert e2b.status_code == 413 and e2b.json()["error_code"] == "payload_too_large"


async def test_cors_only_when_origins_are_set(gateway: Gateway) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    async with gateway() as client:
        response = await client.get("/v1/functions", headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in (await client.options("/v1/functions", headers=preflight)).headers
    async with gateway(cors_origins=["https://app.example"]) as client:
        response = await client.get("/v1/functions", headers={"origin": "https://app.example"})
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        answered = await client.options("/v1/functions", headers=preflight)
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.options("/v1/functions", headers={**preflight, "origin": "https://evil.example"})
        assert other.status_code == 400


async def test_a_trickled_body_meets_the_deadline_on_long_calls(gateway: Gateway) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" "
            await asyncio.sleep(0.1)

    async with gateway(request_timeout_s=0.5) as client:
        # Sandbox creates keep their own (longer) deadline, but only once their body is in.
        response = await client.post("/v1/sandboxes", content=trickle())
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "request_timeout"
        e2b = await client.post("/v2/sandboxes", content=trickle())
        assert e2b.status_code == 504 and e2b.json()["error_code"] == "request_timeout"
