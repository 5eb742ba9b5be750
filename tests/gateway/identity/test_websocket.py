"""The terminal WebSocket is authenticated and authorized by the same gate, before its upgrade, and audited."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from starlette.websockets import WebSocketDisconnect

from soulbox.core import names
from soulbox.core.bus import connect
from soulbox.core.codec import decode_items
from soulbox.core.ledger import AuditRecord
from soulbox.core.settings import Settings
from soulbox.gateway.app import create_app

from .conftest import OPERATOR_KEY, operator_settings

with warnings.catch_warnings():  # Starlette would rather have httpx2 for its test client; httpx does the job
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


async def _intake(settings: Settings) -> list[AuditRecord]:
    nc = await connect(settings, name="tests")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(names.AUDIT_INTAKE_STREAM)).state.last_seq
        messages = [await js.get_msg(names.AUDIT_INTAKE_STREAM, seq) for seq in range(1, last + 1)]
        return [r for m in messages for r in decode_items(AuditRecord, m.data) if isinstance(r, AuditRecord)]
    finally:
        await nc.close()


def test_the_terminal_is_refused_before_the_upgrade(settings: Settings) -> None:
    gateway_settings = operator_settings(settings)
    path = "/v1/sandboxes/boxone0001/pty"
    with TestClient(create_app(gateway_settings)) as client:
        made = client.post("/v1/tenants", json={"name": "acme"}, headers={"X-API-KEY": OPERATOR_KEY})
        owner = made.json()["owner_key"]["key"]
        viewer = client.post("/v1/api-keys", json={"role": "viewer"}, headers={"X-API-KEY": owner}).json()["key"]
        for headers, query, code in [
            ({}, "", 4401),
            ({"X-API-KEY": "sb_000000000000_" + "x" * 43}, "", 4401),
            ({}, f"?api_key={viewer}", 4403),  # a viewer may not open a shell
            ({"X-API-KEY": owner}, "", 4404),  # allowed, but no such sandbox in acme
        ]:
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path + query, headers=headers):
                pass
            assert closed.value.code == code, (headers, query)
    records = asyncio.run(_intake(gateway_settings))
    refused = [r for r in records if r.resource == path]
    assert [(r.result, r.detail.get("auth_failure")) for r in refused] == [
        ("401", "unauthenticated"),
        ("401", "invalid_credentials"),
        ("403", "forbidden"),
    ]
    assert refused[2].tenant == "acme" and refused[2].action == "WEBSOCKET /v1/sandboxes/{sandbox_id}/pty"
