"""Egress entries and the nftables scripts made from them; a crashed pool's leftovers removed by the next one."""

from __future__ import annotations

import asyncio
import os
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soulbox.core.errors import InvalidRequest
from soulbox.core.tiersettings import NetSettings
from soulbox.runtimes.linux.netpolicy import (
    ANY,
    EgressPolicy,
    EgressRule,
    denied_networks,
    host_ruleset,
    parse_rule,
    policy_rules,
    sandbox_table,
)
from soulbox.runtimes.linux.netpool import NetPool

NFT = subprocess.run(["sh", "-c", "command -v nft"], capture_output=True, text=True).stdout.strip()
networks = st.builds(
    lambda address, prefix: IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
ports = st.none() | st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(lambda p: (min(p), max(p)))


@given(networks, ports)
def test_rules_print_and_parse_back(network: IPv4Network, port_range: tuple[int, int] | None) -> None:
    rule = EgressRule(network, port_range)
    assert parse_rule(str(rule)) == rule


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_as_a_bad_request(text: str) -> None:
    try:
        rule = parse_rule(text)
    except InvalidRequest:
        return
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize(
    "entry", ["example.com", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:90-80", "10.0.0.1:x", "::1", "1.2.3.4/33"]
)
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_rule(entry)


def test_e2b_semantics() -> None:
    assert not EgressPolicy.of_request(internet=False).enabled
    internet = EgressPolicy.of_request(internet=True, deny_out=["203.0.113.0/24"])
    assert internet.allow == (EgressRule(ANY),) and internet.deny == (IPv4Network("203.0.113.0/24"),)
    listed = EgressPolicy.of_request(internet=False, allow_out=["203.0.113.7"], deny_out=["0.0.0.0/0"])
    rules = policy_rules(listed)
    # listed before denied: allowed entries win, as in E2B
    assert rules.index("203.0.113.7/32 accept") < rules.index("0.0.0.0/0 goto refuse")


def test_denied_ranges_cover_private_loopback_link_local_and_the_pool() -> None:
    denied = denied_networks(["203.0.113.0/24"], IPv4Network("198.18.0.0/16"))
    for address in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "100.64.0.1"):
        assert any(IPv4Address(address) in net for net in denied), address
    assert any(IPv4Address("198.18.3.4") in net for net in denied)  # the pool's own subnet
    assert any(IPv4Address("203.0.113.9") in net for net in denied)  # from settings
    assert not any(IPv4Address("198.51.100.1") in net for net in denied)


@pytest.mark.skipif(not NFT or os.geteuid() != 0, reason="needs nft and root")
def test_scripts_are_valid_nftables() -> None:
    denied = denied_networks([], IPv4Network("10.231.0.0/16"))
    policy = EgressPolicy.parse(["198.51.100.0/24:443", "203.0.113.7", "0.0.0.0/0:8000-8100"], ["203.0.113.0/24"])
    table = sandbox_table(denied) + policy_rules(policy, [IPv4Address("1.1.1.1")])
    host = host_ruleset("soulbox_check", "sbcheckh", IPv4Network("10.231.0.0/22"), denied, [IPv4Address("1.1.1.1")])
    for script in (table, host):
        check = subprocess.run([NFT, "-c", "-f", "-"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


@pytest.mark.skipif(not NFT or os.geteuid() != 0, reason="needs nft and root")
async def test_the_next_pool_removes_what_a_crashed_one_left(tmp_path: Path) -> None:
    settings = NetSettings(pool_size=1, max_slots=4, subnet="10.234.0.0/16")
    crashed = await NetPool.open(settings, tmp_path)
    await crashed.settle()
    lease = await crashed.acquire(EgressPolicy.parse(["198.51.100.1"]))
    assert lease.path.exists()
    names = (crashed.name_prefix, crashed.table)
    os.close(crashed._lock_fd)  # the process dies: its lock goes, its namespaces, veths and table stay
    crashed._executor.shutdown()
    successor = await NetPool.open(settings, tmp_path)
    try:
        assert successor.block == crashed.block  # the dead one's block, so its leftovers are its to clear
        assert not [name for name in os.listdir("/run/netns") if name.startswith(names[0])]
        tables = await asyncio.to_thread(subprocess.run, [NFT, "list", "tables"], capture_output=True, text=True)
        assert names[1] not in tables.stdout
    finally:
        await successor.close()


def test_pools_of_different_sizes_claim_disjoint_address_blocks(tmp_path: Path) -> None:
    # Workers of one host may set max_slots differently: their blocks must still never overlap.
    large = NetPool(NetSettings(max_slots=64), tmp_path)
    small = NetPool(NetSettings(max_slots=2), tmp_path)
    another = NetPool(NetSettings(max_slots=128), tmp_path)
    blocks = [large.block, small.block, another.block]
    assert all(not a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :]), blocks
