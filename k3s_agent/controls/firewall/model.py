"""The firewall's own vocabulary: one Rule, an ordered Ruleset, and value parsing.

A Rule is backend-neutral; the nft and iptables backends render it. Sources
are parsed networks, never strings, so validation, the lock-out guard and
both renderers agree on what a rule matches.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, Optional, Union

from k3s_agent.netaddr import Network

PortRange = tuple  # (low, high), inclusive

TABLE = "k3s_agentd"  # nft: table inet k3s_agentd
NFT_CHAIN = "input"
IPT_CHAIN = "K3S-AGENTD-INPUT"
COMMENT_PREFIX = "k3s-agentd:"  # iptables: our rules carry this comment
LOG_PREFIX = "k3s-agentd drop: "

ACTIONS = ("accept", "drop", "reject")
# ipip: IP protocol 4, IP-in-IP (Linux's IPPROTO_IPIP, Calico's default
# encapsulation). /etc/protocols names 4 "ipencap" and 94 "ipip"; in a policy
# "ipip" is always 4, and the backends render the number (nft) or
# python-iptables' own name for 4 ("ipip"), never a name /etc/protocols resolves.
PROTOS = ("any", "tcp", "udp", "icmp", "ipip")
IPIP = 4
# Names of the rules we always build ourselves; an item may not reuse them.
BUILTIN = (
    "established",
    "loopback",
    "localnet-martian",
    "icmp",
    "dhcpv6-client",
    "log-dropped",
    "default-drop",
)
SSH_PORTS = "@ssh"  # in an item's ports: the ports sshd really listens on
SYMBOLS = ("@nodes", "@pods", "@services", "@management")
# vxlan/wireguard: K3s's flannel backend; calico, cilium(-vxlan/-geneve): cni.py.
CONDITIONS = (
    "etcd",
    "vxlan",
    "wireguard",
    "registry",
    "ipv6",
    "calico",
    "cilium",
    "cilium-vxlan",
    "cilium-geneve",
)

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,47}")
# IFNAMSIZ 16 with its NUL: at most 15 characters, a trailing * included
# (iptables renders "x*" as "x+", and refuses 16 characters: a heal failing forever).
_IFACE = re.compile(r"(?=.{1,15}\Z)[A-Za-z0-9_.:@+-]+\*?")


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    action: str = "accept"  # accept | drop | reject | log
    proto: str = "any"
    ports: tuple[PortRange, ...] = ()
    sources: tuple[Network, ...] = ()  # empty: from anywhere
    dests: tuple[Network, ...] = ()  # empty: to anything
    interface: str = ""
    states: tuple[str, ...] = ()  # conntrack states, e.g. ("established", "related")
    log_rate: int = 0  # log rule: messages per minute
    comment: str = ""
    inactive: str = ""  # why the rule renders to nothing (e.g. no sources known)

    def families(self) -> list[int]:
        """IP versions this rule applies to (a rule with v4-only sources is v4-only)."""
        pinned = [n.version for n in self.sources + self.dests]
        if pinned:
            return sorted(set(pinned))
        return [4, 6]

    def sources_of(self, version: int) -> tuple[Network, ...]:
        return tuple(n for n in self.sources if n.version == version)

    def dests_of(self, version: int) -> tuple[Network, ...]:
        return tuple(n for n in self.dests if n.version == version)

    def describe(self) -> str:
        """One human line for findings and status."""
        parts = [self.action]
        if self.proto != "any":
            parts.append(self.proto)
        if self.ports:
            parts.append("port " + ",".join(format_range(r) for r in self.ports))
        if self.states:
            parts.append("ct state " + ",".join(self.states))
        if self.interface:
            parts.append(f"in {self.interface}")
        parts.append("from " + (",".join(str(n) for n in self.sources) or "any"))
        if self.dests:
            parts.append("to " + ",".join(str(n) for n in self.dests))
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """Everything we want in our chain/table, in order, plus the verdict for the rest."""

    rules: tuple[Rule, ...]
    default_input: str = "drop"  # drop | accept
    jump_position: int = 1  # iptables: where INPUT jumps to our chain

    def active(self) -> list[Rule]:
        return [r for r in self.rules if not r.inactive]

    def names(self) -> list[str]:
        return [r.name for r in self.rules]


@dataclasses.dataclass(frozen=True)
class ForeignChanges:
    """What changed outside our table/chain across one commit of ours.

    ours: nobody else committed meanwhile, so these came with our commit (a
    bug to shout about). others: other transactions committed in the same
    window (kube-proxy syncing, say), so a change cannot be pinned on us.
    """

    ours: tuple[str, ...] = ()
    others: tuple[str, ...] = ()


# -- parsing and validation of policy values -----------------------------------------


# IPv4-mapped IPv6 (RFC 4291 2.5.5.2): what a dual-stack socket shows for an
# IPv4 client (`ss`: [::ffff:10.0.0.5]), never a source on the wire: netfilter
# sees that client as IPv4, so a rule or management network written this way
# matches nothing (found by the guard's netns traffic test).
_V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def parse_network(text: str) -> Network:
    """A CIDR or a bare address; host bits set are an error (a typo, usually).

    Refused too: a zone index (fe80::%ens3/64: rules match no zone, and
    Python's collapse merges two such networks into a wider one) and an
    IPv4-mapped network (see _V4_MAPPED), each with what to write instead.
    """
    network = ipaddress.ip_network(text.strip(), strict=True)
    if isinstance(network, ipaddress.IPv6Network):
        if network.network_address.scope_id:
            raise ValueError(f"{text!r} has a zone index; name the link with interface = instead")
        if network.subnet_of(_V4_MAPPED):
            v4 = ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
            raise ValueError(f"{text!r} is IPv4-mapped: netfilter sees those clients as IPv4, write {v4}")
    return network


def check_cidr(value: Any) -> Optional[str]:
    try:
        parse_network(str(value))
    except ValueError as exc:
        return f"{value!r} is not a CIDR ({exc})"
    return None


def check_source(value: Any) -> Optional[str]:
    if value in SYMBOLS or value == "any":
        return None
    reason = check_cidr(value)
    return f"{reason}; or one of any, {', '.join(SYMBOLS)}" if reason else None


def parse_range(value: Union[int, str]) -> PortRange:
    """22 or "2379-2380" (also "2379:2380") -> (low, high); ValueError if impossible."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d{1,5})(?:\s*[-:]\s*(\d{1,5}))?", text)
    if not match:
        raise ValueError(f"{value!r} is not a port or a range like 2379-2380")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{value!r}: ports are 1-65535, low <= high")
    return (low, high)


