"""sysctl against the real kernel, inside a fresh network namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from k3s_agent.controls.sysctl import SysctlControl
from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Mode, Status
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.model import ControlPolicy
from tests.support.netns import in_netns, netns_argv

pytestmark = pytest.mark.root

NET_ITEMS = {
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.ip_forward": 1,
    "net.ipv4.ip_local_port_range": "20000 50000",
}


def _sysctl(key: str) -> str:
    return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=True).stdout.strip()


def _inject_detect_heal(root: str) -> dict[str, object]:
    subprocess.run(["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=1"], check=True)
    subprocess.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=30000 40000"], check=True)
    policy = ControlPolicy("sysctl", Mode.ENFORCE, True, {}, {k: {"value": v} for k, v in NET_ITEMS.items()})
    ctl = SysctlControl(policy, Host(root=root))
    before = {f.key: f.status.value for f in ctl.check()}
    drift = [f for f in ctl.check() if f.status is Status.DRIFT]
    healed = {f.key: f.status.value for f in ctl.apply(drift)}
    after = {f.key: f.status.value for f in ctl.check()}
    return {
        "before": before,
        "healed": healed,
        "after": after,
        "send_redirects": _sysctl("net.ipv4.conf.all.send_redirects"),
        "port_range": _sysctl("net.ipv4.ip_local_port_range"),
    }


def test_drift_injected_with_sysctl_w_is_detected_and_healed(root: Path) -> None:
    host_value = _sysctl("net.ipv4.conf.all.send_redirects")
    result = in_netns(_inject_detect_heal, str(root))
    assert result["before"]["net.ipv4.conf.all.send_redirects"] == "drift"
    assert result["before"]["net.ipv4.ip_local_port_range"] == "drift"
    assert result["healed"]["net.ipv4.conf.all.send_redirects"] == "healed"
    assert result["after"]["net.ipv4.conf.all.send_redirects"] == "ok"
    assert result["after"]["/etc/sysctl.d/90-k3s-agentd.conf"] == "ok"
    assert result["send_redirects"] == "0"
    assert result["port_range"].split() == ["20000", "50000"]
    # the host's own namespace was never touched
    assert _sysctl("net.ipv4.conf.all.send_redirects") == host_value


def _engine_cycle(root: str, policy_file: str) -> list[dict[str, object]]:
    subprocess.run(["sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=1"], check=True)
    host = Host(root=root)
    engine = Engine(load_policy(host, path=policy_file), host)
    return [f.to_dict() for f in engine.run_cycle().findings()]


def test_engine_cycle_in_netns_reports_healed(root: Path) -> None:
    policy = root / "policy.toml"
    policy.write_text(
        'extends = "none"\n[controls.sysctl.items."net.ipv4.conf.all.accept_redirects"]\nvalue = 0\n'
    )
    findings = in_netns(_engine_cycle, str(root), str(policy))
    statuses = {f["key"]: f["status"] for f in findings}
    assert statuses["net.ipv4.conf.all.accept_redirects"] == "healed"


def test_read_only_proc_sys_is_unsupported_not_a_crash(root: Path, fake_proc: Path) -> None:
    policy = root / "policy.toml"
    policy.write_text('extends = "none"\n[controls.sysctl.items."kernel.panic"]\nvalue = 10\n')
    sys_dir = fake_proc / "sys"
    # A private mount namespace with /proc/sys read-only, as in a container.
    script = (
        f"mount --bind {sys_dir} {sys_dir} && mount -o remount,bind,ro {sys_dir} && "
        f"{sys.executable} -m k3s_agent.cli apply --json --root {root} --proc {fake_proc} --policy {policy}"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    document = json.loads(proc.stdout)
    finding = next(f for f in document["controls"][0]["findings"] if f["key"] == "kernel.panic")
    assert finding["status"] == "unsupported", finding
    assert (sys_dir / "kernel/panic").read_text().strip() == "0"


def test_cli_check_never_writes(root: Path) -> None:
    policy = root / "policy.toml"
    policy.write_text('extends = "none"\n[controls.sysctl.items."net.ipv4.ip_forward"]\nvalue = 1\n')
    argv = [
        sys.executable,
        "-m",
        "k3s_agent.cli",
        "check",
        "--json",
        "--root",
        str(root),
        "--policy",
        str(policy),
    ]
    proc = subprocess.run(netns_argv(argv), capture_output=True, text=True)
    document = json.loads(proc.stdout)
    assert proc.returncode == 1  # drift: a fresh netns forwards nothing
    assert document["summary"]["verdict"] == "drift"
    assert not (root / "etc/sysctl.d/90-k3s-agentd.conf").exists()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k3s_agent.cli", *argv], capture_output=True, text=True)


def _diff_then_apply(root: str, policy: str) -> dict[str, object]:
    subprocess.run(["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=1"], check=True)
    common = ["--root", root, "--policy", policy, "--control", "sysctl"]
    diff = _cli("diff", *common)
    audit_apply = _cli("apply", *common)
    after_audit = _sysctl("net.ipv4.conf.all.send_redirects")
    forced = _cli("apply", "--all", *common)
    return {
        "diff": diff.stdout,
        "diff_rc": diff.returncode,
        "audit_rc": audit_apply.returncode,
        "after_audit": after_audit,
        "forced_rc": forced.returncode,
        "after_forced": _sysctl("net.ipv4.conf.all.send_redirects"),
    }


def test_diff_shows_the_change_and_audit_mode_apply_leaves_it(root: Path) -> None:
    policy = root / "policy.toml"
    policy.write_text(
        'extends = "none"\nmode = "audit"\n[controls.sysctl]\npersist = false\n'
        '[controls.sysctl.items."net.ipv4.conf.all.send_redirects"]\nvalue = 0\n'
    )
    result = in_netns(_diff_then_apply, str(root), str(policy))
    assert "sysctl net.ipv4.conf.all.send_redirects   (audit mode: apply leaves it)" in result["diff"]
    assert "  - 1\n  + 0\n" in result["diff"] and "1 item(s) would change" in result["diff"]
    assert result["diff_rc"] == 1
    assert (result["audit_rc"], result["after_audit"]) == (1, "1")
    assert (result["forced_rc"], result["after_forced"]) == (0, "0")
