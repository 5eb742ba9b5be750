"""Shared fixtures: a real nats-server per test on a free port, and clients to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core.bus import Buckets, connect, ensure_topology
from soulbox.core.natsserver import NatsServer
from soulbox.core.settings import Settings


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        nats={"urls": [nats_server.url]},  # type: ignore[arg-type]
        embedded_nats={"enabled": False},  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest_asyncio.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await connect(settings, name="tests")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest_asyncio.fixture
async def buckets(js: JetStreamContext, settings: Settings) -> Buckets:
    return await ensure_topology(js, settings)
