"""Network namespaces wired to the host by a veth pair, made and changed from the host only.

A :class:`NetSlot` is a named namespace (``/run/netns/<name>``, made by
pyroute2 as root: owned by the host's user namespace) holding one end of a
veth pair with a /30 of the pool's subnet, loopback up, and a default route
to the host end. Its firewall is written by libnftables (the library behind
``nft``, Debian package ``nftables``, loaded through ctypes: no exec per
change). The sandbox is started inside the namespace (``nsenter --net``
before bubblewrap, which then keeps it with ``--share-net``), so root in the
sandbox holds no capability over the namespace and cannot change its
addresses, routes or rules.

Everything here blocks (netlink, libnftables, setns on the calling thread):
:class:`~.netpool.NetPool` runs it on a thread of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from .errors import SandboxUnavailable

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
ENOENT, ENODEV = 2, 19


class NetUnavailable(SandboxUnavailable):
    """This host cannot give sandboxes network egress (no libnftables, no privileges, pool exhausted)."""

    code = "egress_unavailable"


class Nft:
    """libnftables through ctypes: one context per script, made on the calling thread (so in its namespace)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables")
        if name is None:
            raise NetUnavailable("nftables is not installed (Debian: apt-get install nftables): no sandbox egress")
        lib = ctypes.CDLL(name, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        self._lib = lib

    def run(self, script: str) -> str:
        """Run ``script`` as one transaction (all or nothing); its output, or ``NetUnavailable`` with nft's error."""
        lib = self._lib
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NetUnavailable("libnftables could not make a context")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            if lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
                error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
                raise NetUnavailable(f"nftables refused the rules: {error[:500]}")
            return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(path: Path) -> Iterator[None]:
    """The calling thread in the namespace at ``path`` (sockets made meanwhile belong to it), then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)  # a thread left in a sandbox's namespace would be a hole: fail loudly if this fails
    finally:
        os.close(home)


@dataclass(frozen=True, slots=True)
class NetSlot:
    """One namespace and its veth pair; the host end is ``host_if`` (``host_ip``), the sandbox's ``guest_if``."""

    index: int
    name: str  # the namespace's name under /run/netns
    host_if: str
    guest_if: str
    host_ip: IPv4Address
    guest_ip: IPv4Address

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def counters(self) -> tuple[int, int]:
        """(received, sent) bytes as the sandbox sees them: the host end's tx and rx since the pair was made."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        try:
            return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())
        except OSError:
            return 0, 0


def create_slot(slot: NetSlot, nft: Nft, ruleset: str) -> None:
    """Make ``slot``: namespace, veth pair, addresses, routes, and ``ruleset`` inside; nothing is left on failure."""
    try:
        netns.create(slot.name)
        with IPRoute() as ipr:
            ipr.link("add", ifname=slot.host_if, kind="veth", peer={"ifname": slot.guest_if, "net_ns_fd": slot.name})
            (host,) = ipr.link_lookup(ifname=slot.host_if)
            ipr.addr("add", index=host, address=str(slot.host_ip), prefixlen=30)
            ipr.link("set", index=host, state="up")
        with entered(slot.path):
            nft.run(ruleset)  # before the link is up: nothing ever passes unfiltered
            with IPRoute() as inner:
                (guest,) = inner.link_lookup(ifname=slot.guest_if)
                (lo,) = inner.link_lookup(ifname="lo")
                inner.addr("add", index=guest, address=str(slot.guest_ip), prefixlen=30)
                inner.link("set", index=lo, state="up")
                inner.link("set", index=guest, state="up")
                inner.route("add", dst="0.0.0.0/0", gateway=str(slot.host_ip))
    except BaseException:
        destroy_slot(slot)
        raise


def configure(slot: NetSlot, nft: Nft, ruleset: str) -> None:
    """Replace the firewall inside ``slot`` by ``ruleset`` (one transaction)."""
    with entered(slot.path):
        nft.run(ruleset)


def destroy_slot(slot: NetSlot) -> None:
    """Remove the veth pair (deleting one end deletes both) and the namespace; whatever is already gone is fine."""
    with IPRoute() as ipr, contextlib.suppress(NetlinkError):
        for index in ipr.link_lookup(ifname=slot.host_if):
            ipr.link("del", index=index)
    with contextlib.suppress(FileNotFoundError, OSError):
        if slot.path.exists():
            netns.remove(slot.name)


def remove_leftovers(name_prefix: str, if_prefix: str) -> int:
    """Delete namespaces and host links named by a dead pool's prefixes; how many went."""
    removed = 0
    with IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME") or ""
            if ifname.startswith(if_prefix):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=link["index"])
                    removed += 1
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if entry.name.startswith(name_prefix):
                with contextlib.suppress(OSError):
                    netns.remove(entry.name)
                    removed += 1
    return removed
