"""Sandbox egress through the official ``e2b`` SDK: none by default, the internet without the host or private ranges.

"The internet" is a namespace behind a veth of this host (tests/runtimes/linux/netfixtures.py)
serving on a TEST-NET-2 address and on a private one.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import InvalidArgumentException, SandboxException

from tests.runtimes.linux.netfixtures import CLIENT, Upstream, upstream_network
from tests.stack import Stack

from .conftest import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with upstream_network() as net:
        yield net


def reach(sandbox: Sandbox, host: object, port: int, size: int = 0) -> str:
    sandbox.files.write("/home/user/client.py", CLIENT)
    result = sandbox.commands.run(f"python3 /home/user/client.py {host} {port} {size}", timeout=20)
    return result.stdout.strip()


def test_a_sandbox_has_no_network_unless_asked(e2b_env: Stack, upstream: Upstream) -> None:
    sandbox = Sandbox.create(timeout=60)
    try:
        assert reach(sandbox, upstream.public, upstream.port).startswith("refused")
        assert Sandbox.get_info(sandbox.sandbox_id).allow_internet_access is False
    finally:
        sandbox.kill()


def test_internet_access_reaches_public_addresses_only(e2b_env: Stack, upstream: Upstream) -> None:
    sandbox = Sandbox.create(timeout=60, allow_internet_access=True)
    try:
        assert Sandbox.get_info(sandbox.sandbox_id).allow_internet_access is True
        assert reach(sandbox, upstream.public, upstream.port, 200_000) == "ok 200000"
        assert reach(sandbox, upstream.private, upstream.port).startswith("refused")
        assert reach(sandbox, upstream.host_public, upstream.port).startswith("refused")  # the host itself
        # The per-second samples carry the veth's counters (SoulBox's metrics API).
        with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": API_KEY}, timeout=10) as api:
            metrics = api.get(f"/v1/sandboxes/{sandbox.sandbox_id}/metrics").json()["metrics"]
        assert metrics[-1]["net_rx_bytes"] >= 200_000 and metrics[-1]["net_tx_bytes"] > 0
    finally:
        sandbox.kill()


def test_allow_out_lists_destinations_and_ports(e2b_env: Stack, upstream: Upstream) -> None:
    sandbox = Sandbox.create(timeout=60, network={"allow_out": [f"{upstream.public}:{upstream.port}"]})
    try:
        assert reach(sandbox, upstream.public, upstream.port) == "ok 0"
        assert reach(sandbox, upstream.public, upstream.other_port).startswith("refused")
    finally:
        sandbox.kill()


def test_names_in_allow_out_are_refused(e2b_env: Stack) -> None:
    with pytest.raises((InvalidArgumentException, SandboxException), match="names are not supported"):
        Sandbox.create(timeout=60, network={"allow_out": ["example.com"]})
