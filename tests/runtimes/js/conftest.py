"""Fixtures: each test runs once per installed runtime, against real processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.schemas import FunctionSpec, Runtime
from soulbox.runtimes.js.config import FunctionConfig, no_config
from soulbox.runtimes.js.runtime import JsRuntime

from .guests import BUN, DENO, Guests, engine_or_skip

Make = Callable[..., tuple[JsRuntime, Guests]]


@pytest.fixture(params=[BUN, DENO], ids=["bun", "deno"])
def runtime_name(request: pytest.FixtureRequest) -> Runtime:
    engine_or_skip(request.param)
    return request.param  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """``make(runtime, {name: source}, configure=, cgroup=, sandboxed=)``: a JsRuntime serving those sources."""
    made: list[JsRuntime] = []

    def factory(
        runtime: Runtime,
        sources: dict[str, str],
        *,
        configure: Callable[[FunctionSpec], FunctionConfig] = no_config,
        cgroup: bool = True,
        sandboxed: bool = True,
    ) -> tuple[JsRuntime, Guests]:
        guests = Guests(runtime, sources)
        js = guests.runtime_for(tmp_path / str(len(made)), configure=configure, cgroup=cgroup, sandboxed=sandboxed)
        made.append(js)
        return js, guests

    yield factory
    for js in made:
        await js.close()


@pytest_asyncio.fixture
async def local_server() -> AsyncIterator[int]:
    """A port on the host's 127.0.0.1 that answers any HTTP request with `pong`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
