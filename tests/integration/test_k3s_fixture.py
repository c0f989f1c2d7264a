"""The K3s fixture looks like K3s where the agent looks, and discovery finds it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import psutil
import pytest
from k3s_fixture import K3sNode

from k3s_agent.host import Host
from k3s_agent.k3s.discovery import discover, scan_processes

pytestmark = pytest.mark.root
DD = "var/lib/rancher/k3s"


def test_process_shape_and_discovery(tmp_path: Path):
    node = K3sNode(tmp_path)
    with node.start() as proc:
        ps = psutil.Process(proc.pid)
        assert ps.name() == "k3s-server"
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes() == b"/usr/local/bin/k3s server\0"
        mine = [p for p in scan_processes() if p.pid == proc.pid]
        assert mine and mine[0].cmdline == ("/usr/local/bin/k3s", "server")
        service = discover(Host(root=str(tmp_path)), show=lambda h, u: {}, scan=lambda: mine)
        assert (service.role, service.unit_name, service.running) == ("server", "k3s.service", True)
        assert service.binary == "/usr/local/bin/k3s"
        assert any(
            line.startswith('time="') and 'msg="Running kube-apiserver --' in line
            for line in proc.log_lines()
        )
    after = discover(Host(root=str(tmp_path)), show=lambda h, u: {}, scan=lambda: [])
    assert after.installed and not after.running


def test_data_dir_layout(tmp_path: Path):
    K3sNode(tmp_path)
    d = tmp_path / DD
    config = (d / "server/cred/encryption-config.json").read_bytes()
    state = (d / "server/cred/encryption-state.json").read_text()
    assert state == "start-" + hashlib.sha256(config).hexdigest()
    assert os.readlink(d / "server/node-token") == "token"
    assert stat.S_IMODE((d / "server/tls/server-ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "server/tls/server-ca.crt").stat().st_mode) == 0o644
    for name in ("admin", "controller", "scheduler"):
        assert stat.S_IMODE((d / f"server/cred/{name}.kubeconfig").stat().st_mode) == 0o600
    for name in ("kubelet.kubeconfig", "kubeproxy.kubeconfig", "client-ca.crt"):
        assert (d / "agent" / name).is_file()
    assert stat.S_IMODE((tmp_path / "etc/systemd/system/k3s.service.env").stat().st_mode) == 0o600


def test_agent_role(tmp_path: Path):
    node = K3sNode(tmp_path, role="agent")
    assert (tmp_path / "etc/systemd/system/k3s-agent.service").is_file()
    assert not (tmp_path / DD / "server").exists()
    with node.start() as proc:
        assert psutil.Process(proc.pid).name() == "k3s-agent"
        logged = " ".join(proc.log_lines())
        assert "Running kubelet" in logged and "Running kube-apiserver" not in logged
