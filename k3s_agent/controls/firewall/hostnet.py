"""Facts about this host's network that the ruleset depends on.

- the TCP ports sshd really listens on: `sshd -T` (the effective config,
  sshd(8) -T), the listening sockets owned by an sshd process (psutil) and
  the ListenStream= ports of an enabled ssh.socket/sshd.socket; the union,
  because each can miss one (a socket-activated sshd has no listening sshd
  process and systemd, not sshd_config, says where it listens; `sshd -T`
  cannot see a port given with -p).
- the subnets this node is attached to, as the default for "cluster nodes"
  when the policy gives no node_cidrs: nodes of one cluster usually share a
  subnet, and the CNI's own interfaces are left out.
"""

from __future__ import annotations

import ipaddress
import re

import psutil

from k3s_agent.controls.firewall.model import Network, collapse
from k3s_agent.controls.sshd import sshd_answer
from k3s_agent.controls.sshd_config import parse_effective
from k3s_agent.host import Host, HostError, proc_pids, read_capped
from k3s_agent.k3s.unit import UNIT_DIRS, parse_ini

SSHD_CONFIG = "/etc/ssh/sshd_config"
SOCKET_UNITS = ("ssh.socket", "sshd.socket")  # Debian/Ubuntu, Fedora/Arch
# Generators write units and drop-ins here (Ubuntu's sshd-socket-generator
# turns sshd_config's Port/ListenAddress into ssh.socket.d/addresses.conf);
# systemd.generator(7): generator.early > /etc > generator > /run > ... > generator.late.
_SOCKET_DIRS = (
    "/run/systemd/generator.early",
    *UNIT_DIRS[:1],
    "/run/systemd/generator",
    *UNIT_DIRS[1:],
    "/run/systemd/generator.late",
)
_WANTS = ("/etc/systemd/system/sockets.target.wants", "/usr/lib/systemd/system/sockets.target.wants")
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
    ports.update(p for p in map(listen_address_port, effective.get("listenaddress", [])) if p)
    return sorted(ports)


def listen_address_port(value: str) -> int:
    """The port of one `sshd -T` listenaddress value; 0 if none.

    "[::]:2222" or "10.0.0.1:2222", then " rdomain NAME" when one is set
    (OpenSSH servconf.c, format_listen_addrs): a port at the very end only
    would miss a ListenAddress with an rdomain.
    """
    match = re.match(r"\S*:(\d+)(?:\s|$)", value)
    return int(match.group(1)) if match else 0


def sshd_listening_ports(proc: str = "/proc") -> list[int]:
    """TCP ports an sshd process listens on (in the network namespace of that sshd).

    Only sshd processes' own sockets are mapped: psutil.net_connections()
    resolves every descriptor of every process, which grows with the
    containers on a node; reading each process's comm grows only with their count.
    """
    ports = set()
    for pid in proc_pids(proc):
        try:
            name = read_capped(f"{proc}/{pid}/comm").decode(errors="replace").strip()
            if name != "sshd" and not name.startswith("sshd:"):
                continue
            connections = psutil.Process(pid).connections(kind="tcp")
        except (OSError, HostError, psutil.Error):
            continue  # gone meanwhile, or not ours to read
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return sorted(ports)


def socket_unit_ports(host: Host) -> list[int]:
    """TCP ports of an enabled ssh.socket/sshd.socket (ListenStream=, drop-ins applied).

    systemd.socket(5): ListenStream= is a port, ADDRESS:PORT or [V6]:PORT (a
    path or @name is a UNIX socket); an empty value resets the list. Drop-ins
    apply in file-name order, the first directory of the load path winning a name.
    """
    ports: set[int] = set()
    for unit in SOCKET_UNITS:
        if not any(host.exists(f"{wants}/{unit}") for wants in _WANTS):
            continue  # installed but not enabled: systemd does not listen for it
        listen: list[str] = []
        for path in _unit_files(host, unit):
            try:
                text = host.read_text(path) or ""
            except (HostError, OSError):
                continue  # masked (a link to /dev/null) or unreadable
            for section, key, value in parse_ini(text):
                if section == "Socket" and key == "ListenStream":
                    listen = [] if not value else [*listen, value]
        ports.update(p for p in map(_stream_port, listen) if p)
    return sorted(ports)


def _stream_port(value: str) -> int:
    """The TCP port of one ListenStream= value; 0 for a UNIX or vsock socket."""
    match = re.fullmatch(r"(?:.*:)?(\d{1,5})", value)
    if value.startswith(("/", "@", "vsock:")) or not match:
        return 0
    port = int(match.group(1))
    return port if 1 <= port <= 65535 else 0


def _unit_files(host: Host, unit: str) -> list[str]:
    """The unit's fragment (first in the load path), then its drop-ins in file-name order."""
    fragment = next((f"{d}/{unit}" for d in _SOCKET_DIRS if host.exists(f"{d}/{unit}")), None)
    dropins: dict[str, str] = {}
    for folder in _SOCKET_DIRS:
        for name in host.glob(f"{folder}/{unit}.d", "*.conf"):
            dropins.setdefault(name, f"{folder}/{unit}.d/{name}")
    return ([fragment] if fragment else []) + [dropins[name] for name in sorted(dropins)]


def ssh_ports(host: Host, configured: list[int]) -> tuple[list[int], str]:
    """(ports, how they were found): configured + sshd -T + listening + ssh.socket; 22 if nothing."""
    from_config = sshd_config_ports(host)
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
