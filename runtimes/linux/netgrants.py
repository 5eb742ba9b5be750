"""A function's ``permissions.net`` as an egress policy, for the tiers that run it in a sandbox namespace.

Entries are hosts as Deno spells them: ``api.example.com``,
``203.0.113.7:443``, ``198.51.100.0/24`` (SoulBox adds CIDRs), or ``*`` for
the public internet. Addresses and networks become rules as they are; a name
is resolved by the worker when the sandbox starts and each of its IPv4
addresses becomes a rule (with the entry's port), and the sandbox gets an
``/etc/hosts`` mapping the name to them — a sandbox has no DNS server to ask
(resolvers are usually on private or loopback addresses, always refused).
A name that does not resolve grants nothing. A long-lived process keeps the
addresses it was started with. The resolvers of ``linux.net.dns_servers``
are reachable too (:func:`resolver_binds`), for names not granted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from soulbox.core.logging import get_logger

from .netpolicy import ANY, EgressPolicy, EgressRule, parse_rule

log = get_logger(__name__)

RESOLVE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class NetGrant:
    """The policy a function's grants come to, and the names the sandbox must be able to look up."""

    policy: EgressPolicy
    hosts: dict[str, tuple[IPv4Address, ...]] = field(default_factory=dict)

    def hosts_file(self, hostname: str) -> bytes:
        """An ``/etc/hosts`` with the sandbox's own names and the granted ones."""
        lines = [f"127.0.0.1\tlocalhost {hostname}", "::1\tlocalhost ip6-localhost"]
        lines += [f"{address}\t{name}" for name, addresses in sorted(self.hosts.items()) for address in addresses]
        return ("\n".join(lines) + "\n").encode()


async def resolve_grants(entries: Sequence[str]) -> NetGrant:
    """``entries`` as a :class:`NetGrant`; names resolved now (IPv4 only)."""
    rules: list[EgressRule] = []
    hosts: dict[str, tuple[IPv4Address, ...]] = {}
    for entry in entries:
        if entry.strip() == "*":
            rules.append(EgressRule(ANY))
            continue
        host, port = _split(entry)
        try:
            IPv4Network(host, strict=False)
        except ValueError:
            addresses = await _resolve(host)
            if addresses:
                hosts[host] = addresses
            rules += [parse_rule(f"{address}{port}") for address in addresses]
        else:
            rules.append(parse_rule(entry))
    return NetGrant(EgressPolicy(tuple(dict.fromkeys(rules))), hosts)


def _split(entry: str) -> tuple[str, str]:
    """(host, ``:port`` or "")."""
    host, sep, port = entry.strip().rpartition(":")
    if sep and port.replace("-", "").isdigit():
        return host, f":{port}"
    return entry.strip(), ""


async def _resolve(name: str) -> tuple[IPv4Address, ...]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        log.warning("net.grant_unresolved", host=name, error=repr(exc))
        return ()
    return tuple(dict.fromkeys(IPv4Address(info[4][0]) for info in infos))


def resolver_binds(directory: Path, servers: Sequence[IPv4Address]) -> list[str]:
    """bubblewrap arguments giving a sandbox with egress ``servers`` as its resolvers (files made in ``directory``).

    ``directory`` must be readable by the sandboxes' uids (bubblewrap opens the
    files as them). No servers: nothing (names from ``/etc/hosts`` only).
    """
    if not servers:
        return []
    directory.mkdir(mode=0o755, exist_ok=True)
    files = {
        "resolv.conf": "".join(f"nameserver {a}\n" for a in servers) + "options timeout:2 attempts:2\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    }
    args = []
    for name, text in files.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o644)
        args += ["--ro-bind", str(directory / name), f"/etc/{name}"]
    return args
