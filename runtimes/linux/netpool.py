"""A worker's pool of sandbox network namespaces (:mod:`.netns`), ready before they are asked for.

Making a namespace with its veth pair, addresses, route and firewall costs
tens of milliseconds; applying a policy to a ready one costs about one. So
the pool keeps ``pool_size`` idle slots whose firewall drops everything, and
:meth:`NetPool.acquire` hands one out with the sandbox's
:class:`~.netpolicy.EgressPolicy` written in; :meth:`NetPool.release` empties
the policy again in the background and keeps the slot (or destroys it when
the pool is full). :meth:`NetPool.close` destroys every slot and the host's table.

Addresses: the workers of a host share ``subnet``; each claims a block of
``max_slots`` /30s by an exclusive ``flock`` on the block's lock file (as
:class:`~.uids.UidBlock` does for uids) and writes its tag there, so the
next claimant of a block can delete what a crashed worker left (namespaces,
veths, the host table, all named by the tag).

On the host (once per pool): ``net.ipv4.ip_forward`` is switched on and one
table (:func:`~.netpolicy.host_ruleset`) drops what the pool's veths send to
the host itself or to the denied ranges, and masquerades the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import secrets
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from soulbox.core.logging import get_logger
from soulbox.core.tiersettings import NetSettings

from .netns import NetSlot, NetUnavailable, Nft, configure, create_slot, destroy_slot, remove_leftovers
from .netpolicy import EgressPolicy, denied_networks, host_ruleset, parse_network, policy_rules, sandbox_table

log = get_logger(__name__)

T = TypeVar("T")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
DENY_ALL = EgressPolicy()


@dataclass(eq=False)
class NetLease:
    """A slot handed to one sandbox, with the policy in force and the counters at hand-out."""

    slot: NetSlot
    policy: EgressPolicy
    _base: tuple[int, int] = field(default=(0, 0))

    @property
    def path(self) -> Path:
        return self.slot.path

    def counters(self) -> tuple[int, int]:
        """(received, sent) bytes of the sandbox since it got the slot."""
        rx, tx = self.slot.counters()
        return max(0, rx - self._base[0]), max(0, tx - self._base[1])


class NetPool:
    """Network namespaces for sandboxes with egress; build with :meth:`open` (as root, with nftables)."""

    def __init__(self, settings: NetSettings, lock_dir: Path) -> None:
        self.settings = settings
        self._nft = Nft()
        self._subnet = parse_network(settings.subnet)
        block_bits = math.ceil(math.log2(settings.max_slots * 4))
        if block_bits > 32 - self._subnet.prefixlen:
            raise NetUnavailable(f"net.subnet {self._subnet} cannot hold {settings.max_slots} /30s")
        self._lock_fd, index, previous = _claim(lock_dir, self._subnet, block_bits)
        self.block = IPv4Network((int(self._subnet.network_address) + (index << block_bits), 32 - block_bits))
        self.tag = _read_tag(self._lock_fd, write=secrets.token_hex(3))
        self.name_prefix, self.if_prefix, self.table = f"soulbox-{self.tag}-", f"sb{self.tag}h", f"soulbox_{self.tag}"
        self._denied = denied_networks(settings.deny, self._subnet)
        self._table = sandbox_table(self._denied)
        self._deny_all = policy_rules(DENY_ALL)
        self.dns = tuple(IPv4Address(a) for a in settings.dns_servers)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soulbox-net")
        self._previous = previous
        self._idle: list[NetSlot] = []
        self._leased: dict[int, NetSlot] = {}
        self._making = 0
        self._recycling = 0
        self._free = list(range(settings.max_slots - 1, -1, -1))  # pop() takes the lowest index
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, settings: NetSettings, lock_dir: Path) -> NetPool:
        """Claim a block, clear a dead predecessor's leftovers, set up the host, start filling the pool."""
        if os.geteuid() != 0:
            raise NetUnavailable("network egress needs the worker to run as root")
        pool = cls(settings, lock_dir)
        try:
            await pool._call(pool._setup_host)
        except BaseException:
            await pool.close()
            raise
        pool._fill_soon()
        return pool

    def _setup_host(self) -> None:
        if self._previous:
            gone = remove_leftovers(f"soulbox-{self._previous}-", f"sb{self._previous}")
            with contextlib.suppress(NetUnavailable):
                self._nft.run(f"delete table inet soulbox_{self._previous}")
            if gone:
                log.info("net.leftovers_removed", tag=self._previous, removed=gone)
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1")  # routing for the veths; the host table keeps sandboxes off the host
        self._nft.run(host_ruleset(self.table, self.if_prefix, self.block, self._denied, self.dns))

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def leased(self) -> int:
        return len(self._leased)

    async def acquire(self, policy: EgressPolicy) -> NetLease:
        """A slot whose firewall lets ``policy`` through; ``NetUnavailable`` when every slot is taken."""
        if self._closed:
            raise NetUnavailable("the network pool is closed")
        slot = self._idle.pop() if self._idle else None
        if slot is None:
            slot = await self._make()
        self._leased[slot.index] = slot
        try:
            await self._call(configure, slot, self._nft, policy_rules(policy, self.dns))
        except BaseException:
            self._leased.pop(slot.index, None)
            await self._destroy(slot)
            raise
        self._fill_soon()
        return NetLease(slot, policy, slot.counters())

    async def release(self, lease: NetLease) -> None:
        """Take the slot back: it is reset (or destroyed) in the background, and idle again after that.

        The sandbox is gone by now. Resetting costs an RCU grace period in
        the kernel (removing rules: ~10 ms), so it does not delay the caller.
        """
        slot = self._leased.pop(lease.slot.index, None)
        if slot is not None:
            self._spawn(self._recycle(slot))

    async def settle(self) -> None:
        """Wait for the resets, destructions and fills under way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _recycle(self, slot: NetSlot) -> None:
        # Up to twice pool_size idle: the refill that replaced this slot at acquire has usually come first,
        # and destroying the returning one would make every hand-out cost a make and a destroy.
        if not self._closed and len(self._idle) + self._recycling < 2 * self.settings.pool_size:
            self._recycling += 1
            try:
                await self._call(configure, slot, self._nft, self._deny_all)
            except Exception as exc:  # a slot whose rules we could not reset is never handed out again
                log.warning("net.reset_failed", slot=slot.name, error=repr(exc))
            else:
                self._idle.append(slot)
                return
            finally:
                self._recycling -= 1
        await self._destroy(slot)

    async def _make(self) -> NetSlot:
        if not self._free:
            raise NetUnavailable(f"all {self.settings.max_slots} network slots of this worker are in use")
        index = self._free.pop()
        host = self.block.network_address + index * 4 + 1
        slot = NetSlot(
            index=index,
            name=f"{self.name_prefix}{index}",
            host_if=f"{self.if_prefix}{index}",
            guest_if=f"sb{self.tag}g{index}",
            host_ip=host,
            guest_ip=host + 1,
        )
        self._making += 1
        try:
            await self._call(create_slot, slot, self._nft, self._table)
        except BaseException:
            self._free.append(index)
            raise
        finally:
            self._making -= 1
        return slot

    async def _destroy(self, slot: NetSlot) -> None:
        try:
            await self._call(destroy_slot, slot)
        finally:
            self._free.append(slot.index)

    def _ready(self) -> int:
        """Slots idle or on their way to be."""
        return len(self._idle) + self._making + self._recycling

    def _fill_soon(self) -> None:
        if self._closed or self._ready() >= self.settings.pool_size or not self._free:
            return
        self._spawn(self._fill())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self) -> None:
        while not self._closed and self._ready() < self.settings.pool_size and self._free:
            try:
                slot = await self._make()
            except Exception as exc:
                log.warning("net.fill_failed", error=repr(exc))
                return
            if self._closed:
                await self._destroy(slot)
                return
            self._idle.append(slot)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the pool's thread (setns changes only that thread's namespace; one change at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Destroy every slot (leased ones too: their sandboxes are gone by now) and the host table."""
        if self._closed:
            return
        self._closed = True
        await self.settle()
        slots = [*self._idle, *self._leased.values()]
        self._idle.clear()
        self._leased.clear()
        for slot in slots:
            with contextlib.suppress(Exception):
                await self._destroy(slot)
        with contextlib.suppress(Exception):
            await self._call(self._nft.run, f"delete table inet {self.table}")
        self._executor.shutdown(wait=True)
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)  # a clean exit leaves nothing for the next claimant to remove
        os.close(self._lock_fd)


