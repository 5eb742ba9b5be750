"""Sandbox network namespaces: from the pool vs made fresh, next to bare iproute2 and pyroute2, in one run.

Rows (each a full cycle, waited for):

* bare ``ip netns add`` + ``ip link add ... type veth peer ... netns`` + ``ip netns del``
  (iproute2, one exec each, no addresses, no firewall);
* bare pyroute2: namespace + veth pair + addresses + route + loopback up, then
  deleted (no firewall), on a thread;
* :class:`~soulbox.runtimes.linux.netpool.NetPool` with ``pool_size=0``: every
  acquire makes a slot (the above + the drop-everything ruleset + the policy),
  every release destroys it;
* the pool warm (``pool_size=1``): acquire writes the policy into a ready
  slot, release writes the drop-everything ruleset back;
* the Linux launcher running ``true`` without egress and with egress (pooled):
  what egress adds to a sandbox start.

Run as root: ``.venv/bin/python bench/netns.py [-n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute, netns

from soulbox.core.logging import configure_logging
from soulbox.core.tiersettings import LinuxSettings, NetSettings
from soulbox.runtimes.linux.netns import entered
from soulbox.runtimes.linux.netpolicy import EgressPolicy
from soulbox.runtimes.linux.netpool import NetPool
from soulbox.runtimes.linux.runtime import GUEST_ENV
from soulbox.runtimes.linux.sandbox import Launcher, SandboxLimits

POLICY = EgressPolicy.parse(["198.51.100.0/24:443", "203.0.113.7"])
TRUE_LIMITS = SandboxLimits(memory_bytes=64 << 20, timeout_s=10, max_output_bytes=1 << 20)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(fn: Callable[[], Awaitable[None]], n: int) -> list[float]:
    await fn()  # warm-up
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def iproute2_cycle(tag: str) -> None:
    ns, host, peer = f"bench-{tag}", f"bn{tag}h", f"bn{tag}g"
    for argv in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns],
        ["ip", "netns", "del", ns],
    ):
        subprocess.run(argv, check=True)


def pyroute2_cycle(tag: str) -> None:
    ns, host, peer = f"bench-{tag}", f"bn{tag}h", f"bn{tag}g"
    netns.create(ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
            (index,) = ipr.link_lookup(ifname=host)
            ipr.addr("add", index=index, address="10.254.254.1", prefixlen=30)
            ipr.link("set", index=index, state="up")
        with entered(Path("/run/netns") / ns), IPRoute() as inner:
            (guest,) = inner.link_lookup(ifname=peer)
            inner.addr("add", index=guest, address=str(IPv4Address("10.254.254.2")), prefixlen=30)
            inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
            inner.link("set", index=guest, state="up")
            inner.route("add", dst="0.0.0.0/0", gateway="10.254.254.1")
    finally:
        netns.remove(ns)  # the veth pair goes with its end inside


def on_thread(fn: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await asyncio.to_thread(fn, secrets.token_hex(3))

    return run


async def acquire_times(pool: NetPool, n: int) -> tuple[list[float], list[float]]:
    """Acquire alone (what a sandbox start waits for), then release + the background reset, settled."""
    took, back = [], []
    for i in range(n + 1):
        await pool.settle()  # the refill too: each acquire finds the pool as a quiet worker's would be
        started = time.perf_counter()
        lease = await pool.acquire(POLICY)
        middle = time.perf_counter()
        await pool.release(lease)
        await pool.settle()
        if i:  # the first is the warm-up
            took.append((middle - started) * 1000)
            back.append((time.perf_counter() - middle) * 1000)
    return took, back


async def main(n: int) -> None:
    configure_logging("warning", "console", component="bench")
    lock_dir = Path(tempfile.mkdtemp(prefix="soulbox-bench-net-"))
    # Another subnet than the launcher's pool (which claims its block under its own lock directory).
    fresh = await NetPool.open(NetSettings(pool_size=0, max_slots=4, subnet="10.232.0.0/16"), lock_dir)
    warm = await NetPool.open(NetSettings(pool_size=1, max_slots=4, subnet="10.232.0.0/16"), lock_dir)
    settings = LinuxSettings(net=NetSettings(pool_size=1, max_slots=8))
    launcher = Launcher(settings, concurrency=2)
    true = shutil.which("true") or "/bin/true"

    def sandbox(egress: EgressPolicy | None) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            result = await launcher.run([true], stdin=b"", limits=TRUE_LIMITS, env=GUEST_ENV, egress=egress)
            assert result.exit_code == 0

        return run

    bare = {
        "bare iproute2: `ip netns add` + veth + `ip netns del` (3 execs)": on_thread(iproute2_cycle),
        "bare pyroute2: netns + veth + addresses + route, then deleted": on_thread(pyroute2_cycle),
    }
    sandboxes = {
        "launcher `true`, no network (bwrap's own empty netns)": sandbox(None),
        "launcher `true`, egress from the pool (nsenter + --share-net)": sandbox(POLICY),
    }

    def row(label: str, samples: list[float]) -> None:
        mean = sum(samples) / len(samples)
        print(f"| {label} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {mean:.2f} |")

    try:
        print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, n={n}\n")
        print("| what | p50 ms | p99 ms | mean ms |")
        print("| --- | ---: | ---: | ---: |")
        for label, fn in bare.items():
            row(label, await timed(fn, n))
        took, back = await acquire_times(fresh, n)
        row("NetPool acquire, fresh (pool_size=0): netns + veth + table + policy", took)
        row("NetPool release, fresh: destroy", back)
        took, back = await acquire_times(warm, n)
        row("NetPool acquire, pooled: policy into a ready slot", took)
        row("NetPool release, pooled: policy emptied (background)", back)
        for label, fn in sandboxes.items():
            row(label, await timed(fn, n))
    finally:
        await launcher.close()
        await warm.close()
        await fresh.close()
        shutil.rmtree(lock_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="samples per row")
    args = parser.parse_args()
    asyncio.run(main(args.n))
