"""k3s_args against the K3s fixture: a real process, real files, real journal entries."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from k3s_agent.controls import k3s_args
from k3s_agent.controls.k3s_args import K3sArgsControl
from k3s_agent.host import Host
from k3s_agent.k3s.node import Observer
from k3s_agent.model import Status
from k3s_agent.policy.loader import Layer, compose, load_policy
from k3s_agent.policy.schema import PolicyError
from tests.support.k3s_fixture import HARDENED_CONFIG
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, unit_entries, write_journal
from tests.support.k3sharness import ETCD_ITEMS, MANUAL_ITEMS, not_ok

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]

VANILLA = 'write-kubeconfig-mode: "0600"\n'


def test_not_installed_is_absent(tmp_path: Path):
    host = Host(root=str(tmp_path))
    policy = load_policy(host, profile="k3s-cis-server")
    control = K3sArgsControl(
        policy.controls["k3s_args"], host, Observer(host, show=lambda h, u: {}, scan=lambda: [])
    )
    findings = control.check()
    assert findings and {f.status for f in findings} == {Status.ABSENT}
    assert len(findings) == len(policy.controls["k3s_args"].items)


def test_installed_not_running(make):
    h = make()
    found = h.check()
    assert found["k3s:service"].status is Status.DRIFT
    assert "installed (k3s.service) but not running" in found["k3s:service"].message
    # Items fall back to the configuration alone, and say so.
    assert found["kube-apiserver:anonymous-auth"].status is Status.OK
    assert "not verifiable" in found["kube-apiserver:anonymous-auth"].message


def test_hardened_node_is_compliant_and_files_are_kept(make):
    h = make()
    h.start()
    found = h.check()
    assert not_ok(found) == {}
    # Manual checks are reported, never required; the etcd client TLS needs embedded etcd (sqlite here).
    assert {k for k, f in found.items() if f.status is Status.MANUAL} == MANUAL_ITEMS
    assert {k for k, f in found.items() if f.status is Status.ABSENT} == ETCD_ITEMS
    assert found["k3s:service"].status is Status.OK
    assert "k3s:running-args" not in found
    audit, psa = "/var/lib/rancher/k3s/server/audit.yaml", "/var/lib/rancher/k3s/server/psa.yaml"
    assert found[audit].status is Status.DRIFT and found[audit].observed == "missing"
    results = {f.key: f for f in h.control.apply([found[audit], found[psa]])}
    assert results[audit].status is Status.HEALED and results[psa].status is Status.HEALED
    again = h.check()
    assert again[audit].status is Status.OK and again[psa].status is Status.OK
    assert (h.node.path(psa).stat().st_mode & 0o777) == 0o600
    # Someone edits the audit policy: drift, and a heal restores it with a backup.
    h.node.path(audit).write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n")
    edited = h.check()[audit]
    assert edited.status is Status.DRIFT and edited.observed == "differs"
    assert "previous copy" in h.control.apply([edited])[0].message


def test_configured_but_not_running_is_pending(make):
    h = make(config=VANILLA)
    h.start()
    h.node.write_config(HARDENED_CONFIG)
    found = h.check()
    item = found["kube-controller-manager:terminated-pod-gc-threshold"]
    assert item.status is Status.PENDING
    assert "restart pending" in item.message
    assert found["k3s:secrets-encryption"].status is Status.PENDING
    h.start()  # the operator restarts K3s
    assert h.check()["kube-controller-manager:terminated-pod-gc-threshold"].status is Status.OK


def test_running_but_not_configured(make):
    h = make()
    h.start()
    h.node.write_config(VANILLA)
    found = h.check()
    item = found["kube-apiserver:audit-log-maxage"]
    assert item.status is Status.DRIFT
    assert "running but not configured" in item.message
    assert item.observed == {"configured": None, "running": "30"}


def test_missing_everywhere(make):
    h = make(config=VANILLA)
    h.start()
    found = h.check()
    item = found["kube-apiserver:request-timeout"]
    assert item.status is Status.DRIFT and item.message.startswith("not set")
    # K3s's own defaults count: anonymous-auth is false without any config.
    assert found["kube-apiserver:anonymous-auth"].status is Status.OK
    assert found["kube-apiserver:enable-admission-plugins"].message == "lacks EventRateLimit"


def test_remediate_config_writes_dropin_then_restart_heals(make):
    h = make(config=VANILLA, options={"remediate": "config"})
    h.start()
    drift = [
        f
        for f in h.control.check()
        if f.status is Status.DRIFT and ":" in f.key and not f.key.startswith(("k3s:service", "/"))
    ]
    assert len(drift) >= 10
    results = h.control.apply(drift)
    assert {r.status for r in results} == {Status.PENDING}, [
        (r.key, r.message) for r in results if r.status is not Status.PENDING
    ]
    dropin = h.node.path("/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml")
    assert dropin.exists() and (dropin.stat().st_mode & 0o777) == 0o600
    assert "kube-apiserver-arg:" in dropin.read_text() and "-arg+:" not in dropin.read_text()
    assert {s for s, _ in not_ok(h.check()).values()} <= {"pending"}
    h.start()  # K3s (the fixture, reading config its own way) restarts with our drop-in
    assert not_ok(h.check()) == {}


def test_remediation_blocked_by_execstart_flag(make):
    h = make(
        config=VANILLA,
        options={"remediate": "config"},
        exec_flags=["--kube-apiserver-arg=anonymous-auth=true"],
    )
    h.start()
    found = h.check()
    item = found["kube-apiserver:anonymous-auth"]
    assert item.status is Status.DRIFT
    result = h.control.apply([item])[0]
    assert result.status is Status.DRIFT and "cannot be fixed" in result.message


def test_remediation_off_by_default(make):
    h = make(config=VANILLA)
    h.start()
    item = h.check()["kube-apiserver:request-timeout"]
    result = h.control.apply([item])[0]
    assert result.status is Status.DRIFT and 'remediate = "config"' in result.message
    assert not h.node.path("/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml").exists()


def test_agent_node(make):
    h = make(
        role="agent",
        config="protect-kernel-defaults: true\nkubelet-arg:\n  - streaming-connection-idle-timeout=5m0s\n",
    )
    h.start()
    found = h.check()
    assert found["k3s:service"].observed.startswith("agent")
    assert found["kubelet:streaming-connection-idle-timeout"].status is Status.OK  # 5m0s == 5m
    assert found["k3s:protect-kernel-defaults"].status is Status.OK
    assert found["kubelet:tls-cipher-suites"].status is Status.DRIFT


def test_kubelet_settings_from_config_dropins(make):
    """K3s >= 1.32: protectKernelDefaults lives in kubelet.conf.d, not on the command line."""
    h = make(fixture={"kubelet_config_dir": True})
    h.start()
    running = h.control.observer.observe().running.get("kubelet")
    assert "protect-kernel-defaults" not in running
    assert h.check()["k3s:protect-kernel-defaults"].status is Status.OK
    dropin = h.node.path("/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/00-k3s-defaults.conf")
    dropin.write_text(
        dropin.read_text().replace("protectKernelDefaults: true", "protectKernelDefaults: false")
    )
    assert h.check()["k3s:protect-kernel-defaults"].status is Status.PENDING


def test_no_running_lines_is_reported(make):
    h = make()
    h.start()
    write_journal(
        h.journal.with_name("empty.journal"),
        unit_entries(h.node.unit, h.invocation, ["hello"], int(time.time() * 1e6)),
    )
    h.journal.unlink()
    h.journal.with_name("empty.journal").rename(h.journal)
    found = h.check()
    assert found["k3s:running-args"].status is Status.DRIFT
    assert "Running kube-apiserver" in found["k3s:running-args"].message


def test_lint_event_rate_limit_needs_admission_config(tmp_path: Path):
    host = Host(root=str(tmp_path))
    layer = Layer(
        "local.toml",
        {
            "extends": "k3s-cis-server",
            "controls": {"k3s_args": {"disable": ["kube-apiserver:admission-control-config-file"]}},
        },
    )
    with pytest.raises(PolicyError, match="EventRateLimit without"):
        compose(host, [layer])


def test_item_keys_are_validated(tmp_path: Path):
    assert k3s_args._key_check("kube-apiserver:anonymous-auth") is None
    assert "component" in k3s_args._key_check("apiserver:anonymous-auth")
    layer = Layer("local.toml", {"controls": {"k3s_args": {"items": {"kubelet:x": {"value": [1]}}}}})
    with pytest.raises(
        PolicyError, match=r"local.toml: controls.k3s_args.items.\"kubelet:x\".value: expected"
    ):
        compose(Host(root=str(tmp_path)), [layer])


def test_later_dropin_beats_ours_and_is_named(make):
    h = make(config=VANILLA, options={"remediate": "config"})
    h.start()
    item = h.check()["kube-apiserver:request-timeout"]
    assert h.control.apply([item])[0].status is Status.PENDING
    h.node.write_config("kube-apiserver-arg+:\n  - request-timeout=10s\n", name="99-user.yaml")
    again = h.check()["kube-apiserver:request-timeout"]
    assert again.status is Status.DRIFT
    assert "despite /etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml" in again.message
    assert "cannot be fixed" in h.control.apply([again])[0].message


def test_broken_config_is_reported(make):
    h = make()
    h.start()
    h.node.write_config("kube-apiserver-arg: [unclosed\n", name="50-broken.yaml")
    found = h.check()
    assert found["k3s:config"].status is Status.DRIFT
    assert "50-broken.yaml: not valid YAML" in found["k3s:config"].message
    assert found["kube-apiserver:anonymous-auth"].message == "configured arguments unknown"


def test_process_outside_the_unit(make):
    h = make()
    h.start()
    h.show = lambda host, unit: {"ActiveState": "inactive", "MainPID": "0"} if unit == h.node.unit else {}
    h.control = h.build()
    found = h.check()["k3s:service"]
    assert found.status is Status.DRIFT and "outside k3s.service" in found.message


def test_content_file_writable_by_others_is_refused(tmp_path: Path):
    """Content written as root into K3s's admission config must not come from a file others can edit."""
    content = tmp_path / "etc/k3s-agentd/admission.yaml"
    content.parent.mkdir(parents=True)
    content.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\n")
    host = Host(root=str(tmp_path))
    layer = Layer(
        "local.toml",
        {
            "extends": "k3s-cis-server",
            "controls": {"k3s_args": {"admission_config_content": "/etc/k3s-agentd/admission.yaml"}},
        },
    )
    os.chmod(content, 0o644)
    assert "AdmissionConfiguration" in k3s_args.load_content(host, "/etc/k3s-agentd/admission.yaml")
    compose(host, [layer])
    os.chmod(content, 0o666)
    assert k3s_args.load_content(host, "/etc/k3s-agentd/admission.yaml") is None
    with pytest.raises(PolicyError, match="admission_config_content: .*not group/other-writable"):
        compose(host, [layer])
    os.chmod(content, 0o644)
    os.chown(content, 65534, 65534)
    assert k3s_args.load_content(host, "/etc/k3s-agentd/admission.yaml") is None


