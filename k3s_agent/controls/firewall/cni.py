"""Which CNI carries pod traffic between nodes, so the firewall opens what it needs from @nodes.

K3s's own flannel is named by K3s's config (`flannel-backend`, default
vxlan). With `flannel-backend: none` a CNI was installed separately; we
recognise it the way the container runtime picks it (libcni: the first
*.conf/*.conflist/*.json of the CNI config dir in lexical order) and, before
its config is written, by the interfaces it creates. What we cannot name is
"unknown": the control then refuses to enforce `default_input = "drop"`
rather than silently cut pod traffic between nodes.

Ports (cited where the profile items open them, 30-firewall.toml):
- flannel: docs.k3s.io installation/requirements, "Inbound Rules for K3s
  Nodes": 8472/udp VXLAN, 51820/udp WireGuard IPv4, 51821/udp WireGuard IPv6.
- Calico: docs.tigera.io, Calico "System requirements" / network
  requirements: BGP 179/tcp, IP-in-IP (IP protocol 4, Calico's default
  encapsulation), VXLAN 4789/udp, Typha 5473/tcp (incoming on Typha hosts).
- Cilium: docs.cilium.io, "System Requirements" / Firewall Rules: VXLAN
  8472/udp or Geneve 6081/udp (tunnel mode), health checks 4240/tcp;
  security/network/encryption-wireguard: WireGuard 51871/udp.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Iterable, Sequence
from typing import Optional

from k3s_agent.host import Host, HostError

CHOICES = ("auto", "flannel", "calico", "cilium", "none")
# Where the runtime reads CNI configs: /etc/cni/net.d for a separately
# installed CNI (K3s points containerd there when flannel is off), K3s's own
# dir while flannel runs (10-flannel.conflist).
CONF_DIRS = ("/etc/cni/net.d", "/var/lib/rancher/k3s/agent/etc/cni/net.d")
CONF_SUFFIXES = (".conf", ".conflist", ".json")  # libcni ConfFiles
CONF_LIMIT = 64 * 1024  # a CNI config is a few hundred bytes; anything huge is not one
MAX_FILES = 64  # bounded walk of a directory anyone with root may fill
# The `type` of a plugin in a CNI config -> the CNI it belongs to.
PLUGIN_TYPES = {"calico": "calico", "cilium-cni": "cilium", "flannel": "flannel"}
FLANNEL_CONDITIONS = {"vxlan", "wireguard"}
OTHER = "other"
UNKNOWN = (
    "unknown CNI: pod traffic between nodes would be cut; name its ports in "
    '[controls.firewall] items or set cni = "flannel" | "calico" | "cilium" | "none"'
)


@dataclasses.dataclass(frozen=True)
class Cni:
    """The CNI in use: name (flannel | calico | cilium | none | unknown), its mode, and why we think so.

    mode: flannel's backend (vxlan, wireguard-native, host-gw, ...); Cilium's
    tunnel (vxlan, geneve, or "vxlan+geneve" when its tunnel device is not up yet).
    """

    name: str
    mode: str = ""
    evidence: tuple[str, ...] = ()

    def conditions(self) -> set[str]:
        """The `when` conditions this CNI makes hold."""
        if self.name == "flannel":
            if self.mode == "vxlan":
                return {"vxlan"}
            return {"wireguard"} if self.mode.startswith("wireguard") else set()
        if self.name == "calico":
            return {"calico"}
        if self.name == "cilium":
            return {"cilium"} | {f"cilium-{tunnel}" for tunnel in self.mode.split("+") if tunnel}
        return set()

    def refusal(self, default_input: str) -> str:
        """Why a drop must not be enforced with this CNI ("" when it may)."""
        return UNKNOWN if self.name == "unknown" and default_input == "drop" else ""


def from_flannel(backend: str) -> Cni:
    """K3s's flannel as its config names it (no look at the host)."""
    if backend == "none":
        return Cni("unknown", evidence=("K3s flannel-backend: none",))
    return Cni("flannel", backend, (f"K3s flannel-backend: {backend}",))


