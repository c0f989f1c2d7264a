"""sysctl control on a fake /proc/sys and a temporary root (non-namespaced keys)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from k3s_agent.controls.sysctl import PERSIST_FILE, SysctlControl, boot_winners, lint, normalize
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy


def control(root: Path, proc: Path, items: dict[str, object], persist: bool = True) -> SysctlControl:
    policy = ControlPolicy(
        "sysctl", Mode.ENFORCE, True, {"persist": persist}, {k: {"value": v} for k, v in items.items()}
    )
    return SysctlControl(policy, Host(root=str(root), proc=str(proc)))


def by_key(findings: list[Finding]) -> dict[str, Finding]:
    return {f.key: f for f in findings}


def test_values_compare_the_way_the_kernel_prints_them() -> None:
    assert normalize("32768\t60999\n") == normalize("32768  60999") == "32768 60999"
    assert normalize(True) == "1"


def test_runtime_drift_is_found_and_healed(root: Path, fake_proc: Path) -> None:
    ctl = control(root, fake_proc, {"kernel.panic": 10, "vm.panic_on_oom": 0}, persist=False)
    found = by_key(ctl.check())
    assert found["kernel.panic"].status is Status.DRIFT
    assert (found["kernel.panic"].desired, found["kernel.panic"].observed) == ("10", "0")
    assert found["vm.panic_on_oom"].status is Status.OK
    results = ctl.apply([found["kernel.panic"]])
    assert results[0].status is Status.HEALED
    assert (fake_proc / "sys/kernel/panic").read_text().strip() == "10"
    assert by_key(ctl.check())["kernel.panic"].status is Status.OK


def test_vector_value_with_tabs_is_not_drift(root: Path, fake_proc: Path) -> None:
    ctl = control(root, fake_proc, {"net.ipv4.ip_local_port_range": "32768 60999"}, persist=False)
    assert ctl.check()[0].status is Status.OK


def test_missing_key_is_absent_not_a_crash(root: Path, fake_proc: Path) -> None:
    ctl = control(root, fake_proc, {"net.ipv4.no_such_thing": 1}, persist=False)
    assert ctl.check()[0].status is Status.ABSENT


def test_persisted_file_is_written_atomically_with_backup(root: Path, fake_proc: Path) -> None:
    ctl = control(root, fake_proc, {"kernel.panic": 10})
    target = root / PERSIST_FILE.lstrip("/")
    target.write_text("kernel.panic = 1\n")
    drift = [f for f in ctl.check() if f.key == PERSIST_FILE]
    assert drift[0].status is Status.DRIFT
    result = ctl.apply(drift)[0]
    assert result.status is Status.HEALED
    assert "kernel.panic = 10" in target.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    backups = list((root / "var/lib/k3s-agentd/backup").rglob("*"))
    assert any(p.is_file() and p.read_text() == "kernel.panic = 1\n" for p in backups)


def test_symlink_at_the_persist_path_is_refused_not_followed(root: Path, fake_proc: Path) -> None:
    victim = root / "victim"
    victim.write_text("precious\n")
    (root / PERSIST_FILE.lstrip("/")).symlink_to(victim)
    ctl = control(root, fake_proc, {"kernel.panic": 10})
    drift = [f for f in ctl.check() if f.key == PERSIST_FILE]
    result = ctl.apply(drift)[0]
    assert result.status is Status.FAILED
    assert "not a regular file" in result.message
    assert victim.read_text() == "precious\n"


def test_later_file_that_wins_at_boot_is_named(root: Path, fake_proc: Path) -> None:
    (root / "etc/sysctl.d/99-local.conf").write_text("kernel.panic = 0\n")
    (root / "etc/sysctl.d/10-early.conf").write_text("kernel.panic = 3\n")
    (root / "usr/lib/sysctl.d").mkdir(parents=True)
    (root / "usr/lib/sysctl.d/99-local.conf").write_text("kernel.panic = 7\n")  # shadowed by /etc
    ctl = control(root, fake_proc, {"kernel.panic": 10})
    ctl.apply([f for f in ctl.check() if f.status is Status.DRIFT])
    findings = by_key(ctl.check())
    boot = findings["kernel.panic@boot"]
    assert boot.status is Status.DRIFT
    assert "/etc/sysctl.d/99-local.conf loads after /etc/sysctl.d/90-k3s-agentd.conf" in boot.message
    assert ctl.apply([boot])[0].status is Status.DRIFT  # not ours to edit
    assert (root / "etc/sysctl.d/99-local.conf").read_text() == "kernel.panic = 0\n"
    assert boot_winners(Host(root=str(root)))["kernel/panic"][0] == "/etc/sysctl.d/99-local.conf"


def test_sysctl_conf_is_applied_last(root: Path, fake_proc: Path) -> None:
    (root / "etc/sysctl.conf").write_text("# comment\nkernel/panic=2\n")
    assert boot_winners(Host(root=str(root)))["kernel/panic"] == ("/etc/sysctl.conf", "2")


def _policy_with(sysctl_items: dict[str, object], k3s_items: tuple[str, ...] = ()) -> Policy:
    sysctl = ControlPolicy(
        "sysctl", Mode.ENFORCE, True, {}, {k: {"value": v} for k, v in sysctl_items.items()}
    )
    k3s = ControlPolicy("k3s_args", Mode.ENFORCE, True, {}, {k: {} for k in k3s_items})
    return Policy("t", Mode.ENFORCE, 60, 30, ContestSettings(), {"sysctl": sysctl, "k3s_args": k3s}, (), ())


def test_kubelet_parameters_are_required_with_protect_kernel_defaults(tmp_path: Path) -> None:
    items = {"vm.overcommit_memory": 1, "vm.panic_on_oom": 0, "kernel.panic": 10}
    policy = _policy_with(items, k3s_items=("k3s:protect-kernel-defaults",))
    problems = lint(policy.controls["sysctl"], policy, Host(root=str(tmp_path)))
    assert [p.key for p in problems] == ["kernel.panic_on_oops"]
    assert "refuses to start unless it is 1" in problems[0].reason
    relaxed = _policy_with(items)
    assert lint(relaxed.controls["sysctl"], relaxed, Host(root=str(tmp_path))) == []


def test_dual_stack_is_read_from_k3s_config(tmp_path: Path) -> None:
    config = tmp_path / "etc/rancher/k3s/config.yaml.d/50-net.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("cluster-cidr: 10.42.0.0/16,2001:cafe:42::/56\n")
    policy = _policy_with({"net.ipv6.conf.all.disable_ipv6": 1})
    problems = lint(policy.controls["sysctl"], policy, Host(root=str(tmp_path)))
    assert [p.key for p in problems] == ["net.ipv6.conf.all.disable_ipv6"]
    os.unlink(config)
    assert lint(policy.controls["sysctl"], policy, Host(root=str(tmp_path))) == []


UNIT = "etc/systemd/system/k3s.service"
MAIN_YAML = "etc/rancher/k3s/config.yaml"
DROPINS = MAIN_YAML + ".d"
V6 = "10.42.0.0/16,2001:cafe:42::/56"

# Where the old regex over config.yaml{,.d/*.y*ml} and K3s's own resolution
# (k3s_agent.k3s.facts) disagree, the lint follows K3s.
# (files, dual-stack for K3s, what the regex said)
DUAL_STACK = [
    ({f"{DROPINS}/50-net.YAML": f"cluster-cidr: {V6}\n"}, True, False),  # K3s: .yaml/.yml in any case
    ({MAIN_YAML: "cluster-cidr:\n  - 10.42.0.0/16\n  - 2001:cafe:42::/56\n"}, True, False),
    ({UNIT: f"[Service]\nExecStart=/usr/local/bin/k3s server --cluster-cidr={V6}\n"}, True, False),
    (
        {
            UNIT: "[Service]\nExecStart=/usr/local/bin/k3s server --config /etc/k3s/main.yaml\n",
            "etc/k3s/main.yaml": f"cluster-cidr: {V6}\n",
        },
        True,
        False,
    ),
    (
        {
            MAIN_YAML: f"cluster-cidr: {V6}\n",
            f"{DROPINS}/90-v4.yaml": "cluster-cidr: 10.42.0.0/16\n",  # a later file replaces the value
        },
        False,
        True,
    ),
    ({MAIN_YAML: "kubelet:\n  cluster-cidr: fd00::/56\n"}, False, True),  # not a flag
    ({f"{DROPINS}/50-net.yaml": f"cluster-cidr: {V6}\n"}, True, True),  # agreed: a drop-in
]


def _old_regex(root: Path) -> bool:
    """The sysctl control's guess before it read K3s's facts, kept to show the table's third column."""
    paths = [root / MAIN_YAML, *sorted((root / DROPINS).glob("*.y*ml"))]
    pattern = re.compile(r"(?m)^\s*cluster-cidr\s*\+?:.*[0-9a-fA-F]*:[0-9a-fA-F]*:")
    return any(p.is_file() and pattern.search(p.read_text()) for p in paths)


