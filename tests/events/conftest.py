"""An S3 endpoint for the export tests: moto's server as a real local process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioboto3
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import SecretStr

from soulbox.core.bus import Buckets
from soulbox.core.natsserver import free_port, wait_for_port
from soulbox.core.settings import Settings
from soulbox.events import AuditLog, TenantKeys

BUCKET = "soulbox-exports"


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
async def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:
    """``settings`` with an export bucket (created) on the moto endpoint."""
    configured = settings.model_copy(
        update={
            "s3": settings.s3.model_copy(
                update={
                    "bucket": BUCKET,
                    "endpoint_url": s3_endpoint,
                    "access_key_id": SecretStr("test"),
                    "secret_access_key": SecretStr("test"),
                }
            )
        }
    )
    async with aioboto3.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    return configured


@pytest_asyncio.fixture
async def audit_log(nc: NATS, js: JetStreamContext, buckets: Buckets) -> AsyncIterator[AuditLog]:
    log = AuditLog(nc, js, TenantKeys(buckets.tenant_keys))
    await log.load()
    try:
        yield log
    finally:
        await log.close()
