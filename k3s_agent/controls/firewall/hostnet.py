"""Facts about this host's network that the ruleset depends on.

- the TCP ports sshd really listens on: the policy's ssh_ports plus what the
  sshd facts find (k3s_agent.sshd.facts: `sshd -T`, sshd's listening
  sockets, an enabled ssh.socket), the union because each can miss one.
- the subnets this node is attached to, as the default for "cluster nodes"
  when the policy gives no node_cidrs: nodes of one cluster usually share a
  subnet, and the CNI's own interfaces are left out.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

import psutil

from k3s_agent.host import Host
from k3s_agent.netaddr import Network, collapse
from k3s_agent.sshd.facts import Answers, socket_unit_ports, sshd_config_ports, sshd_listening_ports

# Interfaces created by K3s/flannel/CNI/containers: their subnets are not "nodes".
_CNI_IFACES = re.compile(r"^(lo|cni\d*|flannel.*|veth.*|cali.*|docker.*|kube-.*|tunl.*|vxlan.*|wg.*|br-.*)$")


def ssh_ports(host: Host, configured: list[int], answers: Optional[Answers] = None) -> tuple[list[int], str]:
    """(ports, how they were found): configured + sshd -T + listening + ssh.socket; 22 if nothing.

    answers: the caller's `sshd -T` cache (none: sshd is asked afresh).
    """
    from_config = sshd_config_ports(host, answers)
    listening = sshd_listening_ports(host.proc)
    activated = socket_unit_ports(host)
    ports = sorted(set(configured) | set(from_config) | set(listening) | set(activated))
    how = f"policy {configured}, sshd -T {from_config}, listening {listening}, ssh.socket {activated}"
    if not ports:
        return [22], how + ": nothing found, assuming 22"
    return ports, how


def local_subnets() -> tuple[Network, ...]:
    """Subnets of this node's own (non-CNI) interfaces, link-local excluded."""
    networks = []
    for iface, addrs in psutil.net_if_addrs().items():
        if _CNI_IFACES.match(iface):
            continue
        for addr in addrs:
            if not addr.netmask or addr.family.name not in ("AF_INET", "AF_INET6"):
                continue
            address = addr.address.split("%")[0]
            try:
                # psutil gives IPv6 masks as ffff:ffff:...: count the bits.
                bits = bin(int(ipaddress.ip_address(addr.netmask))).count("1")
                network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
            except ValueError:
                continue
            if network.is_link_local or network.is_loopback:
                continue
            networks.append(network)
    return collapse(networks)
