from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from tests.e2e.conftest import deploy
from tests.guests import wasm
from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole stack with two trigger services, so that every test also checks they do not double-fire."""
    s = Stack(
        tmp_path_factory.mktemp("stack"),
        workers=1,
        triggers=2,
        env={"SOULBOX_TRIGGERS__CALLBACK_BASE_DELAY_S": "0.2", "SOULBOX_TRIGGERS__CALLBACK_ATTEMPTS": "3"},
    )
    try:
        s.start()  # inside the try: a stack that never gets ready is stopped too
        with httpx.Client(base_url=s.url, timeout=30) as api:
            for name in ("echo", "slow", "trap"):
                assert deploy(api, name, wasm(name), timeout_ms=5000).status_code in (200, 201)
        yield s
    finally:
        s.stop()


@pytest_asyncio.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def client(stack: Stack) -> AsyncIterator[NATS]:
    nc = await nats.connect(stack.nats.url)
    try:
        yield nc
    finally:
        await nc.close()
