"""A stand-in internet for the egress tests: a namespace behind a veth of the host, serving TCP and HTTP.

The upstream namespace holds a public-looking address (a /30 of TEST-NET-2,
198.51.100.0/24) and a private one (a /30 of 172.31.0.0/16), each sharing a
/30 with the host's end of the veth, and runs a server answering on every
address: a client sends ``N\\n`` and gets ``hello`` and N bytes, an HTTP
request gets ``pong``. The host also serves the same on all its addresses,
standing for "the host itself".
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute, netns

from soulbox.core.natsserver import free_port
from soulbox.runtimes.linux.netns import entered

SERVER = """
import socket, sys, threading
def serve(conn):
    with conn:
        data = b""
        while b"\\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        if data[:1].isdigit():
            conn.sendall(b"hello\\n" + b"x" * int(data))
        else:  # HTTP: any request gets "pong" (once read whole: unread bytes would turn the close into a reset)
            while b"\\r\\n\\r\\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 4\\r\\nconnection: close\\r\\n\\r\\npong")
def loop(s):
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    threading.Thread(target=loop, args=(s,), daemon=True).start()
print("listening", flush=True)
sys.stdin.read()
"""

# What a sandbox runs to try a destination: prints "ok <bytes>" or "refused <reason>".
CLIENT = """
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"%d\\n" % size)
    f = s.makefile("rb")
    assert f.readline() == b"hello\\n"
    got = len(f.read(size)) if size else 0
    print("ok", got)
except OSError as e:
    print("refused", type(e).__name__, e.errno)
"""


DNS_PORT = 53  # also served upstream (TCP), standing for a resolver


@dataclass(frozen=True)
class Upstream:
    public: IPv4Address  # the upstream's public-looking address
    private: IPv4Address  # its address in a private range
    host_public: IPv4Address  # the host's end of the veth (an address of the host, in a public range)
    port: int
    other_port: int  # also served, never listed


def _run_server(ns: str | None, ports: tuple[int, ...]) -> subprocess.Popen[bytes]:
    prefix = ["nsenter", f"--net=/run/netns/{ns}", "--"] if ns else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVER, *map(str, ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"
    return proc


@contextlib.contextmanager
def upstream_network() -> Iterator[Upstream]:
    tag = secrets.token_hex(3)
    ns, host_if, peer_if = f"sbtest-up-{tag}", f"sbu{tag}h", f"sbu{tag}g"
    k = secrets.randbelow(60) + 1  # one /30 of each range, so runs side by side do not collide
    pub_host, pub_up = IPv4Address(f"198.51.100.{4 * k + 1}"), IPv4Address(f"198.51.100.{4 * k + 2}")
    priv_host, priv_up = IPv4Address(f"172.31.{k}.1"), IPv4Address(f"172.31.{k}.2")
    port = free_port("0.0.0.0")  # the host serves them too: ports free there, not random ones
    while (other := free_port("0.0.0.0")) == port:
        pass
    procs: list[subprocess.Popen[bytes]] = []
    netns.create(ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": peer_if, "net_ns_fd": ns})
            (index,) = ipr.link_lookup(ifname=host_if)
            ipr.addr("add", index=index, address=str(pub_host), prefixlen=30)
            ipr.addr("add", index=index, address=str(priv_host), prefixlen=30)
            ipr.link("set", index=index, state="up")
        with entered(Path("/run/netns") / ns), IPRoute() as inner:
            (peer,) = inner.link_lookup(ifname=peer_if)
            inner.addr("add", index=peer, address=str(pub_up), prefixlen=30)
            inner.addr("add", index=peer, address=str(priv_up), prefixlen=30)
            inner.link("set", index=peer, state="up")
            inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
            inner.route("add", dst="0.0.0.0/0", gateway=str(pub_host))
        procs.append(_run_server(ns, (port, other, DNS_PORT)))
        procs.append(_run_server(None, (port, other)))  # the host itself
        yield Upstream(pub_up, priv_up, pub_host, port, other)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        try:
            with IPRoute() as ipr, contextlib.suppress(Exception):
                for index in ipr.link_lookup(ifname=host_if):
                    ipr.link("del", index=index)
        finally:
            netns.remove(ns)  # takes the upstream end (and so the pair) with it


def host_addresses() -> list[IPv4Address]:
    """The host's own IPv4 addresses (the sandboxes' veth ends and loopback aside)."""
    with IPRoute() as ipr:
        return [
            IPv4Address(a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr(family=2)
            if not (a.get_attr("IFA_LABEL") or "").startswith(("lo", "sb"))
        ]
