"""`k3s-agentctl check` on the K3s fixture's default server and agent (the hardened
config the fixture lays down): no drift but what the fixture deliberately leaves loose.

The fixture leaves, as a fresh K3s node has them, the CNI's IP reservations at 0644
(CIS 1.1.9, fixed by apply's chmod) and, on the server, no audit policy or admission
config yet (files apply writes from the profile's content). Everything else the
profile checks (kubelet, apiserver, controller-manager, scheduler, kube-proxy,
K3s's own flags and files, encryption) is ok, absent (no embedded etcd) or manual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k3s_agent.model import COMPLIANT, Status
from tests.support.k3s_fixture import HARDENED_CONFIG, K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, unit_entries, write_journal
from tests.support.k3sharness import Harness

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]

CNI = ("files", "/var/lib/cni/networks")
LOOSE = {
    "server": {
        CNI,
        ("k3s_args", "/var/lib/rancher/k3s/server/audit.yaml"),
        ("k3s_args", "/var/lib/rancher/k3s/server/psa.yaml"),
    },
    "agent": {CNI},
}
MANUAL = {
    "server": {
        "kubelet:seccomp-default",
        "kube-apiserver:enable-admission-plugins#DenyServiceExternalIPs",
        "kube-apiserver:enable-admission-plugins#AlwaysPullImages",
    },
    "agent": {"kubelet:seccomp-default"},
}


@pytest.mark.parametrize("role", ["server", "agent"])
@pytest.mark.parametrize("fixture", [{}, {"kubelet_config_dir": True}], ids=["flags", "kubelet-config-dir"])
def test_check_on_a_default_fixture_node(tmp_path: Path, role: str, fixture: dict) -> None:
    """Both kubelet styles: flags on the Running line, and K3s >= 1.32's config drop-in."""
    node = K3sNode(tmp_path, role=role, fixture=fixture)
    state = tmp_path / "var/lib/k3s-agentd"
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    with node.start() as proc:
        journal = tmp_path / "var/log/journal/0123456789abcdef0123456789abcdef"
        journal.mkdir(parents=True, exist_ok=True)
        entries = unit_entries(node.unit, "0" * 32, proc.log_lines(), int(time.time() * 1e6) + 1000)
        write_journal(journal / "system.journal", entries)
        controls = ["k3s_args", "files"] + (["k3s_encryption"] if role == "server" else [])
        argv = ["check", "--root", str(tmp_path), "--json", *(f"--control={c}" for c in controls)]
        env = dict(os.environ, K3S_FIXTURE_ROOT=str(tmp_path))  # `k3s secrets-encrypt status`
        run = subprocess.run(
            [sys.executable, "-m", "k3s_agent.cli", *argv], capture_output=True, text=True, env=env
        )
    document = json.loads(run.stdout)
    found = {(c["name"], f["key"]): f for c in document["controls"] for f in c["findings"]}
    assert document["policy"]["profile"] == f"k3s-cis-{role}"
    not_compliant = {
        k: (f["status"], f["message"]) for k, f in found.items() if Status(f["status"]) not in COMPLIANT
    }
    assert set(not_compliant) == LOOSE[role], not_compliant
    assert all(not found[k]["declined"] for k in LOOSE[role])  # apply fixes each
    assert run.returncode == 1, run.stderr  # drift: not compliant
    manual = {k for (c, k), f in found.items() if f["status"] == "manual"}
    assert manual == MANUAL[role]
    args = {k: f for (c, k), f in found.items() if c == "k3s_args"}
    assert args["k3s:service"]["status"] == "ok" and "k3s:running-args" not in args
    checked = {k.split(":", 1)[0] for k, f in args.items() if f["status"] == "ok" and ":" in k}
    parts = {"k3s", "kubelet", "kube-proxy"}
    assert checked >= (
        parts | {"kube-apiserver", "kube-controller-manager", "kube-scheduler"} if role == "server" else parts
    )


def test_a_server_without_kube_proxy(tmp_path: Path) -> None:
    """disable-kube-proxy on a server: its kube-proxy items are absent and the journal
    owes no kube-proxy line."""
    node = K3sNode(tmp_path / "node", config=HARDENED_CONFIG + "disable-kube-proxy: true\n")
    h = Harness(tmp_path, node)
    try:
        h.start()
        found = h.check()
    finally:
        h.stop()
    proxy = found["kube-proxy:metrics-bind-address"]
    assert (proxy.status, proxy.message) == (Status.ABSENT, "kube-proxy is disabled")
    assert "k3s:running-args" not in found
    assert found["kubelet:anonymous-auth"].status is Status.OK
