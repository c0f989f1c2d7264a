"""Agent-only K3s nodes (`k3s agent`): the fixture's agent role is what a real agent
looks like, and the agent profile checks only what runs there.

A default agent node checked with the agent profile has findings only for
K3s's own agent flags, the kubelet, kube-proxy and the agent's files, all
compliant; a loosened one drifts exactly where it was loosened; the server
profile on an agent reports every server part absent and remediation never
writes a server setting there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.k3s import args as k3sargs
from k3s_agent.model import Finding, Status
from k3s_agent.policy.loader import load_policy
from tests.support.k3s_fixture import K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, unit_entries, write_journal
from tests.support.k3s_fixture.layout import AGENT_LB, SERVER_URL
from tests.support.k3sharness import Harness

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]

DD = "var/lib/rancher/k3s"
AGENT_PARTS = {k3sargs.K3S, *k3sargs.AGENT_COMPONENTS}
DROPIN = "/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml"


def test_fixture_agent_is_laid_out_like_k3s_agent(tmp_path: Path):
    node = K3sNode(tmp_path, role="agent")
    assert node.unit == "k3s-agent.service"
    unit = (tmp_path / "etc/systemd/system/k3s-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/k3s \\\n    agent" in unit
    assert "EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env" in unit
    assert node.unit_env() == {"K3S_URL": SERVER_URL, "K3S_TOKEN": "K10fixture::server:secret"}
    assert (tmp_path / "etc/systemd/system/k3s-agent.service.env").stat().st_mode & 0o777 == 0o600
    # Only the agent's part of the data dir; the admin kubeconfig is a server's.
    assert sorted(os.listdir(tmp_path / DD)) == ["agent", "data"]
    assert not (tmp_path / "etc/rancher/k3s/k3s.yaml").exists()
    assert (tmp_path / "etc/rancher/node/password").stat().st_mode & 0o777 == 0o600
    kubelet = (tmp_path / DD / "agent/kubelet.kubeconfig").read_text()
    assert f"server: {AGENT_LB}" in kubelet and "/var/lib/rancher/k3s/agent/client-kubelet.crt" in kubelet
    assert "/server/" not in kubelet


def test_fixture_agent_process_and_log(tmp_path: Path):
    node = K3sNode(tmp_path, role="agent")
    with node.start() as proc:
        process = psutil.Process(proc.pid)
        assert process.name() == "k3s-agent"
        # One word, as gspt.SetProcTitle leaves it (psutil would split it at the space).
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes() == b"/usr/local/bin/k3s agent\0"
        lines = proc.log_lines()
    assert "Starting k3s agent v1.31.4+k3s1" in lines[0]
    running = [k3sargs.parse_running_line(line) for line in lines]
    assert [r[0] for r in running if r] == ["kubelet", "kube-proxy"]
    assert 'msg="k3s agent is up and running"' in lines[-1]
    assert any(a.startswith("--kubeconfig=/var/lib/rancher/k3s/agent/") for a in lines[1].split())


@pytest.mark.parametrize(
    "env, config, joined, refusal",
    [
        ({}, None, True, "--server is required"),  # no K3S_URL, no server: in config.yaml
        ({}, f"server: {SERVER_URL}\ntoken: abc\n", True, ""),  # the config file way
        ({"K3S_URL": SERVER_URL}, None, False, "--token is required"),  # never joined, no token
        ({"K3S_URL": SERVER_URL}, None, True, ""),  # its client certificate from an earlier join
        ({"K3S_URL": SERVER_URL, "K3S_TOKEN": "abc"}, None, False, ""),
    ],
)
def test_fixture_agent_refuses_like_k3s(tmp_path: Path, env, config, joined, refusal):
    """pkg/cli/agent/agent.go Run: --server is required; --token unless the node joined before."""
    node = K3sNode(tmp_path, role="agent", env=env)  # env: the unit's env file
    if config is not None:
        node.write_config(config)
    if not joined:
        (tmp_path / DD / "agent/client-kubelet.key").unlink()
    if refusal:
        with pytest.raises(RuntimeError, match=f'level=fatal msg="{refusal}"'):
            node.start()
    else:
        with node.start() as proc:
            assert psutil.Process(proc.pid).name() == "k3s-agent"


def _engine_cycle(tmp_path: Path, node: K3sNode, profile=None, enforce=False):
    """One engine cycle over the K3s controls and files, K3s's journal in the root."""
    host = Host(root=str(tmp_path))
    (tmp_path / "var/lib/k3s-agentd").mkdir(parents=True, exist_ok=True)
    os.chmod(tmp_path / "var/lib/k3s-agentd", 0o700)
    with node.start() as proc:
        journal_dir = tmp_path / "var/log/journal/0123456789abcdef0123456789abcdef"
        journal_dir.mkdir(parents=True, exist_ok=True)
        entries = unit_entries(node.unit, "0" * 32, proc.log_lines(), int(time.time() * 1e6) + 1000)
        write_journal(journal_dir / f"system-{time.monotonic_ns()}.journal", entries)
        policy = load_policy(host, profile=profile)
        report = Engine(policy, host).run_cycle(enforce=enforce, only=["k3s_args", "k3s_encryption", "files"])
    return policy, report


