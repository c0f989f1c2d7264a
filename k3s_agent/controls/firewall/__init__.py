"""Host firewall: our own chain (iptables) or table (nftables), healed atomically.

Modules: model (rules, values), cni (which CNI carries pod traffic), hostnet
(sshd ports, local subnets), desired (the ruleset), guard (lock-out proof),
detect (which backend), nft / ipt (the backends), compare (findings),
control. What K3s's config says comes from k3s_agent.k3s.facts, what sshd
says from k3s_agent.sshd.facts: facts other controls read too.
"""

from __future__ import annotations

from k3s_agent.controls.base import ControlSpec, Lint
from k3s_agent.controls.firewall import desired, guard, hostnet
from k3s_agent.controls.firewall.control import FirewallControl
from k3s_agent.controls.firewall.model import check_name
from k3s_agent.controls.firewall.options import ITEM_FIELDS, OPTIONS
from k3s_agent.host import Host
from k3s_agent.k3s import facts as k3s
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import setting

NAME = "firewall"


def _build(policy: ControlPolicy, host: Host) -> FirewallControl:
    return FirewallControl(policy, host)


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    """Refuse what would break the node or lock the operator out (checked at load)."""
    if not desired.configured(control):
        return []
    problems = []
    for name, item in control.items.items():
        if item.get("ports") and setting(item, ITEM_FIELDS, "proto") not in ("tcp", "udp"):
            problems.append(Lint(name, 'ports need proto = "tcp" or "udp"'))
    if not setting(control.options, OPTIONS, "allow_lockout"):
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
    ports, _ = hostnet.ssh_ports(host, list(setting(control.options, OPTIONS, "ssh_ports")))
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
    options=OPTIONS,
    item_fields=ITEM_FIELDS,
    item_key=check_name,
    lint=lint,
    doc="host firewall: nftables table inet k3s_agentd or iptables chain K3S-AGENTD-INPUT",
)