@pytest.mark.parametrize(("files", "dual_stack", "regex_said"), DUAL_STACK)
def test_dual_stack_follows_k3s_config_resolution(
    tmp_path: Path, files: dict[str, str], dual_stack: bool, regex_said: bool
) -> None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    policy = _policy_with({"net.ipv6.conf.all.disable_ipv6": 1})
    problems = lint(policy.controls["sysctl"], policy, Host(root=str(tmp_path)))
    assert [p.key for p in problems] == (["net.ipv6.conf.all.disable_ipv6"] if dual_stack else [])
    assert _old_regex(tmp_path) == regex_said


def test_read_only_host_refuses_every_write(root: Path) -> None:
    import pytest

    from k3s_agent.host import HostError

    with pytest.raises(HostError, match="read-only run"):
        Host(root=str(root), read_only=True).write_atomic("/etc/x.conf", b"x")
    assert not (root / "etc/x.conf").exists()


CHECK_196MB = """
import json, resource, sys, time
from k3s_agent.controls.sysctl import SysctlControl
from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.model import ControlPolicy
policy = ControlPolicy("sysctl", Mode.ENFORCE, True, {"persist": True}, {"kernel.panic": {"value": 10}})
ctl = SysctlControl(policy, Host(root=sys.argv[1], proc=sys.argv[2]))
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
findings = ctl.check()
spent = time.monotonic() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
rows = [[f.key, f.status.value, f.message] for f in findings]
print(json.dumps({"seconds": spent, "grown_kib": grown, "findings": rows}))
"""


