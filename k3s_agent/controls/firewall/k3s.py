"""What the firewall needs to know about K3s: its configured flags.

Resolved the way K3s resolves them (k3s_agent.k3s.config: the unit's
ExecStart and environment, $K3S_CONFIG_FILE / --config, config.yaml and
config.yaml.d/*.yaml in order, `key+:` appends, env-bound flags). With no K3s
unit on the node the config files alone are read, as for `k3s server`.
Policy options cluster_cidrs/node_cidrs override whatever is found.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from k3s_agent.controls.firewall.model import Network, collapse
from k3s_agent.host import Host, HostError
from k3s_agent.k3s.config import DEFAULT_CONFIG, ConfigError, Configured, configured
from k3s_agent.k3s.discovery import UNITS
from k3s_agent.k3s.unit import load_unit

CONFIG = DEFAULT_CONFIG
CONFIG_DIR = DEFAULT_CONFIG + ".d"
ETCD_DIR = "/var/lib/rancher/k3s/server/db/etcd"
# K3s defaults (docs.k3s.io, cli/server: --cluster-cidr, --service-cidr, --flannel-backend).
DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"
DEFAULT_SERVICE_CIDR = "10.43.0.0/16"
DEFAULT_FLANNEL = "vxlan"


@dataclasses.dataclass(frozen=True)
class K3sFacts:
    cluster_cidrs: tuple[Network, ...]
    service_cidrs: tuple[Network, ...]
    flannel_backend: str  # vxlan | wireguard-native | host-gw | none | ...
    etcd: bool  # embedded etcd (cluster-init, or an etcd data dir, and no external datastore)
    registry: bool  # embedded registry mirror (Spegel)
    sources: tuple[str, ...]  # what was read: the unit and config files
    problems: tuple[str, ...] = ()  # what could not be read

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
        if any(n.version == 6 for n in self.cluster_cidrs):
            held.add("ipv6")
        return held


def k3s_configuration(host: Host) -> tuple[Configured, list[str]]:
    """K3s's configured flags, and the unit file they came from (if any)."""
    for name in UNITS.values():
        unit = load_unit(host, name)
        if unit is not None and unit.role:
            return configured(host, unit.exec_start, unit.environment), [unit.fragment]
    return configured(host, ["k3s", "server"], {}), []


def read_facts(host: Host) -> K3sFacts:
    problems: list[str] = []
    try:
        conf, sources = k3s_configuration(host)
    except (ConfigError, HostError, OSError) as exc:
        problems.append(f"K3s config: {exc}")
        conf, sources = Configured(None, (), {}, (), CONFIG), []
    cluster = _cidrs(conf.values("cluster-cidr"), DEFAULT_CLUSTER_CIDR, problems)
    service = _cidrs(conf.values("service-cidr"), DEFAULT_SERVICE_CIDR, problems)
    external_db = bool(conf.value("datastore-endpoint"))
    etcd = not external_db and (_true(conf.value("cluster-init")) or host.is_dir(ETCD_DIR, follow=True))
    return K3sFacts(
        cluster_cidrs=cluster,
        service_cidrs=service,
        flannel_backend=conf.value("flannel-backend") or DEFAULT_FLANNEL,
        etcd=etcd,
        registry=_true(conf.value("embedded-registry")),
        sources=(*sources, *conf.files),
        problems=tuple(problems),
    )


def _true(value: object) -> bool:
    return str(value).lower() in ("true", "1", "t")  # Go's strconv.ParseBool spellings we meet


def _cidrs(values: tuple[str, ...], default: str, problems: list[str]) -> tuple[Network, ...]:
    # K3s takes comma-separated lists too (dual-stack: "10.42.0.0/16,2001:cafe:42::/56").
    texts = [t.strip() for value in values for t in value.split(",") if t.strip()]
    networks = []
    for text in texts or [default]:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            problems.append(f"K3s CIDR {text!r}: {exc}")
    return collapse(networks)