def check_port(value: Any) -> Optional[str]:
    if value == SSH_PORTS:
        return None
    try:
        parse_range(value)
    except ValueError as exc:
        return str(exc)
    return None


def format_range(port_range: PortRange) -> str:
    low, high = port_range
    return str(low) if low == high else f"{low}-{high}"


def check_name(key: str) -> Optional[str]:
    if key in BUILTIN:
        return f"{key!r} is a built-in rule name ({', '.join(BUILTIN)}); pick another"
    if not _NAME.fullmatch(key):
        return f"{key!r} is not a rule name (lowercase letters, digits, . _ -, at most 48)"
    return None


def check_interface(value: Any) -> Optional[str]:
    if not _IFACE.fullmatch(str(value)):
        return f"{value!r} is not an interface name (at most 15 characters with an optional trailing *)"
    if ":" in str(value):
        # dev_valid_name() refuses ':' in a name: "ens3:1" is an address label
        # (`ip addr`), its packets come in on ens3.
        device = str(value).split(":")[0]
        return f"{value!r} is an address label, not an interface (packets arrive on {device!r})"
    if str(value).startswith("@"):
        return f"{value!r}: a leading @ is a set reference to nftables, not an interface name"
    if str(value).endswith("+"):
        # iptables reads a trailing + as a prefix, nft as a literal name: one
        # policy must mean the same on both backends.
        prefix = str(value)[:-1] + "*"
        return f"{value!r}: write a prefix as {prefix!r} (a trailing + is a prefix to iptables only)"
    return None


def merge_ranges(ranges: Sequence[PortRange]) -> tuple[PortRange, ...]:
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((low, high) for low, high in merged)