def _k3s_findings(report) -> dict[tuple[str, str], Finding]:
    """k3s_args and k3s_encryption findings, and the files findings of K3s's paths."""
    return {
        (f.control, f.key): f
        for f in report.findings()
        if f.control != "files" or "rancher" in f.key or f.key.startswith("/etc/systemd/system/k3s")
    }


def test_default_agent_node_with_the_agent_profile(tmp_path: Path):
    """`extends = "auto"` picks k3s-cis-agent; every finding is about an agent part, and ok."""
    node = K3sNode(tmp_path, role="agent")
    policy, report = _engine_cycle(tmp_path, node)
    assert policy.profile == "k3s-cis-agent"
    found = _k3s_findings(report)
    args = {k: f for (c, k), f in found.items() if c == "k3s_args" and k != "k3s:service"}
    assert args and {k.split(":", 1)[0] for k in args} <= AGENT_PARTS
    assert "kubelet:anonymous-auth" in args and "kubelet:read-only-port" in args
    assert not [k for (c, k) in found if c == "k3s_encryption"], "the agent profile has no encryption items"
    assert not [k for (c, k) in found if "/k3s/server" in k], "a server path in an agent node's findings"
    files = {k for (c, k) in found if c == "files" and found[(c, k)].status is Status.OK}
    assert "/var/lib/rancher/k3s/agent/kubelet.kubeconfig" in files
    assert "/etc/systemd/system/k3s-agent.service.env" in files
    settled = (Status.OK, Status.ABSENT, Status.MANUAL)
    not_ok = {k: (f.status.value, f.message) for k, f in found.items() if f.status not in settled}
    assert not_ok == {}
    facts = {c.name: c.facts for c in report.controls}
    assert facts["k3s_args"]["role"] == "agent"
    service = found[("k3s_args", "k3s:service")]
    assert service.status is Status.OK and service.observed.startswith("agent pid ")
    assert service.observed.endswith("(k3s-agent)")


LOOSE_AGENT = """\
kubelet-arg:
  - "anonymous-auth=true"
  - "read-only-port=10255"
  - "streaming-connection-idle-timeout=0"
"""


def test_loosened_agent_node_drifts_where_loosened(tmp_path: Path):
    node = K3sNode(tmp_path, role="agent", config=LOOSE_AGENT)
    os.chmod(tmp_path / DD / "agent/kubelet.kubeconfig", 0o644)
    _policy, report = _engine_cycle(tmp_path, node)
    found = _k3s_findings(report)
    drift = {k: f.cis for (c, k), f in found.items() if f.status is Status.DRIFT}
    assert drift == {
        "k3s:protect-kernel-defaults": None,
        "kubelet:anonymous-auth": "4.2.1",
        "kubelet:read-only-port": "4.2.4",
        "kubelet:streaming-connection-idle-timeout": "4.2.5",
        "kubelet:tls-cipher-suites": "4.2.12",
        "/var/lib/rancher/k3s/agent/kubelet.kubeconfig": "4.1.5/4.1.6",
    }, drift


