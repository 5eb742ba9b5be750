"""An in-process gateway (real NATS, real app and lifespan) with an operator key, and helpers to make tenants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import SecretStr

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import decode_items
from soulbox.core.ledger import AuditRecord
from soulbox.core.settings import IdentitySettings, Settings
from soulbox.gateway.app import create_app

OPERATOR_KEY = "operator-key-0123456789abcdef"


@dataclass
class Gateway:
    client: httpx.AsyncClient
    audit: list[AuditRecord] = field(default_factory=list)

    async def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-KEY"] = key
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def tenant(self, name: str) -> str:
        """Create tenant ``name`` as the operator; its owner key."""
        r = await self.call("POST", "/v1/tenants", OPERATOR_KEY, json={"name": name})
        assert r.status_code == 201, r.text
        key: str = r.json()["owner_key"]["key"]
        return key

    async def key(self, owner: str, **body: Any) -> str:
        r = await self.call("POST", "/v1/api-keys", owner, json=body)
        assert r.status_code == 201, r.text
        key: str = r.json()["key"]
        return key

    async def audited(self, path: str, result: str, timeout: float = 5.0) -> AuditRecord:
        """The audit record of a request to ``path`` answered with ``result`` (waits for it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for record in self.audit:
                if record.resource == path and record.result == result:
                    return record
            await asyncio.sleep(0.02)
        raise AssertionError(f"no audit record of {path} -> {result}: {[(r.resource, r.result) for r in self.audit]}")


def operator_settings(settings: Settings, **identity: Any) -> Settings:
    gateway = settings.gateway.model_copy(update={"api_keys": [SecretStr(OPERATOR_KEY)]})
    worker = settings.worker.model_copy(update={"heartbeat_ttl_s": 600.0})
    return settings.model_copy(
        update={
            "gateway": gateway,
            "worker": worker,
            "identity": IdentitySettings.model_validate({**settings.identity.model_dump(), **identity}),
        }
    )


@pytest_asyncio.fixture
async def gateway_settings(settings: Settings) -> Settings:
    return operator_settings(settings)


@pytest_asyncio.fixture
async def gw(gateway_settings: Settings, buckets: Buckets, nc: NATS) -> AsyncIterator[Gateway]:
    app = create_app(gateway_settings)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4711))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        g = Gateway(client)

        async def seen(msg: Msg) -> None:  # one record, or a batch of the calls made together
            g.audit.extend(record for record in decode_items(AuditRecord, msg.data) if isinstance(record, AuditRecord))

        sub = await nc.subscribe(names.AUDIT_INTAKE_API_SUBJECT, cb=seen)
        try:
            yield g
        finally:
            await sub.unsubscribe()