def detect(
    host: Host, flannel_backend: str, choice: str = "auto", interfaces: Optional[Sequence[str]] = None
) -> Cni:
    """The CNI on this node: the policy's `cni` if not auto, else K3s's config, CNI files, interfaces.

    interfaces: this network namespace's (Host.net_interfaces) unless given.
    """
    interfaces = host.net_interfaces() if interfaces is None else interfaces
    if choice == "none":
        return Cni("none", evidence=('policy cni = "none"',))
    if choice == "flannel":
        backend = flannel_backend if flannel_backend != "none" else "vxlan"
        return Cni("flannel", backend, ('policy cni = "flannel"', f"backend {backend}"))
    if choice in ("calico", "cilium"):
        return _named(choice, interfaces, (f'policy cni = "{choice}"',))
    if flannel_backend != "none":
        return from_flannel(flannel_backend)
    found, evidence = from_conf_files(host)
    if found is None:  # no config written yet (the CNI's pods starting): its devices may tell
        found, seen = from_interfaces(interfaces)
        evidence += seen
    if found in ("calico", "cilium"):
        return _named(found, interfaces, ("K3s flannel-backend: none", *evidence))
    if found == "flannel":  # a flannel installed by hand (e.g. canal's or upstream's): VXLAN by default
        return Cni("flannel", "vxlan", ("K3s flannel-backend: none", *evidence))
    return Cni("unknown", evidence=("K3s flannel-backend: none", *evidence))


def _named(name: str, interfaces: Sequence[str], evidence: tuple[str, ...]) -> Cni:
    mode = cilium_tunnel(interfaces) if name == "cilium" else ""
    return Cni(name, mode, evidence)


def cilium_tunnel(interfaces: Iterable[str]) -> str:
    """Cilium's tunnel by its device (cilium_vxlan / cilium_geneve); both until one is up.

    Native routing has no tunnel device either: then both ports are open
    from @nodes only, which costs nothing a node can abuse.
    """
    found = [t for t in ("vxlan", "geneve") if f"cilium_{t}" in interfaces]
    return "+".join(found) if found else "vxlan+geneve"


def from_interfaces(interfaces: Iterable[str]) -> tuple[Optional[str], tuple[str, ...]]:
    """calico (cali*, tunl0, vxlan.calico) or cilium (cilium_*) by the devices they create."""
    for name in sorted(interfaces):
        if name.startswith("cali") or name in ("tunl0", "vxlan.calico", "vxlan-v6.calico"):
            return "calico", (f"interface {name}",)
        if name.startswith("cilium_"):
            return "cilium", (f"interface {name}",)
    return None, ()


def from_conf_files(host: Host) -> tuple[Optional[str], tuple[str, ...]]:
    """The CNI of the first CNI config file (lexical order, as libcni picks it), and what was seen.

    OTHER: that file names a CNI we do not know (interfaces then do not
    outvote it); None: no usable config file at all.

    Only regular files are read (a link is reported, never followed), at most
    CONF_LIMIT bytes each and MAX_FILES per directory.
    """
    evidence: list[str] = []
    for folder in CONF_DIRS:
        for name in _conf_names(host, folder, evidence):
            path = f"{folder}/{name}"
            kind, note = _conf_kind(host, path)
            evidence.append(note)
            if kind is not None:
                return kind, tuple(evidence)
            if not note.endswith(("not a regular file", "unreadable")):
                return OTHER, tuple(evidence)  # the runtime uses this file: a CNI we do not know
    return None, tuple(evidence)


def _conf_names(host: Host, folder: str, evidence: list[str]) -> list[str]:
    try:
        names = [n for n in host.listdir(folder) if n.endswith(CONF_SUFFIXES)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        evidence.append(f"{folder}: {exc.strerror}")
        return []
    if len(names) > MAX_FILES:
        evidence.append(f"{folder}: {len(names)} configs, only the first {MAX_FILES} read")
    return names[:MAX_FILES]


def _conf_kind(host: Host, path: str) -> tuple[Optional[str], str]:
    """(calico | cilium | flannel | None, a note for the evidence) for one config file."""
    try:
        mode = host.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            return None, f"{path}: not a regular file"  # a link is not followed
        text = host.read_text(path, limit=CONF_LIMIT) or ""
    except (HostError, OSError) as exc:
        return None, f"{path}: {exc}: unreadable"
    types = _plugin_types(text)
    for plugin in types:
        if plugin in PLUGIN_TYPES:
            return PLUGIN_TYPES[plugin], f"{path}: plugin {plugin}"
    return None, f"{path}: plugins {', '.join(types) or 'none found'}"


def _plugin_types(text: str) -> list[str]:
    """The `type` of each plugin of a .conflist (or of the one plugin of a .conf)."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    plugins = data.get("plugins") if isinstance(data.get("plugins"), list) else [data]
    return [str(p["type"]) for p in plugins if isinstance(p, dict) and isinstance(p.get("type"), str)]