# A 364-byte config.yaml whose nested aliases wrote out 43 MB of flags before the cap.
BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))
    + "node-label: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
)


def test_billion_laughs_config_is_a_finding_not_megabytes(make):
    h = make()
    h.start()
    h.node.write_config(BILLION_LAUGHS)  # after the start: the fixture reads its config too
    found = h.check()
    assert found["k3s:config"].status is Status.DRIFT
    assert found["k3s:config"].message.startswith("/etc/rancher/k3s/config.yaml: refused: aliases expand it")
    assert found["kube-apiserver:anonymous-auth"].message == "configured arguments unknown"


def test_oversized_config_dropin_and_env_file_are_findings(make):
    h = make()
    h.start()
    h.node.write_config("", name="50-big.yaml")
    os.truncate(h.node.root / "etc/rancher/k3s/config.yaml.d/50-big.yaml", 196 << 20)
    os.truncate(h.node.root / f"etc/systemd/system/{h.node.unit}.env", 2 << 20)
    found = h.check()
    assert "config.yaml.d/50-big.yaml: larger than the 1 MiB read cap (196 MiB" in found["k3s:config"].message
    env = found[f"k3s:file:/etc/systemd/system/{h.node.unit}.env"]
    assert env.status is Status.DRIFT and "larger than the 1 MiB read cap" in env.message
    assert h.control.apply([env])[0].message.endswith("needs an operator")
