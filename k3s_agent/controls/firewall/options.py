"""The firewall section's keys: type, bounds, default and meaning, in one place.

The loader validates with them (through the SPEC in __init__.py), the
control and the ruleset builder read defaults from them (`setting`), and
docs/policy.md's reference is generated from them.
"""

from __future__ import annotations

from typing import Optional

from k3s_agent.controls.firewall import cni
from k3s_agent.controls.firewall.model import (
    ACTIONS,
    CONDITIONS,
    PROTOS,
    check_cidr,
    check_interface,
    check_port,
    check_source,
)
from k3s_agent.policy.schema import Field, between, described, list_of, non_empty, one_of


def _port_number(value: object) -> Optional[str]:
    return between(1, 65535)(value)


described(_port_number, "1..65535")

OPTIONS: dict[str, Field] = {
    "backend": Field(str, one_of("auto", "nftables", "iptables"), default="auto", doc="auto: what K3s uses"),
    "default_input": Field(
        str, one_of("drop", "accept"), default="accept", doc="verdict for inbound traffic no rule accepts"
    ),
    "management_sources": Field(
        list, list_of(str, check_cidr), doc="CIDRs allowed to reach sshd (@management; default: any)"
    ),
    "node_cidrs": Field(
        list, list_of(str, check_cidr), doc="the cluster nodes' addresses (@nodes; default: local subnets)"
    ),
    "cluster_cidrs": Field(
        list, list_of(str, check_cidr), doc="pod CIDRs (@pods; default: K3s cluster-cidr)"
    ),
    "ssh_ports": Field(
        list, list_of(int, _port_number), default=(), doc="added to the ports sshd really listens on"
    ),
    "log_dropped": Field(bool, default=False, doc="log dropped inbound packets (rate-limited)"),
    "log_rate": Field(int, min=1, max=10000, default=5, doc="log messages per minute"),
    "allow_lockout": Field(bool, default=False, doc="let a ruleset through that the lock-out guard refuses"),
    "jump_position": Field(int, min=1, default=1, doc="iptables: position of INPUT's jump to our chain"),
    "cni": Field(
        str, one_of(*cni.CHOICES), default="auto", doc="the CNI whose ports @nodes may reach (auto: detected)"
    ),
}
ITEM_FIELDS: dict[str, Field] = {
    "action": Field(str, one_of(*ACTIONS), default="accept"),
    "proto": Field(str, one_of(*PROTOS), default="any"),
    "ports": Field(list, list_of((int, str), check_port), default=(), doc='22 or "2379-2380"'),
    "sources": Field(
        list, list_of(str, check_source), default=(), doc="CIDRs, any, @nodes, @pods, @services, @management"
    ),
    "interface": Field(str, check_interface, doc="input interface (default: any)"),
    "comment": Field(str, non_empty, doc="the rule's comment (default: the item's description)"),
    "order": Field(int, min=0, max=10000, default=500, doc="rules run in (order, name) order"),
    "when": Field(list, list_of(str, one_of(*CONDITIONS)), default=(), doc="only where K3s's config says so"),
}
