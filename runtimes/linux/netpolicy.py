"""Egress policies and the nftables rulesets that enforce them.

A policy is an allow-list of IPv4 destinations, each a CIDR (or a bare
address) with an optional port or port range: ``198.51.100.0/24``,
``203.0.113.7:443``, ``0.0.0.0/0:8000-8100``. A port limits TCP and UDP to
it; no port allows every protocol to the network. Everything else is
dropped, and some destinations are dropped even when listed: the private,
loopback, link-local, shared, multicast and reserved ranges
(:data:`ALWAYS_DENIED`, plus the pool's own subnet), so a sandbox given "the
internet" (``0.0.0.0/0``) still cannot reach the host's network or other
sandboxes. The host's own addresses are refused on the host side
(:func:`host_ruleset`: nothing from a sandbox's veth reaches the host's
input hook). IPv6 is dropped.

Rules: :func:`sandbox_table` and :func:`policy_rules` go into the sandbox's
network namespace (owned by the host's user namespace, so root in the
sandbox holds no ``CAP_NET_ADMIN`` over it), :func:`host_ruleset` into the
host's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from soulbox.core.errors import InvalidRequest

TABLE = "soulbox"  # the table in each sandbox's namespace
ANY = IPv4Network("0.0.0.0/0")
ALWAYS_DENIED: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
)


@dataclass(frozen=True, slots=True)
class EgressRule:
    """One allowed destination: a network and, optionally, a port range (TCP and UDP)."""

    network: IPv4Network
    ports: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.ports is None:
            return str(self.network)
        low, high = self.ports
        return f"{self.network}:{low}" if low == high else f"{self.network}:{low}-{high}"

    def nft(self) -> str:
        """The rule's match and verdict, in nft syntax."""
        match = f"ip daddr {self.network}"
        if self.ports is None:
            return f"{match} accept"
        low, high = self.ports
        ports = str(low) if low == high else f"{low}-{high}"
        return f"{match} meta l4proto {{ tcp, udp }} th dport {ports} accept"


def parse_rule(entry: str) -> EgressRule:
    """``CIDR[:port[-port]]`` (a bare address is a /32); ``InvalidRequest`` for anything else."""
    text = entry.strip()
    address, sep, port_text = text.partition(":")
    try:
        network = IPv4Network(address, strict=False)
    except ValueError:
        raise InvalidRequest(f"egress entry {entry!r}: not an IPv4 address or CIDR (names are not supported)") from None
    if not sep:
        return EgressRule(network)
    low_text, dash, high_text = port_text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise InvalidRequest(f"egress entry {entry!r}: bad port {port_text!r}") from None
    if not 1 <= low <= high <= 65535:
        raise InvalidRequest(f"egress entry {entry!r}: ports must be 1-65535, low to high")
    return EgressRule(network, (low, high))


def parse_network(entry: str) -> IPv4Network:
    try:
        return IPv4Network(entry.strip(), strict=False)
    except ValueError:
        raise InvalidRequest(f"{entry!r} is not an IPv4 address or CIDR") from None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """What a sandbox may reach: ``allow`` minus ``deny`` (minus what is always denied); empty: nothing."""

    allow: tuple[EgressRule, ...] = ()
    deny: tuple[IPv4Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.allow)

    @classmethod
    def parse(cls, allow: Iterable[str], deny: Iterable[str] = ()) -> EgressPolicy:
        return cls(tuple(parse_rule(e) for e in allow), tuple(parse_network(e) for e in deny))

    @classmethod
    def of_request(cls, *, internet: bool, allow_out: Sequence[str] = (), deny_out: Sequence[str] = ()) -> EgressPolicy:
        """E2B's semantics: ``internet`` adds ``0.0.0.0/0``; listed ``allow_out`` entries win over ``deny_out``."""
        rules = [parse_rule(e) for e in allow_out]
        if internet and EgressRule(ANY) not in rules:
            rules.append(EgressRule(ANY))
        return cls(tuple(rules), tuple(parse_network(e) for e in deny_out))

    def entries(self) -> list[str]:
        return [str(rule) for rule in self.allow]


