"""A real sandbox host: its own nats-server, a launcher with real bubblewrap boxes, the base template."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from soulbox.core.bus import Buckets
from soulbox.core.settings import Settings
from soulbox.runtimes.linux.sandbox import Launcher
from soulbox.runtimes.sandboxes.host import SandboxHost
from soulbox.runtimes.sandboxes.templates import Templates
from tests.runtimes.linux.conftest import _kernel_lacks, isolated_settings

CAPACITY = 3


@pytest.fixture
def host_settings(settings: Settings) -> Settings:
    if reason := _kernel_lacks():
        pytest.skip(reason)
    sandboxes = settings.sandboxes.model_copy(update={"pool_size": 1, "capacity": CAPACITY, "memory_mb": 128})
    return settings.model_copy(update={"sandboxes": sandboxes, "linux": isolated_settings()})


@pytest_asyncio.fixture
async def box_launcher(host_settings: Settings) -> AsyncIterator[Launcher]:
    launcher = Launcher(host_settings.linux, concurrency=1, box_capacity=CAPACITY)
    try:
        yield launcher
    finally:
        await launcher.close()


@pytest_asyncio.fixture
async def host(
    host_settings: Settings, nc: NATS, buckets: Buckets, box_launcher: Launcher
) -> AsyncIterator[SandboxHost]:
    templates = Templates(host_settings, box_launcher.guest_dir())
    sandbox_host = SandboxHost(host_settings, nc, buckets.sandboxes, box_launcher, templates)
    try:
        await sandbox_host.start()
        await sandbox_host.pool.fill("base")
        yield sandbox_host
    finally:
        await sandbox_host.close()
