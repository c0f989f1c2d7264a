"""Host firewall: our own chain (iptables) or table (nftables), healed atomically.

Modules: model (rules, values), cni (which CNI carries pod traffic), hostnet
(sshd ports, local subnets), desired (the ruleset), guard (lock-out proof),
detect (which backend), nft / ipt (the backends), compare (findings),
control. What K3s's config says comes from k3s_agent.k3s.facts, what sshd
says from k3s_agent.sshd.facts: facts other controls read too.
"""

from __future__ import annotations

from typing import Optional

from k3s_agent.controls.base import ControlSpec, Lint
from k3s_agent.controls.firewall import cni, desired, guard, hostnet
from k3s_agent.controls.firewall.control import FirewallControl
from k3s_agent.controls.firewall.model import (
    ACTIONS,
    CONDITIONS,
    PROTOS,
    check_cidr,
    check_interface,
    check_name,
    check_port,
    check_source,
)
from k3s_agent.host import Host
from k3s_agent.k3s import facts as k3s
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, at_least, between, list_of, non_empty, one_of

NAME = "firewall"


def _build(policy: ControlPolicy, host: Host) -> FirewallControl:
    return FirewallControl(policy, host)


def _port_number(value: object) -> Optional[str]:
    return between(1, 65535)(value)


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    """Refuse what would break the node or lock the operator out (checked at load)."""
    if not desired.configured(control):
        return []
    problems = []
    for name, item in control.items.items():
        if item.get("ports") and item.get("proto", "any") not in ("tcp", "udp"):
            problems.append(Lint(name, 'ports need proto = "tcp" or "udp"'))
    if not control.option("allow_lockout", False):
        problems += _lockout(control, host)
    return problems


def _lockout(control: ControlPolicy, host: Host) -> list[Lint]:
    """The lock-out guard at load time, on this node's interfaces and sshd ports.

    The same walk as every heal's (control.guard_problems), with the ports
    sshd really listens on (hostnet.ssh_ports: the policy's, `sshd -T`,
    sshd's sockets, an enabled ssh.socket) and the same K3s facts and local
    subnets as a heal: left out, a drop from @pods/@nodes/@services or one
    with `when` was inactive here and passed, then every heal refused it.
    """
    ports, _ = hostnet.ssh_ports(host, list(control.option("ssh_ports", [])))
    facts = k3s.read_facts(host)
    inputs = desired.Inputs(k3s=facts, ssh_ports=tuple(ports), local_subnets=hostnet.local_subnets())
    try:
        ruleset = desired.build(control, inputs)
    except ValueError as exc:
        return [Lint("", f"cannot build the ruleset: {exc}")]
    management = desired.symbols(control, inputs)["@management"]
    refusal = guard.refusal(guard.lockout_problems(ruleset, ports, management, host.net_interfaces()))
    return [Lint("", refusal)] if refusal else []


SPEC = ControlSpec(
    name=NAME,
    build=_build,
    options={
        "backend": Field(str, one_of("auto", "nftables", "iptables"), doc="auto: what K3s uses"),
        "default_input": Field(
            str, one_of("drop", "accept"), doc="verdict for inbound traffic no rule accepts"
        ),
        "management_sources": Field(
            list, list_of(str, check_cidr), doc="CIDRs allowed to reach sshd (default: any)"
        ),
        "node_cidrs": Field(list, list_of(str, check_cidr), doc="the cluster nodes' addresses (@nodes)"),
        "cluster_cidrs": Field(
            list, list_of(str, check_cidr), doc="pod CIDRs (@pods; default: K3s cluster-cidr)"
        ),
        "ssh_ports": Field(list, list_of(int, _port_number), doc="added to the ports sshd really listens on"),
        "log_dropped": Field(bool, doc="log dropped inbound packets (rate-limited)"),
        "log_rate": Field(int, between(1, 10000), doc="log messages per minute"),
        "allow_lockout": Field(bool, doc="let a ruleset through that the lock-out guard refuses"),
        "jump_position": Field(int, at_least(1), doc="iptables: position of INPUT's jump to our chain"),
        "cni": Field(str, one_of(*cni.CHOICES), doc="the CNI whose ports @nodes may reach (auto: detected)"),
    },
    item_fields={
        "action": Field(str, one_of(*ACTIONS)),
        "proto": Field(str, one_of(*PROTOS)),
        "ports": Field(list, list_of((int, str), check_port), doc='22 or "2379-2380"'),
        "sources": Field(
            list, list_of(str, check_source), doc="CIDRs, any, @nodes, @pods, @services, @management"
        ),
        "interface": Field(str, check_interface),
        "comment": Field(str, non_empty),
        "order": Field(int, between(0, 10000), doc="rules run in (order, name) order; default 500"),
        "when": Field(list, list_of(str, one_of(*CONDITIONS)), doc="only where K3s's config says so"),
    },
    item_key=check_name,
    lint=lint,
    doc="host firewall: nftables table inet k3s_agentd or iptables chain K3S-AGENTD-INPUT",
)
