"""The tunnel proxy in a real Starlette app served by uvicorn, driven by httpx, over a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
import uvicorn
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Scope

from soulbox.core import names
from soulbox.core.bus import connect
from soulbox.core.errors import NotFound, TunnelError
from soulbox.core.natsserver import free_port, wait_for_port
from soulbox.core.settings import Settings
from soulbox.core.tunnel import TunnelClient, TunnelRequest, TunnelResponse, TunnelServer, TunnelSettings
from soulbox.gateway.errors import EXCEPTION_HANDLERS
from soulbox.gateway.proxy import TunnelProxy, TunnelProxyResponse, end_to_end

pytestmark = pytest.mark.timeout(60)

SUBJECT = names.worker_tunnel_subject("w1")
FAST = TunnelSettings(ping_interval_s=0.2, idle_timeout_s=1.5, open_timeout_s=2.0)


async def wait_for_port_async(port: int) -> None:
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 10.0)


class Worker:
    """The worker side: a tunnel handler whose behaviour each test picks by path."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.requests: list[TunnelRequest] = []

    async def handle(self, request: TunnelRequest) -> TunnelResponse:
        self.requests.append(request)
        # The proxy forwards the raw path as the client sent it.
        path = request.path.removeprefix("/sandboxes/sb1").removeprefix("/by-host")
        if path.startswith("/echo"):
            body = await request.body.read()
            info = {"method": request.method, "path": request.path, "query": request.query, "target": request.target}
            info["headers"] = [name.lower() for name, _ in request.headers]
            return TunnelResponse(
                201,
                [
                    ("x-info", json.dumps(info)),
                    ("keep-alive", "timeout=5"),
                    ("proxy-thing", "1"),
                    ("x-dropped", "1"),
                    ("connection", "x-dropped"),
                    ("content-length", str(len(body))),
                ],
                body,
            )
        if path == "/digest":
            h = hashlib.sha256()
            async for chunk in request.body:
                h.update(chunk)
            return TunnelResponse(200, [("content-type", "text/plain")], h.hexdigest().encode())
        if path == "/ticks":
            return TunnelResponse(200, [("content-type", "text/plain")], self._ticks())
        if path == "/forever":
            return TunnelResponse(200, [], self._forever())
        if path == "/stuck":
            try:
                await asyncio.sleep(3600)  # e.g. a sandbox that never answers
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if path == "/broken":
            return TunnelResponse(200, [], self._broken())
        raise TunnelError("sandbox sb1 is not running", code="sandbox_not_running")

    async def _ticks(self) -> AsyncIterator[bytes]:
        for i in range(6):
            yield f"tick {i}\n".encode()
            await asyncio.sleep(0.3)

    async def _forever(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 100
                await asyncio.sleep(0.05)
        finally:
            self.cancelled.set()

    async def _broken(self) -> AsyncIterator[bytes]:
        yield b"some"
        await asyncio.sleep(0.1)
        raise RuntimeError("daemon died")


@pytest_asyncio.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    nc = await connect(settings, name="worker")
    worker = Worker()
    try:
        async with TunnelServer(nc, SUBJECT, worker.handle, settings=FAST):
            yield worker
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def base_url(nc: NATS) -> AsyncIterator[str]:
    client = TunnelClient(nc, settings=FAST)
    await client.start()

    async def sandbox(request: Request) -> Response:
        subject = SUBJECT if request.path_params["sandbox"] == "sb1" else names.worker_tunnel_subject("gone")
        return TunnelProxyResponse(client, subject, {"sandbox": request.path_params["sandbox"]})

    async def resolve(scope: Scope) -> tuple[str, dict[str, str]]:
        host = dict(scope["headers"]).get(b"host", b"").decode()
        if not host.startswith("49983-sb1."):
            raise NotFound(f"no sandbox for host {host}")
        return SUBJECT, {"sandbox": "sb1", "port": "49983"}

    app = Starlette(
        routes=[
            Route("/sandboxes/{sandbox}/{path:path}", sandbox, methods=["GET", "POST", "PUT"]),
            Mount("/by-host", TunnelProxy(client, resolve)),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    await wait_for_port_async(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        await client.close()


async def test_request_and_response_pass_through(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(
            "/sandboxes/sb1/echo/a%2Fb?x=1&y=%20",
            content=b"payload",
            headers={"x-custom": "yes", "te": "trailers", "proxy-authorization": "secret"},
        )
    assert response.status_code == 201
    assert response.content == b"payload"
    info = json.loads(response.headers["x-info"])
    assert info["method"] == "POST" and info["path"] == "/sandboxes/sb1/echo/a%2Fb" and info["query"] == "x=1&y=%20"
    assert info["target"] == {"sandbox": "sb1"}
    assert (
        "x-custom" in info["headers"] and "te" not in info["headers"] and "proxy-authorization" not in info["headers"]
    )
    assert response.headers["content-length"] == "7"
    for hop in ("keep-alive", "proxy-thing", "x-dropped"):
        assert hop not in response.headers


async def test_streamed_upload_arrives_whole(worker: Worker, base_url: str) -> None:
    body = os.urandom(8 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.put("/sandboxes/sb1/digest", content=chunks())
    assert response.status_code == 200
    assert response.text == hashlib.sha256(body).hexdigest()


async def test_streamed_response_arrives_incrementally(worker: Worker, base_url: str) -> None:
    arrivals: list[tuple[float, bytes]] = []
    async with httpx.AsyncClient(base_url=base_url) as http:
        started = time.monotonic()
        async with http.stream("GET", "/sandboxes/sb1/ticks") as response:
            assert response.status_code == 200
            assert response.headers.get("transfer-encoding") == "chunked"
            async for chunk in response.aiter_raw():
                arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == b"".join(f"tick {i}\n".encode() for i in range(6))
    assert len(arrivals) >= 5
    assert arrivals[0][0] < 0.5 and arrivals[-1][0] > 1.4


async def test_client_disconnect_cancels_the_upstream(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http, http.stream("GET", "/sandboxes/sb1/forever") as response:
        async for _ in response.aiter_raw():
            break
    await asyncio.wait_for(worker.cancelled.wait(), 3)


async def test_client_gone_before_the_response_cancels_the_upstream(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/sandboxes/sb1/stuck")
    await asyncio.wait_for(worker.cancelled.wait(), 3)


async def test_tunnel_errors_are_json(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        unreachable = await http.get("/sandboxes/other/x")
        failed = await http.get("/sandboxes/sb1/nothing-here")
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["code"] == "sandbox_unreachable"
    assert failed.status_code == 502
    assert failed.json() == {"error": {"code": "sandbox_not_running", "message": "sandbox sb1 is not running"}}


async def test_failure_mid_body_truncates_the_response(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/sandboxes/sb1/broken")


async def test_asgi_app_routes_by_host(worker: Worker, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        ok = await http.post("/by-host/echo", content=b"hi", headers={"host": "49983-sb1.sandbox.local"})
        unknown = await http.get("/by-host/echo", headers={"host": "1-nope.sandbox.local"})
    assert ok.status_code == 201 and ok.content == b"hi"
    assert json.loads(ok.headers["x-info"])["target"] == {"sandbox": "sb1", "port": "49983"}
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_end_to_end_headers() -> None:
    headers = [("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Upgrade", "h2c"), ("Content-Length", "3"), ("A", "b")]
    assert end_to_end(headers) == [("Content-Length", "3"), ("A", "b")]
