from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (run the suite as root, as CI does)")
    for item in items:
        if "root" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty host root for a Host(root=...): real files, nothing of the real /etc."""
    for folder in ("etc/sysctl.d", "etc/k3s-agentd/policy.d", "var/lib/k3s-agentd", "run/k3s-agentd"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    os.chmod(tmp_path / "etc/k3s-agentd", 0o755)
    os.chmod(tmp_path / "etc/k3s-agentd/policy.d", 0o755)
    return tmp_path


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    """A fake /proc/sys for the non-namespaced sysctls (vm.*, kernel.*) the host must keep."""
    proc = tmp_path / "proc"
    values = {
        "vm/panic_on_oom": "0",
        "vm/overcommit_memory": "0",
        "kernel/panic": "0",
        "kernel/panic_on_oops": "0",
        "kernel/keys/root_maxkeys": "200",
        "kernel/keys/root_maxbytes": "20000",
        "net/ipv4/ip_forward": "0",
        "net/ipv4/ip_local_port_range": "32768\t60999",
    }
    for rel, value in values.items():
        path = proc / "sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return proc
