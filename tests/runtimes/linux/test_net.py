"""Network egress of Linux sandboxes: real namespaces, veths and nftables, against a local stand-in internet."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import pytest_asyncio
from pyroute2 import IPRoute

from soulbox.core.schemas import FunctionSpec, Limits, Outcome, Permissions
from soulbox.runtimes.linux import names
from soulbox.runtimes.linux.box import Box, BoxLimits
from soulbox.runtimes.linux.netgrants import resolve_grants
from soulbox.runtimes.linux.netns import NetUnavailable
from soulbox.runtimes.linux.netpolicy import EgressPolicy
from soulbox.runtimes.linux.netpool import NetPool
from soulbox.runtimes.linux.runtime import LinuxRuntime
from soulbox.runtimes.linux.sandbox import Launcher

from .conftest import isolated_settings
from .helpers import ENV, MIB, PYTHON, limits, out
from .netfixtures import CLIENT, DNS_PORT, Upstream, host_addresses, upstream_network

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0,
    reason="nftables is not installed (./justw installs it)",
)


@pytest.fixture
def upstream(kernel_ok: None) -> Iterator[Upstream]:
    with upstream_network() as net:
        yield net


@pytest_asyncio.fixture
async def net_launcher(kernel_ok: None) -> AsyncIterator[Launcher]:
    launcher = Launcher(isolated_settings(net={"pool_size": 1, "max_slots": 8}), concurrency=4, box_capacity=2)
    try:
        yield launcher
    finally:
        await launcher.close()


async def reach(launcher: Launcher, host: object, port: int, egress: EgressPolicy | None, size: int = 0) -> str:
    result = await launcher.run(
        [PYTHON, "-c", CLIENT, str(host), str(port), str(size)],
        stdin=b"",
        limits=limits(timeout_s=10),
        env=ENV,
        egress=egress,
    )
    assert result.exit_code == 0, result.stderr.getvalue()
    return out(result).strip()


def _leftovers(pool: NetPool) -> list[str]:
    """Namespaces, host links and nft tables of ``pool`` still on the host."""
    found = [p.name for p in Path("/run/netns").glob(f"{pool.name_prefix}*")]
    with IPRoute() as ipr:
        found += [
            name for link in ipr.get_links() if (name := link.get_attr("IFLA_IFNAME") or "").startswith(pool.if_prefix)
        ]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    found += [line for line in tables.splitlines() if line.endswith(f" {pool.table}")]
    return found


async def leftovers(pool: NetPool) -> list[str]:
    return await asyncio.to_thread(_leftovers, pool)  # pyroute2's sync API runs an event loop of its own


async def test_no_network_by_default(net_launcher: Launcher, upstream: Upstream) -> None:
    for egress in (None, EgressPolicy()):
        assert (await reach(net_launcher, upstream.public, upstream.port, egress)).startswith("refused")
    links = await net_launcher.run(
        ["/bin/cat", "/proc/net/dev"], stdin=b"", limits=limits(), env=ENV
    )  # only loopback in the sandbox's own namespace
    names = [line.split(":")[0].strip() for line in out(links).splitlines()[2:]]
    assert names == ["lo"]


async def test_listed_destination_and_port_only(net_launcher: Launcher, upstream: Upstream) -> None:
    policy = EgressPolicy.parse([f"{upstream.public}/32:{upstream.port}"])
    assert await reach(net_launcher, upstream.public, upstream.port, policy, 1000) == "ok 1000"
    # Another port of the same host, another address: dropped in the sandbox's namespace (EPERM at once).
    assert (await reach(net_launcher, upstream.public, upstream.other_port, policy)).startswith("refused")
    assert (await reach(net_launcher, upstream.private, upstream.port, policy)).startswith("refused")


async def test_internet_never_includes_private_ranges_or_the_host(net_launcher: Launcher, upstream: Upstream) -> None:
    # "The internet", with the private range listed explicitly too: still refused.
    policy = EgressPolicy.of_request(internet=True, allow_out=[f"{upstream.private.exploded}/30"])
    assert await reach(net_launcher, upstream.public, upstream.other_port, policy, 10) == "ok 10"
    assert (await reach(net_launcher, upstream.private, upstream.port, policy)).startswith("refused")
    # The host's own addresses (its end of the upstream veth is a public one): dropped on the host's input hook.
    for address in {upstream.host_public, *await asyncio.to_thread(host_addresses)}:
        assert (await reach(net_launcher, address, upstream.port, policy)).startswith("refused"), address
    assert (await reach(net_launcher, "169.254.169.254", 80, policy)).startswith("refused")


async def test_deny_out_applies_to_what_is_not_listed(net_launcher: Launcher, upstream: Upstream) -> None:
    denied = EgressPolicy.of_request(internet=True, deny_out=[f"{upstream.public}/32"])
    assert (await reach(net_launcher, upstream.public, upstream.port, denied)).startswith("refused")
    listed = EgressPolicy.of_request(
        internet=False, allow_out=[str(upstream.public)], deny_out=["0.0.0.0/0"]
    )  # E2B: allowed entries win over denied ones
    assert await reach(net_launcher, upstream.public, upstream.port, listed) == "ok 0"


async def test_root_in_the_sandbox_cannot_change_its_network(net_launcher: Launcher, upstream: Upstream) -> None:
    policy = EgressPolicy.parse([f"{upstream.public}:{upstream.port}"])
    script = (
        "/usr/sbin/nft flush ruleset 2>&1 | tail -1;"
        "/usr/sbin/ip link set lo down 2>&1 | tail -1;"
        "/usr/sbin/ip addr add 172.31.9.9/32 dev lo 2>&1 | tail -1;"
        f"{PYTHON} -c '{CLIENT}' {upstream.public} {upstream.other_port}"
    )
    result = await net_launcher.run(["/bin/sh", "-c", script], stdin=b"", limits=limits(), env=ENV, egress=policy)
    text = out(result)
    assert "Operation not permitted" in text
    assert text.strip().splitlines()[-1].startswith("refused")  # the rules are still there


async def test_pooled_namespace_is_reused_with_its_rules_reset(net_launcher: Launcher, upstream: Upstream) -> None:
    first = EgressPolicy.parse([f"{upstream.public}:{upstream.port}"])
    assert await reach(net_launcher, upstream.public, upstream.port, first) == "ok 0"
    pool = await net_launcher.network()
    await pool.settle()
    assert pool.idle >= 1 and pool.leased == 0
    names = await leftovers(pool)
    second = EgressPolicy.parse([f"{upstream.public}:{upstream.other_port}"])
    for _ in range(3):  # the first policy is gone from whichever slot comes back
        assert (await reach(net_launcher, upstream.public, upstream.port, second)).startswith("refused")
        assert await reach(net_launcher, upstream.public, upstream.other_port, second) == "ok 0"
    await pool.settle()
    assert await leftovers(pool) == names  # the same namespaces and veths: none made, none destroyed


async def test_nothing_leaks_after_kill_and_close(upstream: Upstream, kernel_ok: None) -> None:
    launcher = Launcher(isolated_settings(net={"pool_size": 0, "max_slots": 4}), concurrency=2, box_capacity=1)
    try:
        box = await _box(launcher, EgressPolicy.parse([str(upstream.public)]))
        pool = await launcher.network()
        assert pool.leased == 1 and await leftovers(pool)
        await box.close()
        await pool.settle()
        assert pool.leased == 0 and pool.idle == 0
        assert [name for name in await leftovers(pool) if name != f"table inet {pool.table}"] == []
    finally:
        await launcher.close()
    assert await leftovers(pool) == []


async def test_counters_move_when_traffic_flows(net_launcher: Launcher, upstream: Upstream) -> None:
    policy = EgressPolicy.parse([f"{upstream.public}:{upstream.port}"])
    # Then a read past the page cache (O_DIRECT) of a file on the host's disk: block I/O of the box's cgroup.
    direct_read = (
        "\nimport mmap, os, time\n"
        f"fd = os.open(os.path.realpath({PYTHON!r}), os.O_RDONLY | os.O_DIRECT)\n"
        "print('direct', os.readv(fd, [mmap.mmap(-1, 1 << 20)]), flush=True)\n"
        "print('envd ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    box = await _box(
        net_launcher,
        policy,
        [PYTHON, "-c", CLIENT + direct_read, str(upstream.public), str(upstream.port), "300000"],
    )
    try:
        received, sent = box.net_counters()
        assert received >= 300_000 and sent > 0
        assert "ok 300000" in box.log.getvalue().decode()
        usage = box.usage()
        if usage.io_read_bytes is not None:  # the blkio (v1) / io (v2) controller is there
            assert usage.io_read_bytes >= 1 << 20, box.log.getvalue()
    finally:
        await box.close()
    bare = await _box(net_launcher, None)
    try:
        assert bare.net is None and bare.net_counters() == (0, 0)
    finally:
        await bare.close()


async def test_exhausted_pool_and_disabled_egress_refuse_clearly(kernel_ok: None) -> None:
    off = Launcher(isolated_settings(net={"enabled": False}), concurrency=1)
    try:
        with pytest.raises(NetUnavailable, match=r"linux\.net\.enabled"):
            await off.run(["/bin/true"], stdin=b"", limits=limits(), env=ENV, egress=EgressPolicy.parse(["1.1.1.1"]))
        result = await off.run(["/bin/true"], stdin=b"", limits=limits(), env=ENV)  # no egress asked: fine
        assert result.exit_code == 0
    finally:
        await off.close()
    small = Launcher(isolated_settings(net={"pool_size": 0, "max_slots": 1}), concurrency=2, box_capacity=1)
    try:
        box = await _box(small, EgressPolicy.parse(["1.1.1.1"]))
        try:
            with pytest.raises(NetUnavailable, match="slots"):
                await small.run(
                    ["/bin/true"], stdin=b"", limits=limits(), env=ENV, egress=EgressPolicy.parse(["1.1.1.1"])
                )
        finally:
            await box.close()
    finally:
        await small.close()


async def _box(launcher: Launcher, egress: EgressPolicy | None, command: list[str] | None = None) -> Box:
    return await launcher.start(
        os.urandom(4).hex(),
        command or [PYTHON, "-c", "print('envd ready', flush=True); import time; time.sleep(1000)"],
        limits=BoxLimits(memory_bytes=128 * MIB, cpu_quota=1.0, pids_max=64, disk_bytes=16 * MIB),
        env=ENV,
        ro_binds={},
        home="/home/user",
        ready=(b"envd ready",),
        ready_timeout=10,
        egress=egress,
    )


async def test_resolvers_are_reachable_with_egress_only(upstream: Upstream, kernel_ok: None) -> None:
    # The upstream's private address as the resolver: allowed on port 53 although the range is denied.
    settings = isolated_settings(net={"pool_size": 0, "max_slots": 2, "dns_servers": [str(upstream.private)]})
    launcher = Launcher(settings, concurrency=2)
    try:
        policy = EgressPolicy.parse([f"{upstream.public}:{upstream.port}"])
        assert await reach(launcher, upstream.private, DNS_PORT, policy) == "ok 0"
        assert (await reach(launcher, upstream.private, upstream.port, policy)).startswith("refused")
        assert (await reach(launcher, upstream.private, DNS_PORT, None)).startswith("refused")  # no egress: no DNS
        show = ["/bin/cat", "/etc/resolv.conf", "/etc/nsswitch.conf"]
        with_net = await launcher.run(show, stdin=b"", limits=limits(), env=ENV, egress=policy)
        assert f"nameserver {upstream.private}\n" in out(with_net) and "hosts: files dns" in out(with_net)
        without = await launcher.run(show, stdin=b"", limits=limits(), env=ENV)
        assert "nameserver" not in out(without) and "hosts: files\n" in out(without)
    finally:
        await launcher.close()


async def test_a_functions_net_permissions_are_its_egress(upstream: Upstream, kernel_ok: None, tmp_path: Path) -> None:
    source = (
        "import subprocess, sys\n"
        "print(open('/etc/hosts').read().split()[-1])\n"  # the last name mapped: the granted one
        f"for port in ({upstream.port}, {upstream.other_port}):\n"
        f"    print(subprocess.run([sys.executable, '-c', {CLIENT!r}, '{upstream.public}', str(port)],\n"
        "        capture_output=True, text=True).stdout.strip())\n"
    )
    digest = hashlib.sha256(source.encode()).hexdigest()

    async def fetch(_: str) -> bytes:
        return source.encode()

    runtime = LinuxRuntime(fetch, cache_dir=tmp_path, concurrency=1, settings=isolated_settings())
    grants = Permissions(net=[f"{upstream.public}:{upstream.port}", "localhost"])
    try:
        spec = FunctionSpec.model_construct(
            tenant="t", name="net", runtime=names.PYTHON, artifact=digest, artifact_size=len(source),
            limits=Limits(timeout_ms=20_000), permissions=grants,
        )  # fmt: skip
        result = await runtime.run(spec, b"")
        assert result.outcome is Outcome.SUCCESS, result
        lines = result.stdout.decode().splitlines()
        assert lines[:2] == ["localhost", "ok 0"] and lines[2].startswith("refused")
        bare = await runtime.run(spec.model_copy(update={"permissions": Permissions()}), b"")
        assert bare.stdout.decode().splitlines()[1].startswith("refused")  # no grants: no network
    finally:
        await runtime.close()


async def test_grants_resolve_names_and_keep_addresses() -> None:
    grant = await resolve_grants(
        ["localhost:8080", "203.0.113.0/24", "198.51.100.7:80-90", "*", "no-such-host.invalid"]
    )
    assert [str(rule) for rule in grant.policy.allow] == [
        "127.0.0.1/32:8080", "203.0.113.0/24", "198.51.100.7/32:80-90", "0.0.0.0/0",
    ]  # fmt: skip
    assert grant.hosts == {"localhost": (IPv4Address("127.0.0.1"),)}
    assert grant.hosts_file("sandbox").decode().splitlines()[-1] == "127.0.0.1\tlocalhost"
