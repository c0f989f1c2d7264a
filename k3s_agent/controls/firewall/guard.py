"""Lock-out guard: prove a ruleset keeps the operator's way in before it is committed.

The proof walks the ordered rules the way the kernel would for three kinds
of packet, with a conservative notion of "matches": an accept counts only if
it covers the whole management network, a drop/reject counts if it overlaps
it at all. Each must end in accept: a packet of an established connection,
a new packet on lo, and a new TCP SYN to every sshd port from every
management source (v4 and v6 alike).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Optional

from k3s_agent.controls.firewall.model import Network, Rule, Ruleset

ANY4 = ipaddress.ip_network("0.0.0.0/0")
ANY6 = ipaddress.ip_network("::/0")
# A non-loopback destination address per family: the node itself.
_NODE_ADDR = {4: ipaddress.ip_network("192.0.2.1/32"), 6: ipaddress.ip_network("2001:db8::1/128")}


@dataclasses.dataclass(frozen=True)
class Probe:
    what: str
    source: Network
    proto: str = "tcp"
    port: int = 0
    interface: str = "eth0"
    state: str = "new"


def probes(ssh_ports: Sequence[int], management: Sequence[Network]) -> list[Probe]:
    found = [
        Probe("established connections", ANY4, state="established"),
        Probe("established connections (IPv6)", ANY6, state="established"),
        Probe("loopback", ANY4, interface="lo"),
    ]
    for network in management or (ANY4, ANY6):
        for port in ssh_ports:
            found.append(Probe(f"ssh port {port} from {network}", network, port=port))
    return found


def _overlaps(rule_nets: tuple[Network, ...], net: Network, cover: bool) -> bool:
    same = [n for n in rule_nets if n.version == net.version]
    if not rule_nets:
        return True
    if cover:
        return any(net.subnet_of(n) for n in same)  # type: ignore[arg-type]
    return any(net.overlaps(n) for n in same)


def matches(rule: Rule, probe: Probe, cover: bool) -> bool:
    if rule.inactive or rule.action == "log":
        return False
    if rule.states and probe.state not in rule.states:
        return False
    if rule.interface and not _iface_matches(rule.interface, probe.interface):
        return False
    if rule.proto not in ("any", probe.proto):
        return False
    if rule.ports and not any(low <= probe.port <= high for low, high in rule.ports):
        return False
    if rule.dests and not _overlaps(rule.dests, _NODE_ADDR[probe.source.version], cover):
        return False
    if rule.sources and probe.source.version not in {n.version for n in rule.sources}:
        return False
    return _overlaps(rule.sources, probe.source, cover)


def _iface_matches(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):  # nft and iptables both take a trailing * (or +) as a prefix
        return name.startswith(pattern[:-1])
    return name == pattern


def verdict(ruleset: Ruleset, probe: Probe) -> str:
    for rule in ruleset.rules:
        accepting = rule.action == "accept"
        # accept must surely match; drop/reject may match: both err on the side of "blocked".
        if matches(rule, probe, cover=accepting):
            return "accept" if accepting else rule.action
    return ruleset.default_input


_PAST = {"drop": "dropped", "reject": "rejected"}


def lockout_problems(ruleset: Ruleset, ssh_ports: Sequence[int], management: Sequence[Network]) -> list[str]:
    """What the ruleset would cut off; empty when it is safe."""
    return [
        f"{p.what} would be {_PAST[v]}"
        for p in probes(ssh_ports, management)
        for v in [verdict(ruleset, p)]
        if v != "accept"
    ]


def refusal(problems: list[str]) -> Optional[str]:
    if not problems:
        return None
    return (
        "lock-out guard refused the ruleset: "
        + "; ".join(problems)
        + " (set allow_lockout = true in [controls.firewall] if that is really wanted)"
    )