def test_a_196_mb_sysctl_d_file_is_a_finding_in_bounded_time_and_memory(root: Path, fake_proc: Path) -> None:
    """It took 6 s and 791 MiB a check; now it is refused by its size, and named."""
    import json
    import subprocess
    import sys

    big = root / "etc/sysctl.d/60-huge.conf"
    with open(big, "wb") as handle:
        handle.write(b"kernel.panic = 0\n")
        handle.truncate(196 << 20)  # sparse: the size, not the disk
    (root / "etc/sysctl.d/70-small.conf").write_text("kernel.panic = 3\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    argv = [sys.executable, "-c", CHECK_196MB, str(root), str(fake_proc)]
    report = json.loads(subprocess.run(argv, env=env, capture_output=True, check=True).stdout)
    # It was 6-7 s and +380-790 MiB; ~1 ms and nothing now (slack for a loaded CI machine).
    assert report["seconds"] < 2.0 and report["grown_kib"] < 8 << 10, report
    found = {key: (status, message) for key, status, message in report["findings"]}
    status, message = found["/etc/sysctl.d/60-huge.conf@boot"]
    assert status == "drift"
    assert message.startswith(
        "/etc/sysctl.d/60-huge.conf: larger than the 1 MiB read cap (196 MiB, not read)"
    )
    # The other files are still judged: one unreadable file costs its own finding only.
    assert "70-small.conf loads after" in found["kernel.panic@boot"][1]


def test_an_unreadable_boot_file_is_declined_by_apply(root: Path, fake_proc: Path) -> None:
    big = root / "etc/sysctl.d/60-huge.conf"
    big.write_bytes(b"")
    os.truncate(big, 2 << 20)
    ctl = control(root, fake_proc, {"kernel.panic": 10})
    finding = by_key(ctl.check())["/etc/sysctl.d/60-huge.conf@boot"]
    result = ctl.apply([finding])[0]
    assert result.status is Status.DRIFT and result.message.endswith("not ours to edit")
    assert big.stat().st_size == 2 << 20


def test_the_fingerprint_moves_with_a_runtime_write_and_only_then(root: Path, fake_proc: Path) -> None:
    """The fast path for `sysctl -w`, which sends no event: a sample of the raw runtime values."""
    ctl = control(root, fake_proc, {"kernel.panic": 10, "net.ipv4.no_such_thing": 1}, persist=True)
    first = ctl.fingerprint()
    assert ctl.fingerprint() == first  # reading has no effect
    (root / "etc/sysctl.d/50-other.conf").write_text("kernel.panic = 3\n")
    assert ctl.fingerprint() == first  # files have their inotify watch, not this
    (fake_proc / "sys/kernel/panic").write_text("10\n")
    assert ctl.fingerprint() != first
    # a missing key is a stable marker, not an exception
    assert ctl.fingerprint()[1] == ctl.fingerprint()[1] == "<2>"