def sandbox_table(denied: Sequence[IPv4Network]) -> str:
    """The nft script making the sandbox namespace's table, its policy chain empty (so: nothing goes out).

    Output: loopback, replies to allowed flows, the ``dns`` chain (the
    configured resolvers, even in a denied range), the always-denied ranges
    refused, then the ``allow`` chain (:func:`policy_rules`), then refused (a
    TCP reset, an ICMP error). Input: loopback and replies only. Made once
    per namespace: a policy change touches only the ``allow`` chain, which is
    cheap (replacing base chains unregisters hooks: tens of milliseconds).
    """
    lines = [
        f"table inet {TABLE} {{",
        "  set denied { type ipv4_addr; flags interval; auto-merge;" + _elements(denied) + " }",
        *_REFUSE,
        "  chain dns {",
        "  }",
        "  chain allow {",
        "  }",
        "  chain output {",
        "    type filter hook output priority 0; policy drop;",
        "    oif lo accept",
        "    ct state established,related accept",
        "    jump dns",
        "    ip daddr @denied goto refuse",
        "    jump allow",
        "    goto refuse",
        "  }",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    iif lo accept",
        "    ct state established,related accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def policy_rules(policy: EgressPolicy, dns: Sequence[IPv4Address] = ()) -> str:
    """The nft script replacing the ``allow`` chain by ``policy`` (one transaction), and ``dns`` if it lets anything.

    Order: the listed rules other than ``0.0.0.0/0``; the policy's ``deny``;
    the catch-all rules. What matches none returns to the refusal.
    """
    explicit = [r for r in policy.allow if r.network != ANY]
    catch_all = [r for r in policy.allow if r.network == ANY]
    rules = [
        *(rule.nft() for rule in explicit),
        *(f"ip daddr {net} goto refuse" for net in policy.deny),
        *(rule.nft() for rule in catch_all),
    ]
    lines = [f"flush chain inet {TABLE} dns", f"flush chain inet {TABLE} allow"]
    if policy.enabled and dns:
        servers = ", ".join(str(a) for a in dns)
        match = f"ip daddr {{ {servers} }} meta l4proto {{ tcp, udp }} th dport 53"
        lines.append(f"add rule inet {TABLE} dns {match} accept")
    lines += [f"add rule inet {TABLE} allow {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def host_ruleset(
    table: str,
    ifprefix: str,
    subnet: IPv4Network,
    denied: Sequence[IPv4Network],
    dns: Sequence[IPv4Address] = (),
) -> str:
    """The host's table for one pool: nothing from a sandbox to the host, no private ranges, NAT out.

    ``ifprefix`` matches the host ends of the pool's veths. The input hook
    refuses all a sandbox sends to any of the host's addresses; the forward
    hook refuses forwarded packets to the denied ranges (the sandbox
    namespace already does: this is the second wall) and drops new flows
    into sandboxes; what leaves for elsewhere is masqueraded. The resolvers
    ``dns`` are let through on port 53 first (a namespace lets them through
    only when its policy allows anything).
    """
    veths = f'"{ifprefix}*"'
    resolvers = []  # the configured resolvers, wherever they are (the namespaces let them through with egress only)
    if dns:
        servers = ", ".join(str(a) for a in dns)
        resolvers = [f"    iifname {veths} ip daddr {{ {servers} }} meta l4proto {{ tcp, udp }} th dport 53 accept"]
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  set denied { type ipv4_addr; flags interval; auto-merge;" + _elements(denied) + " }",
        *_REFUSE,
        "  chain input {",
        "    type filter hook input priority -10; policy accept;",
        *resolvers,
        f"    iifname {veths} goto refuse",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority -10; policy accept;",
        f"    iifname {veths} meta nfproto ipv6 drop",
        *resolvers,
        f"    iifname {veths} ip daddr @denied goto refuse",
        f"    oifname {veths} ct state established,related accept",
        f"    oifname {veths} drop",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
        f"    ip saddr {subnet} oifname != {veths} masquerade",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# Refused, not silently dropped: a connect fails at once (ECONNREFUSED, EHOSTUNREACH) instead of
# hanging until the guest's own timeout (some runtimes retry a dropped SYN for many seconds).
_REFUSE = (
    "  chain refuse {",
    "    meta l4proto tcp reject with tcp reset",
    "    reject with icmpx type admin-prohibited",
    "  }",
)


def _elements(networks: Sequence[IPv4Network]) -> str:
    return f" elements = {{ {', '.join(str(n) for n in networks)} }};" if networks else ""


def denied_networks(extra: Iterable[str], subnet: IPv4Network) -> list[IPv4Network]:
    """:data:`ALWAYS_DENIED` and ``extra`` (settings), with the pool's own subnet."""
    nets = {ipaddress.IPv4Network(n) for n in (*ALWAYS_DENIED, *extra)}
    nets.add(subnet)
    return sorted(ipaddress.collapse_addresses(nets))
