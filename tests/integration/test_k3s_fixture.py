"""The K3s fixture looks like K3s where the agent looks, and discovery finds it."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from k3s_agent.host import Host
from k3s_agent.k3s.discovery import discover, scan_processes
from tests.support.k3s_fixture import K3sNode

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


def test_scan_counts_only_root_processes(tmp_path: Path):
    """Anyone can run a process named k3s-server with "server" as its first
    argument; when systemd cannot name K3s's main PID, only root's count."""
    # comm comes from the name execve() was given: a link named k3s-server to
    # python3, running a script called "server" (so cmdline[1] == "server").
    folder = Path(tempfile.mkdtemp(prefix="k3sa-lookalike-"))
    try:
        folder.chmod(0o755)
        (folder / "k3s-server").symlink_to(os.path.realpath(sys.executable))
        (folder / "server").write_text("import time\ntime.sleep(60)\n")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        procs = {
            who: subprocess.Popen([*prefix, str(folder / "k3s-server"), "server"], cwd=folder)
            for who, prefix in (("root", []), ("nobody", as_nobody))
        }
        try:
            for proc in procs.values():
                wait_comm(proc.pid, "k3s-server")
            found = {p.pid for p in scan_processes()}
            assert procs["root"].pid in found
            assert procs["nobody"].pid not in found
        finally:
            for proc in procs.values():
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(folder)


def wait_comm(pid: int, comm: str) -> None:
    for _ in range(100):
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never became {comm}")


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
