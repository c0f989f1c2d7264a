"""What the firewall needs to know about K3s, read from K3s's own config files.

K3s reads /etc/rancher/k3s/config.yaml, then config.yaml.d/*.yaml|*.yml in
lexical order; a later file overrides a key, `key+:` appends to a list
(docs.k3s.io, installation/configuration#configuration-file). Flags given on
the k3s command line are not read here (the k3s_args control owns those);
policy options cluster_cidrs/node_cidrs override whatever is found.
"""

from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
from typing import Any

import yaml

from k3s_agent.controls.firewall.model import Network, collapse
from k3s_agent.host import Host, HostError

CONFIG = "/etc/rancher/k3s/config.yaml"
CONFIG_DIR = "/etc/rancher/k3s/config.yaml.d"
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
    sources: tuple[str, ...]  # config files read
    problems: tuple[str, ...] = ()  # files that could not be parsed

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


def config_files(host: Host) -> list[str]:
    found = [CONFIG] if os.path.lexists(host.path(CONFIG)) else []
    names = set()
    for pattern in ("*.yaml", "*.yml"):
        names.update(
            os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(host.path(CONFIG_DIR)), pattern))
        )
    return found + [f"{CONFIG_DIR}/{name}" for name in sorted(names)]


def merged_config(host: Host) -> tuple[dict[str, Any], list[str], list[str]]:
    merged: dict[str, Any] = {}
    read, problems = [], []
    for path in config_files(host):
        try:
            data = yaml.safe_load(host.read_text(path) or "") or {}
        except (HostError, yaml.YAMLError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: not a YAML mapping")
            continue
        read.append(path)
        for key, value in data.items():
            key = str(key)
            if key.endswith("+"):
                base = key[:-1]
                merged[base] = _as_list(merged.get(base)) + _as_list(value)
            else:
                merged[key] = value
    return merged, read, problems


def read_facts(host: Host) -> K3sFacts:
    config, read, problems = merged_config(host)
    cluster = _cidrs(config.get("cluster-cidr"), DEFAULT_CLUSTER_CIDR, problems)
    service = _cidrs(config.get("service-cidr"), DEFAULT_SERVICE_CIDR, problems)
    external_db = bool(config.get("datastore-endpoint"))
    etcd = not external_db and (_truthy(config.get("cluster-init")) or os.path.isdir(host.path(ETCD_DIR)))
    return K3sFacts(
        cluster_cidrs=cluster,
        service_cidrs=service,
        flannel_backend=str(config.get("flannel-backend") or DEFAULT_FLANNEL),
        etcd=etcd,
        registry=_truthy(config.get("embedded-registry")),
        sources=tuple(read),
        problems=tuple(problems),
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _cidrs(value: Any, default: str, problems: list[str]) -> tuple[Network, ...]:
    # K3s takes a comma-separated list (dual-stack: "10.42.0.0/16,2001:cafe:42::/56").
    texts = [t.strip() for item in _as_list(value) for t in str(item).split(",") if t.strip()]
    networks = []
    for text in texts or [default]:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            problems.append(f"K3s CIDR {text!r}: {exc}")
    return collapse(networks)
