"""sysctl keys in one canonical form: every spelling is the same key, for the control,
for duplicates and for the K3s lints (issue 12, part 3)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from k3s_agent.controls.sysctl import SysctlControl, display_key, key_problem, proc_path
from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.model import ControlPolicy
from k3s_agent.policy.schema import PolicyError

# spelling -> (/proc/sys path, dotted display form); sysctl.d(5): "If the first separator
# is a slash, remaining slashes and dots are left intact. If the first separator is a dot,
# dots and slashes are interchanged."
VLAN, VLAN_DOTTED = "net/ipv4/conf/eth0.100/rp_filter", "net.ipv4.conf.eth0/100.rp_filter"
BRIDGE = "net.bridge.bridge-nf-call-iptables"
SPELLINGS = [
    ("net.ipv4.ip_forward", "net/ipv4/ip_forward", "net.ipv4.ip_forward"),
    ("net/ipv4/ip_forward", "net/ipv4/ip_forward", "net.ipv4.ip_forward"),
    ("/proc/sys/net/ipv4/ip_forward", "net/ipv4/ip_forward", "net.ipv4.ip_forward"),
    ("net/ipv4/conf/eth0.100/rp_filter", VLAN, VLAN_DOTTED),
    (VLAN_DOTTED, VLAN, VLAN_DOTTED),
    ("/proc/sys/" + VLAN, VLAN, VLAN_DOTTED),
    ("net/ipv4.conf/x", "net/ipv4.conf/x", "net.ipv4/conf.x"),  # slash first: the dot is part of a name
    ("kernel.panic", "kernel/panic", "kernel.panic"),
    ("net.bridge.bridge-nf-call-iptables", "net/bridge/bridge-nf-call-iptables", BRIDGE),
]


@pytest.mark.parametrize(("spelling", "path", "dotted"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_every_spelling_has_one_path_and_one_display(spelling: str, path: str, dotted: str) -> None:
    assert key_problem(spelling) is None
    assert proc_path(spelling) == path
    assert display_key(spelling) == dotted
    assert proc_path(dotted) == path, "the display form reads back to the same key"


BAD_KEYS = [
    "ipforward",
    "net..ipv4.ip_forward",
    "net.ipv4.",
    ".net.ipv4.ip_forward",
    "net/../../etc/passwd",
    "net/./ipv4/ip_forward",
    "/proc/sys/",
    "/etc/passwd",
    "net.ipv4.ip forward",
    "net.ipv4.ip_forward\x00",
    "net.ipv4.ip_forward\n",
    "Net.ipv4.ip_forward",
    "",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_impossible_keys_are_refused(key: str) -> None:
    assert "is not a dotted sysctl name" in (key_problem(key) or "")


def test_control_reads_and_writes_the_path_of_any_spelling(root: Path, fake_proc: Path) -> None:
    conf = fake_proc / "sys/net/ipv4/conf/eth0.100"
    conf.mkdir(parents=True)
    (conf / "rp_filter").write_text("0\n")
    items = {"net.ipv4.conf.eth0/100.rp_filter": {"value": 1}, "/proc/sys/kernel/panic": {"value": 10}}
    policy = ControlPolicy("sysctl", Mode.ENFORCE, True, {"persist": True}, items)
    control = SysctlControl(policy, Host(root=str(root), proc=str(fake_proc)))
    found = {f.key: f for f in control.check()}
    assert found["net.ipv4.conf.eth0/100.rp_filter"].observed == "0"
    assert "kernel.panic" in found
    healed = control.apply([found["net.ipv4.conf.eth0/100.rp_filter"]])[0]
    assert healed.status.value == "healed"
    assert (conf / "rp_filter").read_text() == "1"
    assert "net.ipv4.conf.eth0/100.rp_filter = 1\n" in control.desired_file()
    assert "kernel.panic = 10\n" in control.desired_file()


def _refused(tmp_path: Path, text: str, *dropins: str) -> str:
    policy = tmp_path / "policy.toml"
    policy.write_text(textwrap.dedent(text))
    for index, dropin in enumerate(dropins):
        (tmp_path / f"d{index}.toml").write_text(textwrap.dedent(dropin))
    with pytest.raises(PolicyError) as caught:
        load_policy(Host(root=str(tmp_path)), path=str(policy))
    return str(caught.value)


FORWARDING_OFF = [
    "net.ipv4.ip_forward",
    "net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net/ipv4/conf/all/forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
]


@pytest.mark.parametrize("key", FORWARDING_OFF)
def test_k3s_lints_apply_to_every_spelling(tmp_path: Path, key: str) -> None:
    message = _refused(tmp_path, f'extends = "none"\n[controls.sysctl.items."{key}"]\nvalue = 0\n')
    assert f'controls.sysctl.items."{key}": ' in message and "breaks K3s pod networking" in message


@pytest.mark.parametrize("key", ["net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"])
def test_ipv6_forwarding_lint_on_dual_stack_in_any_spelling(tmp_path: Path, key: str) -> None:
    text = 'extends = "none"\n[controls.sysctl]\ndual_stack = true\n'
    text += f'[controls.sysctl.items."{key}"]\nvalue = 0\n'
    assert "breaks IPv6 on this dual-stack cluster" in _refused(tmp_path, text)


def test_two_spellings_of_one_key_are_refused_naming_both(tmp_path: Path) -> None:
    message = _refused(
        tmp_path,
        """
        extends = "none"
        [controls.sysctl.items."kernel.panic"]
        value = 10
        [controls.sysctl.items."kernel/panic"]
        value = 0
        """,
    )
    assert 'controls.sysctl.items."kernel/panic": the same item as' in message
    assert 'controls.sysctl.items."kernel.panic"' in message


def test_a_dropin_spelling_a_profile_key_differently_is_refused(root: Path) -> None:
    dropin = root / "etc/k3s-agentd/policy.d/50-x.toml"
    dropin.write_text('extends = "k3s-cis-agent"\n[controls.sysctl.items."kernel/panic"]\nvalue = 10\n')
    with pytest.raises(PolicyError) as caught:
        load_policy(Host(root=str(root)))
    message = str(caught.value)
    expected = f'{dropin}: controls.sysctl.items."kernel/panic": the same item as profile:k3s-cis-agent'
    assert expected in message


def test_tied_keys_that_disagree_are_refused_even_with_accept_risk(tmp_path: Path) -> None:
    message = _refused(
        tmp_path,
        """
        extends = "none"
        [controls.sysctl.items."net.ipv4.ip_forward"]
        value = 0
        accept_risk = "no pods here"
        [controls.sysctl.items."net/ipv4/conf/all/forwarding"]
        value = 1
        accept_risk = "no pods here"
        """,
    )
    assert "the kernel ties the two together" in message
    assert "accept_risk" not in message


def test_tied_keys_that_agree_pass_with_accept_risk(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'extends = "none"\n'
        '[controls.sysctl.items."net.ipv4.ip_forward"]\nvalue = 0\naccept_risk = "router off"\n'
        '[controls.sysctl.items."net/ipv4/conf/all/forwarding"]\nvalue = 0\naccept_risk = "router off"\n'
    )
    loaded = load_policy(Host(root=str(tmp_path)), path=str(policy))
    assert len(loaded.controls["sysctl"].items) == 2


def test_disable_matches_any_spelling(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'extends = "k3s-cis-agent"\n[controls.sysctl]\ndisable = ["/proc/sys/net/ipv4/tcp_syncookies"]\n'
    )
    loaded = load_policy(Host(root=str(tmp_path)), path=str(policy))
    assert "net.ipv4.tcp_syncookies" not in loaded.controls["sysctl"].items
    profile = load_policy(Host(root=str(tmp_path)), profile="k3s-cis-agent")
    assert "net.ipv4.tcp_syncookies" in profile.controls["sysctl"].items
