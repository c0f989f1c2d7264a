"""Facts about this host's network that the ruleset depends on.

- the TCP ports sshd really listens on: `sshd -T` (the effective config,
  sshd(8) -T) and the listening sockets owned by an sshd process (psutil);
  the union, because either can miss one (a socket-activated sshd has no
  listening sshd process; `sshd -T` cannot see a port given with -p).
- the subnets this node is attached to, as the default for "cluster nodes"
  when the policy gives no node_cidrs: nodes of one cluster usually share a
  subnet, and the CNI's own interfaces are left out.
"""

from __future__ import annotations

import ipaddress
import os
import re

import psutil

from k3s_agent.controls.firewall.model import Network, collapse
from k3s_agent.controls.sshd import sshd_answer
from k3s_agent.controls.sshd_config import parse_effective
from k3s_agent.host import Host, HostError, read_capped

SSHD_CONFIG = "/etc/ssh/sshd_config"
# Interfaces created by K3s/flannel/CNI/containers: their subnets are not "nodes".
_CNI_IFACES = re.compile(r"^(lo|cni\d*|flannel.*|veth.*|cali.*|docker.*|kube-.*|tunl.*|vxlan.*|wg.*|br-.*)$")


def sshd_config_ports(host: Host) -> list[int]:
    """Ports from `sshd -T` (empty when sshd is missing or its config does not parse)."""
    sshd = host.which("sshd")
    if sshd is None:
        return []
    argv = ["-T"] + (["-f", host.path(SSHD_CONFIG)] if host.root != "/" else [])
    result = sshd_answer(host, sshd, argv)
    if result is None or result.returncode != 0:
        return []
    effective = parse_effective(result.stdout)
    ports = {int(p) for p in effective.get("port", []) if p.isdigit()}
    for address in effective.get("listenaddress", []):
        match = re.search(r":(\d+)$", address)
        if match:
            ports.add(int(match.group(1)))
    return sorted(ports)


def sshd_listening_ports(proc: str = "/proc") -> list[int]:
    """TCP ports an sshd process listens on (in the network namespace of that sshd).

    Only sshd processes' own sockets are mapped: psutil.net_connections()
    resolves every descriptor of every process, which grows with the
    containers on a node; reading each process's comm grows only with their count.
    """
    ports = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            name = read_capped(f"{proc}/{pid}/comm").decode(errors="replace").strip()
            if name != "sshd" and not name.startswith("sshd:"):
                continue
            connections = psutil.Process(int(pid)).connections(kind="tcp")
        except (OSError, HostError, psutil.Error):
            continue  # gone meanwhile, or not ours to read
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return sorted(ports)


def ssh_ports(host: Host, configured: list[int]) -> tuple[list[int], str]:
    """(ports, how they were found): configured + sshd -T + listening; 22 if nothing."""
    from_config = sshd_config_ports(host)
    listening = sshd_listening_ports(host.proc)
    ports = sorted(set(configured) | set(from_config) | set(listening))
    how = f"policy {configured}, sshd -T {from_config}, listening {listening}"
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