def _claim(lock_dir: Path, subnet: IPv4Network, block_bits: int) -> tuple[int, int, str]:
    """An exclusive lock on the first free block of ``subnet``: (fd, block index, the tag its last holder wrote).

    Workers may size their pools differently (``max_slots``), so a block is free only if it overlaps no
    block of any size that a live worker holds; claims are made one at a time under a directory lock.
    """
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = f"net-{subnet.network_address}-{subnet.prefixlen}"
    guard = os.open(lock_dir / f"{stem}.claims", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        held = _held_ranges(lock_dir, stem)
        blocks = 1 << (32 - subnet.prefixlen - block_bits)
        for index in range(blocks):
            start, end = index << block_bits, (index + 1) << block_bits
            if any(start < other_end and other_start < end for other_start, other_end in held):
                continue
            path = lock_dir / f"{stem}-b{block_bits}-{index}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd, index, _read_tag(fd)
    finally:
        os.close(guard)
    raise NetUnavailable(f"every address block of {subnet} overlaps one held by another worker")


def _held_ranges(lock_dir: Path, stem: str) -> list[tuple[int, int]]:
    """The address offsets (start, end) of the blocks live workers hold (their lock files are locked)."""
    held: list[tuple[int, int]] = []
    for path in lock_dir.glob(f"{stem}-b*-*.lock"):
        bits, _, index = path.stem.removeprefix(f"{stem}-b").partition("-")
        if not (bits.isdigit() and index.isdigit()):
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken: nobody holds it
        except BlockingIOError:
            held.append((int(index) << int(bits), (int(index) + 1) << int(bits)))
        finally:
            os.close(fd)  # closing drops the shared lock again
    return held


def _read_tag(fd: int, *, write: str | None = None) -> str:
    """The tag in the lock file (hex, or empty); with ``write``, replace it and return the new one."""
    if write is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, write.encode(), 0)
        return write
    text = os.pread(fd, 16, 0).decode(errors="replace").strip()
    return text if text.isalnum() else ""
