"""Firewall policy: values, K3s facts, the desired ruleset, the lock-out guard, load-time lints."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

import pytest

from k3s_agent.controls.firewall import desired, guard
from k3s_agent.controls.firewall.control import FirewallControl
from k3s_agent.controls.firewall.model import (
    Rule,
    Ruleset,
    check_name,
    check_source,
    merge_ranges,
    parse_range,
)
from k3s_agent.host import Host
from k3s_agent.k3s import facts as k3s
from k3s_agent.policy.loader import Layer, compose, load_policy
from k3s_agent.policy.schema import PolicyError
from tests.support.fwcontrol import facts

N = ipaddress.ip_network


def test_port_ranges() -> None:
    assert parse_range(22) == (22, 22)
    assert parse_range("2379-2380") == (2379, 2380)
    assert parse_range("51820:51821") == (51820, 51821)
    for bad in ("0", "70000", "10-5", "ssh", "1-2-3"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert merge_ranges([(22, 22), (2379, 2380), (2380, 2381), (23, 23)]) == ((22, 23), (2379, 2381))


def test_names_and_sources() -> None:
    assert check_name("established") and "built-in" in check_name("established")
    assert check_name("Bad Name")
    assert check_name("web-8080") is None
    assert check_source("@nodes") is None and check_source("any") is None
    assert "not a CIDR" in check_source("10.0.0.1/8")  # host bits set: a typo, refused
    assert check_source("@everyone")


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_k3s_facts_from_config_files(root: Path) -> None:
    host = Host(root=str(root))
    assert k3s.read_facts(host).cluster_cidrs == (N("10.42.0.0/16"),)  # K3s defaults
    assert k3s.read_facts(host).conditions() == {"vxlan"}
    write(root, k3s.CONFIG, "cluster-cidr: 10.50.0.0/16,fd50::/56\ncluster-init: true\n")
    write(
        root, k3s.CONFIG_DIR + "/10-net.yaml", "flannel-backend: wireguard-native\nembedded-registry: true\n"
    )
    write(root, k3s.CONFIG_DIR + "/20-more.yml", "cluster-cidr+: [10.60.0.0/16]\n")
    found = k3s.read_facts(host)
    assert found.cluster_cidrs == (N("10.50.0.0/16"), N("10.60.0.0/16"), N("fd50::/56"))
    assert found.conditions() == {"etcd", "wireguard", "registry", "ipv6"}
    assert found.sources == (k3s.CONFIG, k3s.CONFIG_DIR + "/10-net.yaml", k3s.CONFIG_DIR + "/20-more.yml")
    write(root, k3s.CONFIG_DIR + "/30-db.yaml", "datastore-endpoint: postgres://db\n")
    assert not k3s.read_facts(host).etcd  # an external datastore: no etcd ports
    write(root, k3s.CONFIG_DIR + "/40-broken.yaml", "a: [\n")
    assert "40-broken.yaml" in k3s.read_facts(host).problems[0]


def server_section(root: Path):
    return load_policy(Host(root=str(root)), profile="k3s-cis-server").controls["firewall"]


def test_server_profile_ruleset(root: Path) -> None:
    inputs = desired.Inputs(facts(), (22, 2222), (N("192.168.1.0/24"),))
    ruleset = desired.build(server_section(root), inputs)
    names = ruleset.names()
    assert names[:6] == ["established", "loopback", "localnet-martian", "icmp", "dhcpv6-client", "ssh"]
    assert names.index("k3s-api") < names.index("kubelet") < names.index("pods-to-host")
    assert names[-1] == "log-dropped"
    by = {r.name: r for r in ruleset.rules}
    assert by["ssh"].ports == ((22, 22), (2222, 2222)) and by["ssh"].sources == ()
    assert by["etcd"].ports == ((2379, 2380),) and not by["etcd"].inactive
    assert by["flannel-vxlan"].sources == (N("192.168.1.0/24"),)  # @nodes from local subnets
    assert "wireguard" in by["flannel-wireguard"].inactive
    assert by["kubelet"].sources == (N("10.42.0.0/16"), N("192.168.1.0/24"), N("fd42::/56"))
    assert ruleset.default_input == "drop"


def test_agent_profile_has_no_server_ports(root: Path) -> None:
    section = load_policy(Host(root=str(root)), profile="k3s-cis-agent").controls["firewall"]
    names = desired.build(section, desired.Inputs(facts(), (22,), ())).names()
    assert "k3s-api" not in names and "etcd" not in names and "kubelet" in names


def test_nodes_unknown_means_rule_opens_nothing(root: Path) -> None:
    ruleset = desired.build(server_section(root), desired.Inputs(facts(), (22,), ()))
    vxlan = next(r for r in ruleset.rules if r.name == "flannel-vxlan")
    assert vxlan.inactive == "no sources: @nodes resolved to nothing"
    assert vxlan not in ruleset.active()


def test_guard_walks_rules_in_order() -> None:
    # (the full table is tests/unit/test_firewall_guard.py)
    ssh = Rule("ssh", proto="tcp", ports=((22, 22),))
    head = desired.head_rules()
    ok = Ruleset((*head, ssh))
    nics = ["lo", "ens3"]
    assert guard.lockout_problems(ok, [22], [N("0.0.0.0/0"), N("::/0")], nics) == []
    assert guard.lockout_problems(ok, [2222], [N("10.0.0.0/8")], nics) == [
        "ssh port 2222 from 10.0.0.0/8 on ens3 would be dropped by the default policy (default_input = drop)"
    ]
    deny = Rule("deny", action="reject", sources=(N("10.1.0.0/16"),))
    shadowed = Ruleset((*head, deny, ssh))
    assert guard.lockout_problems(shadowed, [22], [N("10.0.0.0/8")], nics) == [
        "ssh port 22 from 10.0.0.0/8 on ens3 would be rejected by item 'deny'"
    ]


def local_policy(root: Path, text: str) -> Path:
    path = root / "etc/k3s-agentd/policy.toml"
    path.write_text('version = 1\nextends = "k3s-cis-server"\n' + text)
    os.chmod(path, 0o644)
    return path


def test_lint_refuses_a_policy_without_ssh(root: Path) -> None:
    path = local_policy(root, '[controls.firewall]\ndisable = ["ssh"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy(Host(root=str(root)), path=str(path))
    message = str(info.value)
    # (the port is whatever sshd listens on here, 22 when none is found)
    refused = r"controls\.firewall: lock-out guard refused the ruleset: ssh port \d+ from 0\.0\.0\.0/0 on "
    assert re.search(refused, message)
    assert "allow_lockout = true" in message
    path = local_policy(root, '[controls.firewall]\ndisable = ["ssh"]\nallow_lockout = true\n')
    assert "ssh" not in load_policy(Host(root=str(root)), path=str(path)).controls["firewall"].items


def test_bad_values_name_file_and_key(root: Path) -> None:
    path = local_policy(
        root,
        '[controls.firewall]\nnode_cidrs = ["10.0.0.300/24"]\nbackend = "pf"\n'
        '[controls.firewall.items.established]\nproto = "tcp"\n'
        "[controls.firewall.items.web]\nports = [8080]\n",
    )
    with pytest.raises(PolicyError) as info:
        load_policy(Host(root=str(root)), path=str(path))
    message = str(info.value)
    assert f"{path}: controls.firewall.node_cidrs: [0]: '10.0.0.300/24' is not a CIDR" in message
    assert f"{path}: controls.firewall.backend: must be one of" in message
    assert "controls.firewall.items.established: 'established' is a built-in rule name" in message
    path = local_policy(root, "[controls.firewall.items.web]\nports = [8080]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(Host(root=str(root)), path=str(path))
    assert 'controls.firewall.items.web: ports need proto = "tcp" or "udp"' in str(info.value)


def test_no_firewall_section_enforces_and_touches_nothing(root: Path) -> None:
    policy = compose(Host(root=str(root)), [Layer("x.toml", {"extends": "none"})])
    section = policy.controls["firewall"]
    assert not desired.configured(section)
    control = FirewallControl(section, Host(root=str(root)))
    found = control.check()
    assert [(f.key, f.status.value) for f in found] == [("firewall", "absent")]
    assert control.backend is None and control.choice is None  # not even detection ran
    assert control.describe() == {"configured": False}
    # a section that sets items but not default_input accepts what it does not name
    section = load_policy(Host(root=str(root)), profile="k3s-cis-agent").controls["firewall"]
    options = {k: v for k, v in section.options.items() if k != "default_input"}
    ruleset = desired.build(dataclasses.replace(section, options=options), desired.Inputs(facts(), (22,), ()))
    assert ruleset.default_input == "accept"


def test_rooted_run_in_the_host_netns_never_changes_the_firewall(root: Path) -> None:
    # This test process runs in the host's network namespace: a Host(root=tmp)
    # firewall apply must refuse, before any backend is even chosen.
    from k3s_agent.host import in_initial_netns
    from k3s_agent.model import Finding, Status
    from tests.support.fwcontrol import make_control

    if not in_initial_netns():
        pytest.skip("the suite itself runs inside a network namespace")
    control = make_control(root, "nftables")
    results = control.apply([Finding("firewall", "ssh", Status.DRIFT)])
    assert results[0].status is Status.UNSUPPORTED and "real host" in results[0].message
    assert control.backend is None


def test_k3s_facts_include_unit_flags(root: Path) -> None:
    write(
        root,
        "/etc/systemd/system/k3s.service",
        "[Service]\nExecStart=/usr/local/bin/k3s server --flannel-backend=wireguard-native \\\n"
        "    --cluster-cidr 10.70.0.0/16 --datastore-endpoint=postgres://db\n",
    )
    write(root, k3s.CONFIG, "cluster-init: true\nembedded-registry: true\n")
    found = k3s.read_facts(Host(root=str(root)))
    assert found.cluster_cidrs == (N("10.70.0.0/16"),)
    assert found.conditions() == {"wireguard", "registry"}  # external datastore: no etcd
    assert found.sources == ("/etc/systemd/system/k3s.service", k3s.CONFIG)


def test_read_only_host_never_applies(root: Path) -> None:
    from k3s_agent.model import Finding, Status
    from tests.support.fwcontrol import make_control

    control = make_control(root, "nftables")
    control.host = Host(root=str(root), read_only=True)
    results = control.apply([Finding("firewall", "ssh", Status.DRIFT, message="rule missing")])
    assert results[0].status is Status.DRIFT and "read-only run" in results[0].message
