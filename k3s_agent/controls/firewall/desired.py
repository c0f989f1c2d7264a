"""Build the desired Ruleset from the policy section, K3s's config and host facts.

Order in our chain: established/related, loopback, the localnet guard,
ICMP, DHCPv6 answers, then the policy's items sorted by (order, name) -- the profiles' `ssh`
item (ports "@ssh", sources "@management") comes first among them -- then the
logging rule, then (iptables only) the final drop. The fixed head is what the lock-out
guard needs and what a packet of an open connection should hit first (fast path).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any, Optional

from k3s_agent.controls.firewall.cni import FLANNEL_CONDITIONS, Cni, from_flannel
from k3s_agent.controls.firewall.model import (
    SSH_PORTS,
    Network,
    Rule,
    Ruleset,
    merge_ranges,
    parse_network,
    parse_range,
)
from k3s_agent.controls.firewall.options import ITEM_FIELDS, OPTIONS
from k3s_agent.k3s.facts import K3sFacts
from k3s_agent.netaddr import collapse
from k3s_agent.policy.model import ControlPolicy
from k3s_agent.policy.schema import setting

ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
# Traffic to 127/8 (::1) that did not come in on lo: kube-proxy sets
# route_localnet=1 for localhost NodePorts and then drops such packets in its
# KUBE-FIREWALL chain (CVE-2020-8558). Our chain sits above it in INPUT, so it
# must not accept them first.
LOCALNET = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# DHCPv6 (RFC 8415): the client asks ff02::1:2 from port 546, the server or
# relay answers unicast from its link-local address, so conntrack never sees
# the answer as a reply (seen in a netns: dropped under default_input = drop)
# and a node whose IPv6 address comes from DHCPv6 loses it when the lease
# runs out. ufw's before6.rules and firewalld's dhcpv6-client accept it too.
DHCPV6_REPLIES = ipaddress.ip_network("fe80::/10")
DHCPV6_CLIENT_PORT = 546


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything outside the policy the ruleset depends on (so tests can pin it)."""

    k3s: K3sFacts
    ssh_ports: tuple[int, ...]
    local_subnets: tuple[Network, ...]
    cni: Optional[Cni] = None  # None: K3s's flannel as its config says (no look at the host)

    def network(self) -> Cni:
        return self.cni if self.cni is not None else from_flannel(self.k3s.flannel_backend)

    def conditions(self) -> set[str]:
        """The `when` conditions that hold: K3s's, with the CNI's in place of flannel's."""
        return (self.k3s.conditions() - FLANNEL_CONDITIONS) | self.network().conditions()


def configured(policy: ControlPolicy) -> bool:
    """A firewall section enforces something only when it sets default_input or has items.

    `extends = "none"` with no firewall section must not put a firewall on a
    host (nor touch its nft/iptables at all).
    """
    return bool(policy.items) or "default_input" in policy.options


def symbols(policy: ControlPolicy, inputs: Inputs) -> dict[str, tuple[Network, ...]]:
    nodes = _networks(setting(policy.options, OPTIONS, "node_cidrs")) or inputs.local_subnets
    pods = _networks(setting(policy.options, OPTIONS, "cluster_cidrs")) or inputs.k3s.cluster_cidrs
    management = _networks(setting(policy.options, OPTIONS, "management_sources")) or ANY
    return {
        "@nodes": nodes,
        "@pods": pods,
        "@services": inputs.k3s.service_cidrs,
        "@management": management,
    }


def build(policy: ControlPolicy, inputs: Inputs) -> Ruleset:
    named = symbols(policy, inputs)
    # No implicit drop: only a policy that says "drop" (the built-in profiles do) drops.
    default_input = setting(policy.options, OPTIONS, "default_input")
    rules = head_rules()
    held = inputs.conditions()
    ordered = sorted(policy.items.items(), key=lambda kv: (setting(kv[1], ITEM_FIELDS, "order"), kv[0]))
    for name, item in ordered:
        rules.append(item_rule(name, item, named, held, inputs.ssh_ports))
    if setting(policy.options, OPTIONS, "log_dropped") and default_input == "drop":
        rate = int(setting(policy.options, OPTIONS, "log_rate"))
        rules.append(Rule("log-dropped", action="log", log_rate=rate, comment="log what is dropped"))
    return Ruleset(
        rules=tuple(rules),
        default_input=default_input,
        jump_position=int(setting(policy.options, OPTIONS, "jump_position")),
    )


def head_rules() -> list[Rule]:
    return [
        Rule("established", states=("established", "related"), comment="replies and open connections"),
        Rule("loopback", interface="lo", comment="local traffic"),
        Rule("localnet-martian", action="drop", dests=LOCALNET, comment="127/8 from outside lo"),
        Rule("icmp", proto="icmp", comment="ICMP/ICMPv6 (IPv6 neighbour discovery needs it)"),
        Rule(
            "dhcpv6-client",
            proto="udp",
            ports=((DHCPV6_CLIENT_PORT, DHCPV6_CLIENT_PORT),),
            sources=(DHCPV6_REPLIES,),
            comment="DHCPv6 answers to this node (unicast to a multicast request: no conntrack reply)",
        ),
    ]


def item_rule(
    name: str,
    item: Mapping[str, Any],
    named: Mapping[str, tuple[Network, ...]],
    held: set[str],
    ssh_ports: tuple[int, ...],
) -> Rule:
    wanted = list(setting(item, ITEM_FIELDS, "when"))
    missing = [c for c in wanted if c not in held]
    sources, empty = _resolve_sources(setting(item, ITEM_FIELDS, "sources"), named)
    inactive = ""
    if missing:
        inactive = f"not needed here: condition {', '.join(missing)} does not hold"
    elif empty:
        inactive = f"no sources: {', '.join(empty)} resolved to nothing"
    return Rule(
        name=name,
        action=setting(item, ITEM_FIELDS, "action"),
        proto=setting(item, ITEM_FIELDS, "proto"),
        ports=_ports(setting(item, ITEM_FIELDS, "ports"), ssh_ports),
        sources=sources,
        interface=setting(item, ITEM_FIELDS, "interface") or "",
        comment=item.get("comment", item.get("description", "")),
        inactive=inactive,
    )


def _ports(raw: list[Any], ssh_ports: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    ranges = []
    for value in raw:
        if value == SSH_PORTS:
            ranges += [(p, p) for p in ssh_ports]
        else:
            ranges.append(parse_range(value))
    return merge_ranges(ranges)


def _resolve_sources(
    raw: list[str], named: Mapping[str, tuple[Network, ...]]
) -> tuple[tuple[Network, ...], list[str]]:
    """CIDRs and @symbols -> networks; () means anywhere; also the symbols that were empty."""
    if not raw or "any" in raw:
        return (), []
    networks: list[Network] = []
    empty = []
    for text in raw:
        if text.startswith("@"):
            found = named.get(text, ())
            if not found:
                empty.append(text)
            networks += found
        else:
            networks.append(parse_network(text))
    if _is_any(tuple(networks)):
        return (), []
    return collapse(networks), (empty if not networks else [])


def _networks(values: Any) -> tuple[Network, ...]:
    return collapse(parse_network(v) for v in values or [])


def _is_any(networks: tuple[Network, ...]) -> bool:
    return all(any(n.prefixlen == 0 and n.version == v for n in networks) for v in (4, 6))
