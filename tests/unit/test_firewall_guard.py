"""The firewall lock-out guard, table-driven: which rulesets keep SSH open on which node.

Each case is a ruleset (the fixed head rules, then the case's rules), the
node's interfaces as the kernel names them, the sshd ports and the management
networks, and the exact refusal lines expected ([] = let through).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from k3s_agent.controls.firewall import desired, guard, hostnet
from k3s_agent.controls.firewall.model import Rule, Ruleset, check_interface
from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.schema import PolicyError
from k3s_agent.sshd import facts as sshd_facts


def N(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


ANY = (N("0.0.0.0/0"), N("::/0"))
V4 = (N("10.0.0.0/8"),)
V6 = (N("fd00::/8"),)
SSH = Rule("ssh", proto="tcp", ports=((22, 22),))


def ssh(**changes: object) -> Rule:
    return dataclasses.replace(SSH, **changes)


def drop(name: str, **changes: object) -> Rule:
    return Rule(name, action="drop", **changes)


@dataclasses.dataclass(frozen=True)
class Case:
    rules: tuple[Rule, ...]
    expected: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ("lo", "ens3")
    ports: tuple[int, ...] = (22,)
    management: tuple = ANY
    default: str = "drop"
    head: bool = True


def blocked(
    what: str, ifaces: str, how: str = "dropped", by: str = "the default policy (default_input = drop)"
) -> str:
    return f"{what} on {ifaces} would be {how} by {by}"


V4_22 = "ssh port 22 from 0.0.0.0/0"
ND = "IPv6 neighbour discovery (ICMPv6)"
NO_ICMP_HEAD = tuple(r for r in desired.head_rules() if r.name != "icmp")
DHCP6 = "DHCPv6 answers"
NO_DHCP6_HEAD = tuple(r for r in desired.head_rules() if r.name != "dhcpv6-client")
V6_22 = "ssh port 22 from ::/0"
BY_DEFAULT = "the default policy (default_input = drop)"

CASES = {
    # -- interface-scoped drops and accepts on a node whose NIC is ens3
    "ssh from anywhere": Case((SSH,)),
    "drop on the real NIC before ssh": Case(
        (drop("drop-ens3", interface="ens3"), SSH),
        (blocked(V4_22, "ens3", by="item 'drop-ens3'"), blocked(V6_22, "ens3", by="item 'drop-ens3'")),
    ),
    "drop on the real NIC after ssh": Case((SSH, drop("drop-ens3", interface="ens3"))),
    "drop on a NIC the node lacks": Case((drop("drop-eth0", interface="eth0"), SSH)),
    "reject on the real NIC, ssh port only": Case(
        (Rule("no-ssh", action="reject", proto="tcp", ports=((22, 22),), interface="ens3"), SSH),
        (
            blocked(V4_22, "ens3", "rejected", "item 'no-ssh'"),
            blocked(V6_22, "ens3", "rejected", "item 'no-ssh'"),
        ),
    ),
    "ssh narrowed to eth0 on an ens3 node": Case(
        (ssh(interface="eth0"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    "ssh narrowed to the real NIC": Case((ssh(interface="ens3"),)),
    "ssh narrowed to lo": Case((ssh(interface="lo"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))),
    # -- wildcards: the model's trailing * (nft iifname "en*", iptables -i en+) and a literal +
    "drop en* prefix": Case(
        (drop("drop-en", interface="en*"), SSH),
        (blocked(V4_22, "ens3", by="item 'drop-en'"), blocked(V6_22, "ens3", by="item 'drop-en'")),
    ),
    "drop en+ (iptables syntax) may match": Case(
        (drop("drop-en", interface="en+"), SSH),
        (blocked(V4_22, "ens3", by="item 'drop-en'"), blocked(V6_22, "ens3", by="item 'drop-en'")),
    ),
    "drop eth* leaves ens3 alone": Case((drop("drop-eth", interface="eth*"), SSH)),
    "drop ens3* matches ens3 itself": Case(
        (drop("d", interface="ens3*"), SSH),
        (blocked(V4_22, "ens3", by="item 'd'"), blocked(V6_22, "ens3", by="item 'd'")),
    ),
    "ssh accept en* covers ens3": Case((ssh(interface="en*"),)),
    "ssh accept en+ is a literal name to nft": Case(
        (ssh(interface="en+"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    "ssh accept eth* misses ens3": Case(
        (ssh(interface="eth*"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    # -- several NICs: each one is walked
    "two NICs, ssh only on one": Case(
        (ssh(interface="ens3"),),
        (blocked(V4_22, "ens4"), blocked(V6_22, "ens4")),
        interfaces=("lo", "ens3", "ens4"),
    ),
    "two NICs, drop on the second": Case(
        (drop("d4", interface="ens4"), SSH),
        (blocked(V4_22, "ens4", by="item 'd4'"), blocked(V6_22, "ens4", by="item 'd4'")),
        interfaces=("ens3", "ens4"),
    ),
    "two NICs, blocked on both, one line": Case(
        (ssh(interface="eth0"),),
        (blocked(V4_22, "ens3, ens4"), blocked(V6_22, "ens3, ens4")),
        interfaces=("ens3", "ens4"),
    ),
    "pod plumbing is not a way in": Case(
        (drop("no-pods", interface="cni0"), drop("no-veth", interface="veth*"), SSH),
        interfaces=("lo", "ens3", "cni0", "flannel.1", "vethab12", "cali1"),
    ),
    "a wg0 VPN is a way in": Case(
        (ssh(interface="ens3"),), (blocked(V4_22, "wg0"), blocked(V6_22, "wg0")), interfaces=("ens3", "wg0")
    ),
    # -- no non-loopback interface found: the conservative probe
    "unknown NIC, ssh from anywhere": Case((SSH,), interfaces=("lo",)),
    "unknown NIC, ssh narrowed to an interface": Case(
        (ssh(interface="ens3"),), (blocked(V4_22, "(unknown)"), blocked(V6_22, "(unknown)")), interfaces=()
    ),
    "unknown NIC, any interface-scoped drop counts": Case(
        (drop("d", interface="eth9"), SSH),
        (blocked(V4_22, "(unknown)", by="item 'd'"), blocked(V6_22, "(unknown)", by="item 'd'")),
        interfaces=("lo",),
    ),
    # -- management networks: v4 only, v6 only, partial cover, "anywhere" is both families
    "v4-only management, ssh from it": Case((ssh(sources=V4),), management=V4),
    "v4-only management, ssh from v6 only": Case(
        (ssh(sources=V6),), (blocked("ssh port 22 from 10.0.0.0/8", "ens3"),), management=V4
    ),
    "v6-only management, ssh from v4 only": Case(
        (ssh(sources=V4),), (blocked("ssh port 22 from fd00::/8", "ens3"),), management=V6
    ),
    "v6-only management, ssh from anywhere": Case((SSH,), management=V6),
    "accept covering only part of management": Case(
        (ssh(sources=(N("10.0.0.0/16"),)),), (blocked("ssh port 22 from 10.0.0.0/8", "ens3"),), management=V4
    ),
    "reject overlapping part of management": Case(
        (Rule("deny", action="reject", sources=(N("10.1.0.0/16"),)), SSH),
        (blocked("ssh port 22 from 10.0.0.0/8", "ens3", "rejected", "item 'deny'"),),
        management=V4,
    ),
    "drop of another network": Case((drop("deny", sources=(N("192.0.2.0/24"),)), SSH), management=V4),
    "anywhere needs both families": Case((ssh(sources=(N("0.0.0.0/0"),)),), (blocked(V6_22, "ens3"),)),
    # -- ports: non-22, several, ranges
    "sshd on 2222, item opens 22": Case(
        (SSH,),
        (blocked("ssh port 2222 from 0.0.0.0/0", "ens3"), blocked("ssh port 2222 from ::/0", "ens3")),
        ports=(2222,),
    ),
    "two sshd ports, both open": Case((ssh(ports=((22, 22), (2222, 2222))),), ports=(22, 2222)),
    "two sshd ports, one open": Case(
        (SSH,),
        (blocked("ssh port 2222 from 0.0.0.0/0", "ens3"), blocked("ssh port 2222 from ::/0", "ens3")),
        ports=(22, 2222),
    ),
    "range covers a non-22 port": Case((ssh(ports=((2200, 2300),)),), ports=(2222,)),
    "drop of low ports spares 2222": Case(
        (drop("low", proto="tcp", ports=((1, 1024),)), ssh(ports=((2222, 2222),))), ports=(2222,)
    ),
    "drop of low ports hits 22 on the NIC only": Case(
        (drop("low", proto="tcp", ports=((1, 1024),), interface="ens3"), SSH),
        (blocked(V4_22, "ens3", by="item 'low'"), blocked(V6_22, "ens3", by="item 'low'")),
    ),
    "udp drop spares ssh": Case((drop("udp", proto="udp", interface="ens3"), SSH)),
    "inactive drop spares ssh": Case((drop("off", interface="ens3", inactive="condition etcd"), SSH)),
    "log rule is no verdict": Case((Rule("log", action="log"), SSH)),
    "accept of established only is no way in": Case(
        (ssh(states=("established",)),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    "udp accept on 22 is no way in": Case(
        (ssh(proto="udp"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    # -- established, lo, the default policy
    "default accept without ssh item": Case((), default="accept"),
    "default drop without ssh item": Case((), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))),
    "iptables final drop is the default policy": Case(
        (Rule("default-drop", action="drop"),),
        (blocked(V4_22, "ens3"), blocked(V6_22, "ens3")),
        default="accept",
    ),
    "no established/lo accept": Case(
        (SSH,),
        (
            blocked("established connections", "ens3"),
            blocked("established connections (IPv6)", "ens3"),
            blocked("loopback", "lo"),
            blocked(ND, "ens3"),
            blocked(DHCP6, "ens3"),
        ),
        head=False,
    ),
    "drop on lo before the head": Case(
        (drop("no-lo", interface="lo"), *desired.head_rules(), SSH),
        (blocked("loopback", "lo", by="item 'no-lo'"),),
        head=False,
    ),
    "drop on lo after the head": Case((drop("no-lo", interface="lo"), SSH)),
    # -- attack rows (fw-attack): what the kernel does vs what the guard walks
    # IPv6 neighbour discovery: untracked by conntrack, so only the icmp head rule lets
    # it in; without it no v6 packet arrives (tests/integration/test_firewall_kernel.py).
    "v6 management needs ICMPv6": Case(
        (*NO_ICMP_HEAD, SSH), (blocked(ND, "ens3"),), management=(*V4, *V6), head=False
    ),
    "v4-only management needs no ICMPv6": Case((*NO_ICMP_HEAD, SSH), management=V4, head=False),
    "ICMP dropped before the head": Case(
        (drop("no-icmp", proto="icmp"), *desired.head_rules(), SSH),
        (blocked(ND, "ens3", by="item 'no-icmp'"),),
        head=False,
    ),
    # DHCPv6 answers come unicast to a multicast request: conntrack does not match them
    "v6 management needs DHCPv6 answers": Case(
        (*NO_DHCP6_HEAD, SSH), (blocked(DHCP6, "ens3"),), management=V6, head=False
    ),
    "v4-only management needs no DHCPv6": Case((*NO_DHCP6_HEAD, SSH), management=V4, head=False),
    "udp dropped before the head": Case(
        (drop("no-udp", proto="udp", interface="ens3"), *desired.head_rules(), SSH),
        (blocked(DHCP6, "ens3", by="item 'no-udp'"),),
        head=False,
    ),
    "ICMP dropped after the head spares ND": Case((drop("no-icmp", proto="icmp"), SSH)),
    "ND walked on every NIC": Case(
        (*NO_ICMP_HEAD, SSH), (blocked(ND, "ens3, ens4"),), interfaces=("ens3", "ens4"), head=False
    ),
    # altnames (`ip link property add ... altname`): iifname compares the primary
    # name only (netns test), and if_nameindex lists primary names only.
    "ssh narrowed to an altname": Case(
        (ssh(interface="enp0s3"),), (blocked(V4_22, "ens3"), blocked(V6_22, "ens3"))
    ),
    "drop on an altname matches nothing": Case((drop("d", interface="enp0s3"), SSH)),
    # VLANs, bridges, bonds: packets come in on the upper device
    "ssh on ens3 only, its VLAN ens3.100": Case(
        (ssh(interface="ens3"),),
        (blocked(V4_22, "ens3.100"), blocked(V6_22, "ens3.100")),
        interfaces=("ens3", "ens3.100"),
    ),
    "ssh on ens3* covers its VLAN": Case((ssh(interface="ens3*"),), interfaces=("ens3", "ens3.100")),
    "ssh on a bridge port only": Case(
        (ssh(interface="ens3"),), (blocked(V4_22, "br0"), blocked(V6_22, "br0")), interfaces=("ens3", "br0")
    ),
    "drop on bond0 before ssh": Case(
        (drop("d", interface="bond0"), SSH),
        (blocked(V4_22, "bond0", by="item 'd'"), blocked(V6_22, "bond0", by="item 'd'")),
        interfaces=("ens3", "ens4", "bond0"),
    ),
    "literal + then prefix: en+* spares ens3": Case((drop("d", interface="en+*"), SSH)),
    # management networks vs the rules' sources
    "management covered by two halves in two items": Case(
        (ssh(sources=(N("10.0.0.0/9"),)), ssh(name="ssh2", sources=(N("10.128.0.0/9"),))),
        (blocked("ssh port 22 from 10.0.0.0/8", "ens3"),),  # errs towards blocked: no single rule covers
        management=V4,
    ),
    "two management networks, v6 one left out": Case(
        (ssh(sources=V4),), (blocked("ssh port 22 from fd00::/8", "ens3"),), management=(*V4, *V6)
    ),
    "v4 reject with v6-only management": Case(
        (Rule("no-v4", action="reject", sources=(N("0.0.0.0/0"),)), SSH), management=V6
    ),
    "ssh accept proto any from management": Case((ssh(proto="any", ports=()),), management=V4),
    "drop of a wider net after ssh": Case(
        (ssh(sources=V4), drop("d", sources=(N("0.0.0.0/0"),))), management=V4
    ),
    # ports
    "drop range ending at 22": Case(
        (drop("d", proto="tcp", ports=((1, 22),)), SSH),
        (blocked(V4_22, "ens3", by="item 'd'"), blocked(V6_22, "ens3", by="item 'd'")),
    ),
    "drop range above 22 spares it": Case((drop("d", proto="tcp", ports=((23, 65535),)), SSH)),
    "one range opens both sshd ports": Case((ssh(ports=((22, 2222),)),), ports=(22, 2222)),
    "sshd port blocked on one NIC only": Case(
        (
            drop("d", proto="tcp", ports=((2222, 2222),), interface="ens4"),
            ssh(ports=((22, 22), (2222, 2222))),
        ),
        (
            blocked("ssh port 2222 from 0.0.0.0/0", "ens4", by="item 'd'"),
            blocked("ssh port 2222 from ::/0", "ens4", by="item 'd'"),
        ),
        interfaces=("ens3", "ens4"),
        ports=(22, 2222),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_guard_table(name: str) -> None:
    case = CASES[name]
    head = tuple(desired.head_rules()) if case.head else ()
    ruleset = Ruleset((*head, *case.rules), default_input=case.default)
    found = guard.lockout_problems(ruleset, case.ports, case.management, case.interfaces)
    assert found == list(case.expected)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert sum(1 for c in CASES.values() if c.expected) >= 15  # refusals, not only passes


@pytest.mark.parametrize(
    "names,walked",
    [
        (["lo", "ens3"], ("ens3",)),
        (["eth0", "lo", "enp1s0"], ("enp1s0", "eth0")),
        (["lo"], ("(unknown)",)),
        ([], ("(unknown)",)),
        (
            ["cni0", "flannel.1", "flannel-wg", "veth12", "cali9", "docker0", "kube-ipvs0", "tunl0"],
            ("(unknown)",),
        ),
        (["br0", "wg0", "bond0.100", "tailscale0"], ("bond0.100", "br0", "tailscale0", "wg0")),
    ],
)
def test_probe_interfaces(names: list[str], walked: tuple[str, ...]) -> None:
    assert guard.probe_interfaces(names) == walked


def test_refusal_names_interface_source_port_and_rule() -> None:
    ruleset = Ruleset((*desired.head_rules(), drop("drop-ens3", interface="ens3"), SSH))
    text = guard.refusal(guard.lockout_problems(ruleset, [2222, 22], V4, ["lo", "ens3"]))
    assert text is not None
    assert "ssh port 2222 from 10.0.0.0/8 on ens3 would be dropped by item 'drop-ens3'" in text
    assert "allow_lockout = true" in text
    assert guard.refusal([]) is None


def test_a_trailing_plus_is_refused_in_the_policy() -> None:
    assert check_interface("en*") is None and check_interface("ens3") is None
    message = check_interface("en+")
    assert message is not None and "'en*'" in message
    assert check_interface("(unknown)") is not None  # the conservative probe's name is no policy name


def test_host_lists_interfaces_of_its_namespace() -> None:
    names = Host().net_interfaces()
    assert "lo" in names and all(isinstance(n, str) and n for n in names)


# -- socket-activated sshd: the ports systemd listens on for it ---------------------------------


def unit(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def enable(root: Path, name: str) -> None:
    wants = root / "etc/systemd/system/sockets.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / name).symlink_to(f"/usr/lib/systemd/system/{name}")


def test_socket_unit_ports_only_when_enabled(root: Path) -> None:
    unit(root, "/usr/lib/systemd/system/ssh.socket", "[Socket]\nListenStream=22\nAccept=yes\n")
    host = Host(root=str(root))
    assert sshd_facts.socket_unit_ports(host) == []  # installed, not enabled (Debian 12's default)
    enable(root, "ssh.socket")
    assert sshd_facts.socket_unit_ports(host) == [22]


def test_socket_unit_dropins_reset_and_add(root: Path) -> None:
    unit(root, "/usr/lib/systemd/system/ssh.socket", "[Socket]\nListenStream=22\n")
    # Ubuntu's sshd-socket-generator: an empty value resets, then the sshd_config ports.
    unit(
        root,
        "/run/systemd/generator/ssh.socket.d/addresses.conf",
        "[Socket]\nListenStream=\nListenStream=0.0.0.0:2222\nListenStream=[::]:2200\n",
    )
    unit(
        root,
        "/etc/systemd/system/ssh.socket.d/zz-more.conf",
        "[Socket]\nListenStream=/run/ssh.sock\nListenStream=2022\n",
    )
    unit(root, "/etc/systemd/system/sshd.socket", "[Socket]\nListenStream=3022\n")  # not enabled
    enable(root, "ssh.socket")
    assert sshd_facts.socket_unit_ports(Host(root=str(root))) == [2022, 2200, 2222]


def test_ssh_ports_include_the_socket_units(root: Path) -> None:
    unit(root, "/lib/systemd/system/sshd.socket", "[Socket]\nListenStream=2244\n")
    enable(root, "sshd.socket")
    ports, how = hostnet.ssh_ports(Host(root=str(root)), [22])
    assert {22, 2244} <= set(ports) and "ssh.socket [2244]" in how


# -- attack rows as an operator writes them: policy.toml through load_policy ---------------------
# (text, what the refusal must say; None = loads). Each of the refused ones loaded before
# fw-attack: the mapped/zone networks and the bad interface names then broke the ruleset
# in the kernel or at commit, the K3s-dependent drops were refused only at every heal.
MGMT_V4 = '[controls.firewall]\nmanagement_sources = ["10.0.0.0/8"]\n'
POLICY_CASES: dict[str, tuple[str, str | None]] = {
    "management as IPv4-mapped IPv6": (
        '[controls.firewall]\nmanagement_sources = ["::ffff:10.0.0.0/104"]\n',
        "'::ffff:10.0.0.0/104' is IPv4-mapped: netfilter sees those clients as IPv4, write 10.0.0.0/8",
    ),
    "item source IPv4-mapped": (
        '[controls.firewall.items.web]\nproto = "tcp"\nports = [80]\nsources = ["::ffff:192.0.2.0/120"]\n',
        "write 192.0.2.0/24",
    ),
    "all of the mapped space": (
        '[controls.firewall]\nnode_cidrs = ["::ffff:0:0/96"]\n',
        "write 0.0.0.0/0",
    ),
    "v6 network around the mapped space is fine": ('[controls.firewall]\nnode_cidrs = ["::/64"]\n', None),
    "management with a zone index": (
        '[controls.firewall]\nmanagement_sources = ["fe80::%ens3/64"]\n',
        "has a zone index; name the link with interface = instead",
    ),
    "link-local management without zone": ('[controls.firewall]\nmanagement_sources = ["fe80::/64"]\n', None),
    "interface as an address label": (
        '[controls.firewall.items.ssh]\ninterface = "ens3:1"\n',
        "'ens3:1' is an address label, not an interface (packets arrive on 'ens3')",
    ),
    "interface of 15 characters and a *": (
        '[controls.firewall.items.x]\naction = "drop"\ninterface = "abcdefghijklmno*"\n',
        "at most 15 characters with an optional trailing *",
    ),
    "interface with a leading @": (
        '[controls.firewall.items.x]\naction = "drop"\ninterface = "@ens3"\n',
        "a leading @ is a set reference to nftables",
    ),
    "drop from @pods overlapping management, K3s default cluster-cidr": (
        MGMT_V4 + '[controls.firewall.items.no-pods]\naction = "drop"\nsources = ["@pods"]\norder = 5\n',
        "from 10.0.0.0/8 on",
    ),
    "drop from @services overlapping management": (
        MGMT_V4 + '[controls.firewall.items.no-svc]\naction = "drop"\nsources = ["@services"]\norder = 5\n',
        "would be dropped by item 'no-svc'",
    ),
    "drop from @pods, management elsewhere": (
        '[controls.firewall]\nmanagement_sources = ["192.0.2.0/24"]\n'
        '[controls.firewall.items.no-pods]\naction = "drop"\nsources = ["@pods"]\norder = 5\n',
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(POLICY_CASES))
def test_policy_table(root: Path, name: str) -> None:
    text, expected = POLICY_CASES[name]
    path = root / "etc/k3s-agentd/policy.toml"
    path.write_text('version = 1\nextends = "k3s-cis-server"\n' + text)
    path.chmod(0o644)
    if expected is None:
        load_policy(Host(root=str(root)), path=str(path))
        return
    with pytest.raises(PolicyError) as info:
        load_policy(Host(root=str(root)), path=str(path))
    assert expected in str(info.value) and str(path) in str(info.value)


def test_when_condition_is_read_at_load(root: Path) -> None:
    """A drop that needs embedded etcd is walked at load on a node whose K3s config says so."""
    path = root / "etc/k3s-agentd/policy.toml"
    path.write_text(
        'version = 1\nextends = "k3s-cis-server"\n'
        '[controls.firewall.items.lock]\naction = "drop"\nwhen = ["etcd"]\norder = 5\n'
    )
    path.chmod(0o644)
    load_policy(Host(root=str(root)), path=str(path))  # no etcd here: inactive, nothing to refuse
    unit(root, "/etc/rancher/k3s/config.yaml", "cluster-init: true\n")
    with pytest.raises(PolicyError) as info:
        load_policy(Host(root=str(root)), path=str(path))
    assert "would be dropped by item 'lock'" in str(info.value)


@pytest.mark.parametrize(
    "value,port",
    [
        ("0.0.0.0:22", 22),
        ("[::]:2222", 2222),
        ("10.0.0.1:2222 rdomain mgmt", 2222),  # servconf.c format_listen_addrs with an rdomain
        ("[fe80::1]:2200 rdomain vrf-mgmt", 2200),
        ("garbage", 0),
    ],
)
def test_listen_address_port(value: str, port: int) -> None:
    assert sshd_facts.listen_address_port(value) == port
