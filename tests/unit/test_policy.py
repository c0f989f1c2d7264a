"""Policy loading, merging and validation: every refusal names file, key and reason."""

from __future__ import annotations

import datetime
import os
import textwrap
from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.schema import PolicyError


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def refused(tmp_path: Path, text: str) -> str:
    policy = write(tmp_path / "policy.toml", text)
    with pytest.raises(PolicyError) as caught:
        load_policy(Host(root=str(tmp_path)), path=str(policy))
    return str(caught.value)


BAD_POLICIES = [
    ("unknown top-level key", "extends = 'none'\nbogus = 1\n", "policy.toml: bogus: unknown key"),
    ("interval wrong type", "interval = '60'\n", "policy.toml: interval: expected a number"),
    ("interval of 0", "interval = 0\n", "policy.toml: interval: must be >= 1"),
    ("negative timeout", "control_timeout = -5\n", "policy.toml: control_timeout: must be >= 1"),
    ("bad global mode", "mode = 'fix'\n", "policy.toml: mode: must be one of 'enforce', 'audit'"),
    ("bad version", "version = 2\n", "policy.toml: version: must be one of 1"),
    ("unknown profile", "extends = 'cis-lite'\n", "policy.toml: extends: must be one of"),
    ("unknown control", "[controls.firewal]\n", "policy.toml: controls.firewal: unknown control"),
    (
        "sysctl name not dotted",
        "[controls.sysctl.items.ipforward]\nvalue = 1\n",
        "policy.toml: controls.sysctl.items.ipforward: 'ipforward' is not a dotted sysctl name",
    ),
    (
        "unknown item key",
        "[controls.sysctl.items.'net.ipv4.tcp_syncookies']\nvalu = 1\n",
        'controls.sysctl.items."net.ipv4.tcp_syncookies".valu: unknown key',
    ),
    (
        "item value wrong type",
        "[controls.sysctl.items.'net.ipv4.tcp_syncookies']\nvalue = [1]\n",
        'controls.sysctl.items."net.ipv4.tcp_syncookies".value: expected a string or an integer',
    ),
    (
        "new item without value",
        "[controls.sysctl.items.'net.ipv4.tcp_fin_timeout']\ncis = 'x'\n",
        'controls.sysctl.items."net.ipv4.tcp_fin_timeout".value: required key is missing',
    ),
    (
        "section mode invalid",
        "[controls.sysctl]\nmode = 'heal'\n",
        "policy.toml: controls.sysctl.mode: must be one of",
    ),
    (
        "disable not strings",
        "[controls.sysctl]\ndisable = [1]\n",
        "policy.toml: controls.sysctl.disable: [0]: expected a string",
    ),
    (
        "ip_forward=0 breaks K3s",
        "[controls.sysctl.items.'net.ipv4.ip_forward']\nvalue = 0\n",
        'policy.toml: controls.sysctl.items."net.ipv4.ip_forward": net.ipv4.ip_forward=0 breaks K3s',
    ),
    (
        "bridge-nf-call-iptables=0 breaks K3s",
        "[controls.sysctl.items.'net.bridge.bridge-nf-call-iptables']\nvalue = '0'\n",
        'controls.sysctl.items."net.bridge.bridge-nf-call-iptables": '
        "net.bridge.bridge-nf-call-iptables=0 breaks K3s",
    ),
    (
        "IPv6 forwarding off on dual-stack",
        "[controls.sysctl]\ndual_stack = true\n"
        "[controls.sysctl.items.'net.ipv6.conf.all.forwarding']\nvalue = 0\n",
        'controls.sysctl.items."net.ipv6.conf.all.forwarding": '
        "net.ipv6.conf.all.forwarding=0 breaks IPv6 on this dual-stack cluster",
    ),
    (
        "waiver without owner",
        "[[waiver]]\ncontrol = 'sysctl'\nkey = 'kernel.panic'\nreason = 'r'\nexpires = 2030-01-01\n",
        "policy.toml: waiver[0].owner: required key is missing",
    ),
    (
        "waiver expiry not a date",
        "[[waiver]]\ncontrol = 'sysctl'\nkey = 'k.p'\nreason = 'r'\nowner = 'o'\nexpires = 'soon'\n",
        "policy.toml: waiver[0].expires: expected a date (YYYY-MM-DD)",
    ),
    (
        "waiver for unknown control",
        "[[waiver]]\ncontrol = 'selinux'\nkey = 'k'\nreason = 'r'\nowner = 'o'\nexpires = 2030-01-01\n",
        "policy.toml: waiver[0].control: no control named 'selinux'",
    ),
    ("contest threshold 1", "[contest]\nthreshold = 1\n", "policy.toml: contest.threshold: must be >= 2"),
    (
        "metrics path relative",
        "[metrics]\ntextfile = 'k3s.prom'\n",
        "policy.toml: metrics.textfile: 'k3s.prom' is not an absolute *.prom path",
    ),
    ("TOML syntax error", "interval = = 3\n", "policy.toml: not valid TOML"),
    ("section not a table", "[controls]\nsysctl = 3\n", "policy.toml: controls.sysctl: expected a table"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_POLICIES, ids=[c[0] for c in BAD_POLICIES])
def test_bad_policy_is_refused_naming_the_key(tmp_path: Path, case: str, text: str, expected: str) -> None:
    message = refused(tmp_path, text)
    assert expected in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = refused(tmp_path, "[contest]\nthreshold = 1\nwindow = 0\n")
    assert "contest.threshold" in message and "contest.window" in message


def test_lint_can_be_overridden_per_item_with_a_reason(tmp_path: Path) -> None:
    policy = write(
        tmp_path / "policy.toml",
        """
        [controls.sysctl.items."net.ipv4.ip_forward"]
        value = 0
        accept_risk = "air-gapped single node, no pod networking"
        """,
    )
    loaded = load_policy(Host(root=str(tmp_path)), path=str(policy))
    assert loaded.controls["sysctl"].items["net.ipv4.ip_forward"]["value"] == 0


def test_group_writable_policy_is_refused(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.toml", "mode = 'audit'\n", mode=0o664)
    with pytest.raises(PolicyError, match=r"policy.toml: mode 0664 is group/other-writable"):
        load_policy(Host(root=str(tmp_path)), path=str(policy))


@pytest.mark.root
def test_policy_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.toml", "mode = 'audit'\n")
    os.chown(policy, 65534, 65534)
    with pytest.raises(PolicyError, match=r"policy.toml: owned by uid 65534, must be owned by root"):
        load_policy(Host(root=str(tmp_path)), path=str(policy))


def test_symlinked_policy_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "real.toml", "mode = 'audit'\n")
    link = tmp_path / "policy.toml"
    link.symlink_to(real)
    with pytest.raises(PolicyError, match="symlinks are refused"):
        load_policy(Host(root=str(tmp_path)), path=str(link))


def test_world_writable_dropin_dir_is_refused(root: Path) -> None:
    write(root / "etc/k3s-agentd/policy.toml", "mode = 'audit'\n")
    os.chmod(root / "etc/k3s-agentd/policy.d", 0o777)
    with pytest.raises(PolicyError, match=r"policy.d: mode 0777 is group/other-writable"):
        load_policy(Host(root=str(root)))


def test_profile_server_extends_agent(tmp_path: Path) -> None:
    policy = load_policy(Host(root=str(tmp_path)), profile="k3s-cis-server")
    assert policy.profile == "k3s-cis-server"
    assert policy.controls["sysctl"].items["kernel.panic"]["value"] == 10
    assert policy.sources[0].startswith("profile:k3s-cis-agent/")
    assert any(s.startswith("profile:k3s-cis-server/") for s in policy.sources)


def test_layers_merge_in_name_order_and_disable_accumulates(root: Path) -> None:
    write(
        root / "etc/k3s-agentd/policy.toml",
        """
        extends = "k3s-cis-agent"
        mode = "audit"
        [controls.sysctl]
        disable = ["net.ipv4.conf.all.log_martians"]
        [controls.sysctl.items."net.ipv4.tcp_max_syn_backlog"]
        value = 4096
        """,
    )
    write(
        root / "etc/k3s-agentd/policy.d/20-late.toml",
        """
        [controls.sysctl.items."net.ipv4.tcp_max_syn_backlog"]
        value = 8192
        """,
    )
    write(
        root / "etc/k3s-agentd/policy.d/10-early.toml",
        """
        [controls.sysctl]
        mode = "enforce"
        disable = ["net.ipv4.tcp_synack_retries"]
        [controls.sysctl.items."net.ipv4.tcp_max_syn_backlog"]
        value = 1024
        """,
    )
    policy = load_policy(Host(root=str(root)))
    sysctl = policy.controls["sysctl"]
    assert policy.mode is Mode.AUDIT
    assert sysctl.mode is Mode.ENFORCE
    assert sysctl.items["net.ipv4.tcp_max_syn_backlog"]["value"] == 8192
    # the profile's description survives a local value override
    assert sysctl.items["net.ipv4.tcp_max_syn_backlog"]["description"] == "SYN flood protection"
    assert "net.ipv4.conf.all.log_martians" not in sysctl.items
    assert "net.ipv4.tcp_synack_retries" not in sysctl.items
    assert [os.path.basename(s) for s in policy.sources[-3:]] == [
        "policy.toml",
        "10-early.toml",
        "20-late.toml",
    ]


def test_error_names_the_dropin_that_holds_it(root: Path) -> None:
    write(root / "etc/k3s-agentd/policy.toml", "mode = 'audit'\n")
    write(root / "etc/k3s-agentd/policy.d/50-bad.toml", "interval = 0\n")
    with pytest.raises(PolicyError, match=r"policy.d/50-bad.toml: interval: must be >= 1"):
        load_policy(Host(root=str(root)))


def test_waivers_accumulate_and_expire(root: Path) -> None:
    write(
        root / "etc/k3s-agentd/policy.toml",
        """
        [[waiver]]
        control = "sysctl"
        key = "kernel.panic"
        reason = "vendor kernel"
        owner = "platform@example.com"
        expires = 2027-01-31
        """,
    )
    write(
        root / "etc/k3s-agentd/policy.d/10.toml",
        """
        [[waiver]]
        control = "sysctl"
        key = "net.ipv4.conf.*"
        reason = "lab"
        owner = "lab@example.com"
        expires = 2026-06-30
        """,
    )
    policy = load_policy(Host(root=str(root)))
    assert len(policy.waivers) == 2
    before, after = datetime.date(2026, 6, 30), datetime.date(2026, 7, 1)
    assert policy.waiver_for("sysctl", "net.ipv4.conf.all.rp_filter", before) is not None
    assert policy.waiver_for("sysctl", "net.ipv4.conf.all.rp_filter", after) is None
    assert policy.waiver_for("sysctl", "kernel.panic", after).owner == "platform@example.com"
    assert policy.waiver_for("files", "kernel.panic", before) is None


def test_auto_profile_follows_the_k3s_unit(root: Path) -> None:
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/k3s-agent.service").write_text("[Service]\n")
    assert load_policy(Host(root=str(root))).profile == "k3s-cis-agent"
    (root / "etc/systemd/system/k3s.service").write_text("[Service]\n")
    assert load_policy(Host(root=str(root))).profile == "k3s-cis-server"
