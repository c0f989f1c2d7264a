"""What the controls need to know about K3s on this node, in one place.

Resolved the way K3s resolves its configuration (k3s_agent.k3s.config: the
unit's ExecStart and environment, $K3S_CONFIG_FILE / --config, config.yaml and
config.yaml.d/*.yaml in order, `key+:` appends, env-bound flags). With no K3s
unit on the node the config files alone are read, as for `k3s server`.
Every control that asks "is this cluster dual-stack?", "which CIDRs?" or
"where is the data dir?" reads it here, so the answers agree. A policy may
still override a fact (the firewall's cluster_cidrs/node_cidrs, sysctl's
dual_stack); that is the control's business.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional, Union

from k3s_agent.host import Host, HostError
from k3s_agent.k3s.config import DEFAULT_CONFIG, ConfigError, Configured, configured
from k3s_agent.k3s.discovery import UNITS
from k3s_agent.k3s.unit import load_unit
from k3s_agent.netaddr import Network, collapse

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

CONFIG = DEFAULT_CONFIG
CONFIG_DIR = DEFAULT_CONFIG + ".d"
# K3s defaults (docs.k3s.io, cli/server: --cluster-cidr, --service-cidr, --flannel-backend, --data-dir).
DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"
DEFAULT_SERVICE_CIDR = "10.43.0.0/16"
DEFAULT_FLANNEL = "vxlan"
DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
ETCD_SUBDIR = "server/db/etcd"  # under the data dir: embedded etcd has run here


@dataclasses.dataclass(frozen=True)
class K3sFacts:
    cluster_cidrs: tuple[Network, ...]
    service_cidrs: tuple[Network, ...]
    flannel_backend: str  # vxlan | wireguard-native | host-gw | none | ...
    etcd: bool  # embedded etcd (cluster-init, or an etcd data dir, and no external datastore)
    registry: bool  # embedded registry mirror (Spegel)
    sources: tuple[str, ...]  # what was read: the unit and config files
    problems: tuple[str, ...] = ()  # what could not be read
    role: Optional[str] = None  # server | agent | None (no K3s unit: config files read as for server)
    data_dir: str = DEFAULT_DATA_DIR
    node_ips: tuple[Address, ...] = ()  # --node-ip, as configured (none: K3s picks one)

    @property
    def dual_stack(self) -> bool:
        """Pods get IPv6 addresses: an IPv6 cluster CIDR (dual-stack, or IPv6-only)."""
        return any(n.version == 6 for n in self.cluster_cidrs)

    def conditions(self) -> set[str]:
        """The `when` conditions that hold on this node."""
        held = set()
        if self.etcd:
            held.add("etcd")
        if self.flannel_backend == "vxlan":
            held.add("vxlan")
        if self.flannel_backend.startswith("wireguard"):
            held.add("wireguard")
        if self.registry:
            held.add("registry")
        if self.dual_stack:
            held.add("ipv6")
        return held


def k3s_configuration(host: Host) -> tuple[Configured, list[str]]:
    """K3s's configured flags, and the unit file they came from (if any)."""
    for name in UNITS.values():
        unit = load_unit(host, name)
        if unit is not None and unit.role:
            return configured(host, unit.exec_start, unit.environment), [unit.fragment]
    return configured(host, ["k3s", "server"], {}), []


def data_dir(conf: Configured) -> str:
    """--data-dir (or -d) as configured, else K3s's default."""
    return conf.value("data-dir") or conf.value("d") or DEFAULT_DATA_DIR


def read_facts(host: Host) -> K3sFacts:
    """The facts; never raises: what cannot be read is named in `problems`, K3s's defaults stand in."""
    problems: list[str] = []
    try:
        conf, sources = k3s_configuration(host)
    except (ConfigError, HostError, OSError) as exc:
        problems.append(f"K3s config: {exc}")
        conf, sources = Configured(None, (), {}, (), CONFIG), []
    cluster = _cidrs(conf.values("cluster-cidr"), DEFAULT_CLUSTER_CIDR, problems)
    service = _cidrs(conf.values("service-cidr"), DEFAULT_SERVICE_CIDR, problems)
    node_ips = _addresses(conf.values("node-ip"), problems)
    data = data_dir(conf)
    external_db = bool(conf.value("datastore-endpoint"))
    etcd_dir = f"{data}/{ETCD_SUBDIR}"
    etcd = not external_db and (_true(conf.value("cluster-init")) or host.is_dir(etcd_dir, follow=True))
    return K3sFacts(
        cluster_cidrs=cluster,
        service_cidrs=service,
        flannel_backend=conf.value("flannel-backend") or DEFAULT_FLANNEL,
        etcd=etcd,
        registry=_true(conf.value("embedded-registry")),
        sources=(*sources, *conf.files),
        problems=tuple(problems),
        role=conf.role,
        data_dir=data,
        node_ips=node_ips,
    )


def _true(value: object) -> bool:
    return str(value).lower() in ("true", "1", "t")  # Go's strconv.ParseBool spellings we meet


def _split(values: tuple[str, ...]) -> list[str]:
    # K3s takes comma-separated lists too (dual-stack: "10.42.0.0/16,2001:cafe:42::/56").
    return [t.strip() for value in values for t in value.split(",") if t.strip()]


def _cidrs(values: tuple[str, ...], default: str, problems: list[str]) -> tuple[Network, ...]:
    networks = []
    for text in _split(values) or [default]:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            problems.append(f"K3s CIDR {text!r}: {exc}")
    return collapse(networks)


def _addresses(values: tuple[str, ...], problems: list[str]) -> tuple[Address, ...]:
    found = []
    for text in _split(values):
        try:
            found.append(ipaddress.ip_address(text))
        except ValueError as exc:
            problems.append(f"K3s node-ip {text!r}: {exc}")
    return tuple(found)
