"""``soulbox tenants`` and ``soulbox keys`` against a real gateway (uvicorn, real NATS)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from soulbox.cli.main import app
from soulbox.core.logging import configure_logging
from soulbox.core.natsserver import free_port
from soulbox.core.settings import Settings
from soulbox.gateway.app import create_app
from tests.gateway.identity.conftest import OPERATOR_KEY, operator_settings


@pytest.fixture
def gateway_url(settings: Settings) -> Iterator[str]:
    configure_logging("error", "json", component="gateway")  # the CLI's output is JSON: keep the access log out
    port = free_port()
    config = uvicorn.Config(create_app(operator_settings(settings)), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_tenants_and_keys_from_the_command_line(gateway_url: str) -> None:
    run = CliRunner().invoke
    common = ["--url", gateway_url, "--key", OPERATOR_KEY]
    made = run(app, ["tenants", "create", "acme", *common])
    assert made.exit_code == 0, made.output
    owner = json.loads(made.output)["owner_key"]["key"]
    assert [t["name"] for t in json.loads(run(app, ["tenants", "list", *common]).output)] == ["acme"]

    created = run(app, ["keys", "create", "--role", "viewer", "--scope", "functions:read", "--tenant", "acme", *common])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["tenant"] == "acme" and key["scopes"] == ["functions:read"] and key["key"].startswith("sb_")

    listed = json.loads(run(app, ["keys", "list", "--url", gateway_url, "--key", owner]).output)
    assert {k["id"] for k in listed} >= {key["id"]} and all("key" not in k for k in listed)
    revoked = run(app, ["keys", "revoke", key["id"], "--url", gateway_url, "--key", owner])
    assert revoked.exit_code == 0 and key["id"] in revoked.output
    r = httpx.get(f"{gateway_url}/v1/functions", headers={"X-API-KEY": key["key"]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked"

    refused = run(app, ["tenants", "create", "other", "--url", gateway_url, "--key", owner])
    assert refused.exit_code == 1 and "403 forbidden" in refused.output
