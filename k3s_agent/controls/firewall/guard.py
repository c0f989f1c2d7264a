"""Lock-out guard: prove a ruleset keeps the operator's way in before it is committed.

The proof walks the ordered rules the way the kernel would, for every packet
the operator's way in depends on:

- a packet of an established connection and a new packet on lo;
- a new TCP SYN to every sshd port, from every management network (v4 and v6
  alike; "anywhere" is 0.0.0.0/0 and ::/0), arriving on every interface of
  the node that management traffic can come in on (names as the kernel has
  them: lo and the pod/container plumbing K3s and its CNI create are left out);
- with an IPv6 management network, ICMPv6 on each of those interfaces: without
  neighbour discovery (RFC 4861) no IPv6 packet reaches the node at all, and
  conntrack leaves neighbour solicitations untracked, so the established rule
  never accepts them (seen in a netns: `ct state untracked` counts the NS, and
  a TCP accept alone does not let a v6 connection in); and DHCPv6 answers
  from a link-local address to port 546, unicast answers to a multicast
  request that conntrack does not match: without them a node whose address
  comes from DHCPv6 loses it when the lease runs out.

"Matches" errs on the side of "blocked": an accept counts only if it surely
covers the whole probe (every address of the source network, that very
interface), a drop/reject counts if it could match any part of it. On a node
where no such interface is found the probe comes in on an interface nobody
knows: no interface-scoped accept covers it and every interface-scoped drop
may match it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Optional

from k3s_agent.controls.firewall.model import BUILTIN, Network, Rule, Ruleset

ANY4 = ipaddress.ip_network("0.0.0.0/0")
ANY6 = ipaddress.ip_network("::/0")
# A non-loopback destination address per family: the node itself.
_NODE_ADDR = {4: ipaddress.ip_network("192.0.2.1/32"), 6: ipaddress.ip_network("2001:db8::1/128")}
_LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")
# The interface of the conservative probe: parentheses are in no interface
# name the policy accepts (model.check_interface), so no rule names it.
UNKNOWN_IFACE = "(unknown)"
# Interfaces K3s, its CNIs and container runtimes create for pods: an
# operator's SSH never arrives on them. Kept narrow on purpose (a wg0 or br0
# may well be the management network): a name left out is a probe skipped.
_POD_PLUMBING = re.compile(
    r"^(cni\d*|flannel[.-].*|veth.*|cali.*|docker\d+|kube-.*|tunl\d+|cilium_.*|lxc.*)$"
)
_PAST = {"drop": "dropped", "reject": "rejected"}


@dataclasses.dataclass(frozen=True)
class Probe:
    what: str
    source: Network
    interface: str
    proto: str = "tcp"
    port: int = 0
    state: str = "new"


def probe_interfaces(names: Iterable[str]) -> tuple[str, ...]:
    """The node's interfaces management traffic may arrive on; (UNKNOWN_IFACE,) when there is none."""
    found = sorted({n for n in names if n != "lo" and not _POD_PLUMBING.match(n)})
    return tuple(found) or (UNKNOWN_IFACE,)


def probes(ssh_ports: Sequence[int], management: Sequence[Network], interfaces: Sequence[str]) -> list[Probe]:
    """Every packet that must be accepted; interfaces as the kernel names them (see probe_interfaces)."""
    walked = probe_interfaces(interfaces)
    found = [
        Probe("established connections", ANY4, walked[0], state="established"),
        Probe("established connections (IPv6)", ANY6, walked[0], state="established"),
        Probe("loopback", ANY4, "lo"),
    ]
    networks = management or (ANY4, ANY6)
    for network in networks:
        for port in ssh_ports:
            for iface in walked:
                found.append(Probe(f"ssh port {port} from {network}", network, iface, port=port))
    if any(n.version == 6 for n in networks):
        found += [Probe("IPv6 neighbour discovery (ICMPv6)", ANY6, i, proto="icmp") for i in walked]
        found += [Probe("DHCPv6 answers", _LINK_LOCAL6, i, proto="udp", port=546) for i in walked]
    return found


def _overlaps(rule_nets: tuple[Network, ...], net: Network, cover: bool) -> bool:
    same = [n for n in rule_nets if n.version == net.version]
    if not rule_nets:
        return True
    if cover:
        return any(net.subnet_of(n) for n in same)  # type: ignore[arg-type]
    return any(net.overlaps(n) for n in same)


def matches(rule: Rule, probe: Probe, cover: bool) -> bool:
    """Whether rule matches probe: surely (cover, for accepts) or possibly (drops)."""
    if rule.inactive or rule.action == "log":
        return False
    if rule.states and probe.state not in rule.states:
        return False
    if rule.interface and not _iface_matches(rule.interface, probe.interface, cover):
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


def _iface_matches(pattern: str, name: str, cover: bool) -> bool:
    """Interface match as netfilter does it, erring towards "blocked".

    The model stores a prefix as a trailing "*": nft matches `iifname "en*"`
    as the prefix "en" (nft(8), STRING; `nft --debug=netlink` shows a 2-byte
    `cmp eq`), and ipt.py renders it as `-i en+`, iptables' prefix syntax
    (iptables(8): "If the interface name ends in a '+', then any interface
    which begins with this name will match"). A trailing "+" written as such
    is a prefix to iptables but a literal name to nft: a drop may match as a
    prefix, an accept is trusted only as the literal name.
    """
    if name == UNKNOWN_IFACE:
        return not cover  # nobody knows it: only a drop may match it
    if pattern.endswith("*") or (pattern.endswith("+") and not cover):
        return name.startswith(pattern[:-1])
    return name == pattern


def verdict(ruleset: Ruleset, probe: Probe) -> tuple[str, Optional[Rule]]:
    """(accept | drop | reject, the rule that decides it; None: the chain's default)."""
    for rule in ruleset.rules:
        accepting = rule.action == "accept"
        # accept must surely match; drop/reject may match: both err on the side of "blocked".
        if matches(rule, probe, cover=accepting):
            return ("accept" if accepting else rule.action), rule
    return ruleset.default_input, None


def _culprit(rule: Optional[Rule]) -> str:
    if rule is None or rule.name == "default-drop":
        return "the default policy (default_input = drop)"
    if rule.name in BUILTIN:
        return f"built-in rule {rule.name!r}"
    return f"item {rule.name!r}"


def lockout_problems(
    ruleset: Ruleset,
    ssh_ports: Sequence[int],
    management: Sequence[Network],
    interfaces: Sequence[str],
) -> list[str]:
    """What the ruleset would cut off, one line per (packet, rule) naming the interfaces; empty when safe."""
    blocked: dict[tuple[str, str], list[str]] = {}
    for probe in probes(ssh_ports, management, interfaces):
        action, rule = verdict(ruleset, probe)
        if action != "accept":
            key = (probe.what, f"would be {_PAST[action]} by {_culprit(rule)}")
            blocked.setdefault(key, []).append(probe.interface)
    return [f"{what} on {', '.join(ifaces)} {why}" for (what, why), ifaces in blocked.items()]


def refusal(problems: list[str]) -> Optional[str]:
    if not problems:
        return None
    return (
        "lock-out guard refused the ruleset: "
        + "; ".join(problems)
        + " (set allow_lockout = true in [controls.firewall] if that is really wanted)"
    )
