"""CNI detection (K3s config + CNI config files under a temp root) and the ruleset each CNI gets."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.controls.firewall import cni, desired
from k3s_agent.controls.firewall.model import IPIP
from k3s_agent.controls.firewall.nft import canon, expressions
from k3s_agent.host import Host
from k3s_agent.k3s import facts as k3s
from k3s_agent.policy.loader import load_policy
from tests.support.fwcontrol import facts

ETC = "/etc/cni/net.d"
K3S_DIR = "/var/lib/rancher/k3s/agent/etc/cni/net.d"


def conflist(*types: str) -> str:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": t} for t in types]}
    )


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


CALICO = conflist("calico", "bandwidth", "portmap")
CILIUM = conflist("cilium-cni")

# name: (K3s config.yaml, {CNI conf file: text}, interfaces, policy cni, (name, mode, conditions))
CASES: dict[str, tuple[str, dict[str, str], list[str], str, tuple[str, str, set[str]]]] = {
    "no K3s config: flannel vxlan": ("", {}, [], "auto", ("flannel", "vxlan", {"vxlan"})),
    "flannel vxlan named": ("flannel-backend: vxlan\n", {}, [], "auto", ("flannel", "vxlan", {"vxlan"})),
    "flannel wireguard-native": (
        "flannel-backend: wireguard-native\n",
        {},
        [],
        "auto",
        ("flannel", "wireguard-native", {"wireguard"}),
    ),
    "flannel host-gw: nothing extra": (
        "flannel-backend: host-gw\n",
        {},
        [],
        "auto",
        ("flannel", "host-gw", set()),
    ),
    "flannel config present, K3s says vxlan": (
        "",
        {f"{K3S_DIR}/10-flannel.conflist": conflist("flannel", "portmap")},
        [],
        "auto",
        ("flannel", "vxlan", {"vxlan"}),
    ),
    "calico by conflist (seed guide)": (
        "flannel-backend: none\ndisable-network-policy: true\n",
        {f"{ETC}/10-calico.conflist": CALICO},
        [],
        "auto",
        ("calico", "", {"calico"}),
    ),
    "calico by interfaces only": (
        "flannel-backend: none\n",
        {},
        ["lo", "ens3", "cali1a2b3c", "tunl0"],
        "auto",
        ("calico", "", {"calico"}),
    ),
    "calico vxlan.calico device": (
        "flannel-backend: none\n",
        {},
        ["lo", "vxlan.calico"],
        "auto",
        ("calico", "", {"calico"}),
    ),
    "cilium, tunnel not up yet: both": (
        "flannel-backend: none\n",
        {f"{ETC}/05-cilium.conflist": CILIUM},
        ["lo", "ens3"],
        "auto",
        ("cilium", "vxlan+geneve", {"cilium", "cilium-vxlan", "cilium-geneve"}),
    ),
    "cilium vxlan": (
        "flannel-backend: none\n",
        {f"{ETC}/05-cilium.conflist": CILIUM},
        ["cilium_host", "cilium_net", "cilium_vxlan"],
        "auto",
        ("cilium", "vxlan", {"cilium", "cilium-vxlan"}),
    ),
    "cilium geneve by interfaces only": (
        "flannel-backend: none\n",
        {},
        ["cilium_host", "cilium_geneve"],
        "auto",
        ("cilium", "geneve", {"cilium", "cilium-geneve"}),
    ),
    "unknown: none and nothing": (
        "flannel-backend: none\n",
        {},
        ["lo", "ens3"],
        "auto",
        ("unknown", "", set()),
    ),
    "unknown: bridge conflist": (
        "flannel-backend: none\n",
        {f"{ETC}/10-bridge.conflist": conflist("bridge", "portmap")},
        ["cali0"],  # the runtime uses the first config: an interface does not outvote it
        "auto",
        ("unknown", "", set()),
    ),
    "unknown: multus first in lexical order": (
        "flannel-backend: none\n",
        {f"{ETC}/00-multus.conf": json.dumps({"type": "multus"}), f"{ETC}/10-calico.conflist": CALICO},
        [],
        "auto",
        ("unknown", "", set()),
    ),
    "unknown: broken json": (
        "flannel-backend: none\n",
        {f"{ETC}/10-calico.conflist": "{not json"},
        [],
        "auto",
        ("unknown", "", set()),
    ),
    "other files ignored": (
        "flannel-backend: none\n",
        {f"{ETC}/README": "calico", f"{ETC}/calico-kubeconfig": "x", f"{ETC}/10-calico.conflist": CALICO},
        [],
        "auto",
        ("calico", "", {"calico"}),
    ),
    "too large: not read, next file": (
        "flannel-backend: none\n",
        {f"{ETC}/01-huge.conflist": " " * (cni.CONF_LIMIT + 1), f"{ETC}/05-cilium.conflist": CILIUM},
        ["cilium_vxlan"],
        "auto",
        ("cilium", "vxlan", {"cilium", "cilium-vxlan"}),
    ),
    "policy cni = calico over flannel vxlan": ("", {}, [], "calico", ("calico", "", {"calico"})),
    "policy cni = cilium": (
        "",
        {},
        ["cilium_geneve"],
        "cilium",
        ("cilium", "geneve", {"cilium", "cilium-geneve"}),
    ),
    "policy cni = none": ("flannel-backend: none\n", {}, [], "none", ("none", "", set())),
    "policy cni = flannel with backend none: vxlan": (
        "flannel-backend: none\n",
        {},
        [],
        "flannel",
        ("flannel", "vxlan", {"vxlan"}),
    ),
    "policy cni = flannel keeps K3s's backend": (
        "flannel-backend: wireguard-native\n",
        {},
        [],
        "flannel",
        ("flannel", "wireguard-native", {"wireguard"}),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_detection(root: Path, case: str) -> None:
    config, files, interfaces, choice, (name, mode, conditions) = CASES[case]
    if config:
        put(root, k3s.CONFIG, config)
    for rel, text in files.items():
        put(root, rel, text)
    host = Host(root=str(root))
    found = cni.detect(host, k3s.read_facts(host).flannel_backend, choice, interfaces)
    assert (found.name, found.mode, found.conditions()) == (name, mode, conditions), found
    assert found.evidence  # always says why
    assert bool(found.refusal("drop")) == (name == "unknown")
    assert not found.refusal("accept")


def test_conf_link_is_not_followed(root: Path) -> None:
    put(root, "/opt/elsewhere/calico.conflist", CALICO)
    (root / "etc/cni/net.d").mkdir(parents=True)
    os.symlink(str(root / "opt/elsewhere/calico.conflist"), root / "etc/cni/net.d/10-calico.conflist")
    found = cni.detect(Host(root=str(root)), "none", "auto", [])
    assert found.name == "unknown"
    assert any("not a regular file" in e for e in found.evidence), found.evidence


def test_unknown_reason_names_the_way_out() -> None:
    reason = cni.Cni("unknown").refusal("drop")
    assert reason.startswith("unknown CNI: pod traffic between nodes would be cut")
    assert "[controls.firewall] items" in reason and 'cni = "flannel"' in reason


def _ports(ruleset, name: str) -> Optional[tuple]:
    rule = next((r for r in ruleset.active() if r.name == name), None)
    return None if rule is None else (rule.proto, rule.ports)


NETWORK_ITEMS = (
    "flannel-vxlan",
    "flannel-wireguard",
    "flannel-wireguard-v6",
    "calico-bgp",
    "calico-ipip",
    "calico-vxlan",
    "calico-typha",
    "cilium-health",
    "cilium-vxlan",
    "cilium-geneve",
    "cilium-wireguard",
)
# (CNI, mode, dual-stack cluster-cidr) -> the profile's active network items: proto, ports.
RULESETS = {
    ("flannel", "vxlan", False): {"flannel-vxlan": ("udp", ((8472, 8472),))},
    ("flannel", "wireguard-native", False): {"flannel-wireguard": ("udp", ((51820, 51820),))},
    ("flannel", "wireguard-native", True): {
        "flannel-wireguard": ("udp", ((51820, 51820),)),
        "flannel-wireguard-v6": ("udp", ((51821, 51821),)),
    },
    ("flannel", "host-gw", True): {},
    ("calico", "", False): {
        "calico-bgp": ("tcp", ((179, 179),)),
        "calico-ipip": ("ipip", ()),
        "calico-vxlan": ("udp", ((4789, 4789),)),
        "calico-typha": ("tcp", ((5473, 5473),)),
    },
    ("cilium", "vxlan", False): {
        "cilium-health": ("tcp", ((4240, 4240),)),
        "cilium-vxlan": ("udp", ((8472, 8472),)),
        "cilium-wireguard": ("udp", ((51871, 51871),)),
    },
    ("cilium", "vxlan+geneve", False): {
        "cilium-health": ("tcp", ((4240, 4240),)),
        "cilium-vxlan": ("udp", ((8472, 8472),)),
        "cilium-geneve": ("udp", ((6081, 6081),)),
        "cilium-wireguard": ("udp", ((51871, 51871),)),
    },
    ("none", "", True): {},
    ("unknown", "", False): {},
}


@pytest.mark.parametrize("key", list(RULESETS), ids=lambda k: "-".join(str(p) for p in k))
def test_ruleset_per_cni(root: Path, key: tuple[str, str, bool]) -> None:
    name, mode, dual = key
    section = load_policy(Host(root=str(root)), profile="k3s-cis-agent").controls["firewall"]
    cluster = (ipaddress.ip_network("10.42.0.0/16"),) + ((ipaddress.ip_network("fd42::/56"),) if dual else ())
    inputs = desired.Inputs(
        facts(cluster_cidrs=cluster), (22,), (ipaddress.ip_network("10.0.0.0/24"),), cni.Cni(name, mode)
    )
    ruleset = desired.build(section, inputs)
    opened = {n: _ports(ruleset, n) for n in NETWORK_ITEMS if _ports(ruleset, n) is not None}
    assert opened == RULESETS[key]
    for rule in ruleset.active():
        if rule.name in opened:
            assert rule.sources == (ipaddress.ip_network("10.0.0.0/24"),)  # @nodes only


def test_fixed_inputs_without_cni_follow_k3s_flannel() -> None:
    inputs = desired.Inputs(facts(flannel_backend="host-gw"), (22,), ())
    assert inputs.network().name == "flannel" and "vxlan" not in inputs.conditions()
    unknown = dataclasses.replace(inputs, k3s=facts(flannel_backend="none"))
    assert unknown.network().name == "unknown"


def test_ipip_renders_protocol_4_and_reads_back_by_name() -> None:
    section = load_policy(Host(root="/nonexistent-root"), profile="k3s-cis-agent").controls["firewall"]
    inputs = desired.Inputs(facts(), (22,), (ipaddress.ip_network("10.0.0.0/24"),), cni.Cni("calico"))
    rule = next(r for r in desired.build(section, inputs).active() if r.name == "calico-ipip")
    exprs = expressions(rule, 4)
    number = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": IPIP}}
    assert number in exprs
    by_name = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "ipencap"}}
    listed = [by_name if e == number else e for e in exprs]
    assert canon(listed) == canon(exprs)  # nft lists 4 as /etc/protocols' "ipencap": no false drift
    other = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "ipip"}}  # 94 to nft
    assert canon([other if e == number else e for e in exprs]) != canon(exprs)