def test_server_profile_on_an_agent_node(tmp_path: Path):
    """Every server part is absent (apiserver, controller-manager, scheduler, server-only
    K3s flags, encryption); remediation writes the agent's settings only."""
    config = 'protect-kernel-defaults: true\nkubelet-arg: ["read-only-port=10255"]\n'
    node = K3sNode(tmp_path, role="agent", config=config)
    h = Harness(tmp_path, node, "k3s-cis-server", options={"remediate": "config"})
    try:
        h.start()
        found = h.check()
        server = {k: f for k, f in found.items() if k3sargs.server_only(*k.split(":", 1)) and ":" in k}
        assert "kube-apiserver:anonymous-auth" in server and "k3s:secrets-encryption" in server
        assert {f.status for f in server.values()} == {Status.ABSENT}
        assert found["k3s:secrets-encryption"].message == "--secrets-encryption is a flag of servers only"
        assert not [k for k in found if k.startswith("/var/lib/rancher/k3s/server")]  # no managed files
        drift = [f for f in found.values() if f.status is Status.DRIFT]
        assert {f.key for f in drift} == {"kubelet:read-only-port", "kubelet:tls-cipher-suites"}
        results = {r.key: r for r in h.control.apply(drift)}
        assert {r.status for r in results.values()} == {Status.PENDING}, results
        written = node.path(DROPIN).read_text()
        assert "kubelet-arg:" in written
        for server_setting in ("kube-apiserver-arg", "secrets-encryption", "kube-controller-manager-arg"):
            assert server_setting not in written, written
        assert not node.path("/var/lib/rancher/k3s/server").exists()
        # K3s (the fixture) starts on the written config, and the items hold.
        h.start()
        after = h.check()
        assert after["kubelet:tls-cipher-suites"].status is Status.OK
        assert after["kubelet:read-only-port"].status is Status.OK
    finally:
        h.stop()


def test_agent_whose_server_disables_kube_proxy(tmp_path: Path):
    """`disable-kube-proxy` is a server flag the agent takes from its server
    (k3s-io/k3s pkg/agent/config: AgentConfig.DisableKubeProxy = controlConfig.DisableKubeProxy),
    so nothing on the agent says kube-proxy will not run: an agent without a
    'Running kube-proxy' line is not a broken journal, and its kube-proxy items
    are judged on what is configured."""
    node = K3sNode(tmp_path, role="agent")
    h = Harness(tmp_path, node, "k3s-cis-agent")
    try:
        h.start()
        h.entries = [e for e in h.entries if "Running kube-proxy" not in str(e["MESSAGE"])]
        h.journal.unlink()
        write_journal(h.journal, h.entries)
        found = h.check()
        assert "k3s:running-args" not in found, found.get("k3s:running-args")
        proxy = found["kube-proxy:metrics-bind-address"]
        assert proxy.status is Status.OK, proxy
        assert found["kubelet:anonymous-auth"].status is Status.OK  # the kubelet line still read
    finally:
        h.stop()


def test_an_agent_ignores_disable_kube_proxy_in_its_own_config(tmp_path: Path):
    """`disable-kube-proxy` is a server flag: `k3s agent` drops it from its config files
    (pkg/configfilearg stripInvalidFlags) and runs kube-proxy, so the agent's kube-proxy
    items are still judged (here: a metrics address on every interface)."""
    config = 'disable-kube-proxy: true\nkube-proxy-arg: ["metrics-bind-address=0.0.0.0:10249"]\n'
    node = K3sNode(tmp_path, role="agent", config=config)
    h = Harness(tmp_path, node, "k3s-cis-agent")
    try:
        h.start()
        proxy = h.check()["kube-proxy:metrics-bind-address"]
        assert proxy.status is Status.DRIFT, proxy
        assert "0.0.0.0:10249" in proxy.message
    finally:
        h.stop()
