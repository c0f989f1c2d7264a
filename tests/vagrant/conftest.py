"""The Vagrant cluster fixture: two VMs (server + agent) brought up offline.

Everything heavy is in vagrant/ci/*.sh (so `make vagrant-test` and a user can
run the same steps by hand); this file drives them, times them, and tears the
cluster down again whatever happened (K3SA_KEEP=1 keeps it for debugging).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # (pytest.TerminalReporter is not exported by Debian 12's pytest 7.2.)
    from _pytest.terminal import TerminalReporter

    from tests.vagrant.vagrant_node import VagrantNode

REPO = Path(__file__).resolve().parents[2]
CI_DIR = REPO / "vagrant" / "ci"
SSH_CONFIG = REPO / "vagrant" / ".vagrant" / "ssh_config"
FIXTURE_DIR = REPO / "tests" / "support" / "k3s_fixture"
# Must match vagrant/Vagrantfile (K3SA_NET default) and the libvirt network.
CLUSTER_NET = "10.77.0"
CLUSTER_CIDR = f"{CLUSTER_NET}.0/24"
ADDRESSES = {"server": f"{CLUSTER_NET}.10", "agent": f"{CLUSTER_NET}.11"}
# Where the scenario's package-lifecycle step looks for the package file
# (vagrant/provision/agent.sh keeps a copy there in the package stage).
E2E_PACKAGE_DIR = "/var/cache/k3s-agentd-e2e"


@dataclasses.dataclass
class Cluster:
    nodes: dict[str, VagrantNode]
    # Each node's address on the management network: this machine reaches it
    # from 192.168.121.1, an address outside the cluster network.
    mgmt: dict[str, str]
    timings: dict[str, float]
    log: Path
    # Seconds per scenario step, per node (filled by test_cluster.py).
    steps: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


# The session's cluster, for the timing summary at the end of the run.
_CLUSTERS: list[Cluster] = []


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Where the minutes went: printed whether the run passed or not, so the
    CI log always tells how close the suite is to its time budget."""
    for cluster in _CLUSTERS:
        terminalreporter.section("vagrant timings")
        for phase, secs in cluster.timings.items():
            terminalreporter.write_line(f"{phase:<40} {secs:7.0f} s")
        for name, steps in cluster.steps.items():
            line = ", ".join(f"{step} {secs:.0f}" for step, secs in steps.items())
            terminalreporter.write_line(f"{name} scenario steps (s): {line}")


def _say(line: str) -> None:
    sys.stderr.write(f"\n[vagrant] {line}\n")


def _run_logged(argv: list[str], log: Path, env: dict[str, str], timeout: float) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
        )
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:])
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}; log {log}:\n{tail}")


def _package(log: Path) -> Path:
    """The .deb to install: K3SA_PKG_DIR's, else `make deb` builds it into dist/."""
    given = os.environ.get("K3SA_PKG_DIR")
    folder = Path(given) if given else REPO / "dist"
    if not given:
        _run_logged(["make", "-C", str(REPO), "deb"], log, dict(os.environ), 900)
    debs = sorted(folder.glob("k3s-hardening-agent_*_all.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise AssertionError(f"no k3s-hardening-agent .deb in {folder}")
    return debs[-1]


def _mgmt_addresses(ssh_config: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    host = None
    for line in ssh_config.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "Host":
            host = words[1]
        elif len(words) == 2 and words[0] == "HostName" and host:
            found[host] = words[1]
    return found


def _install_fixture(node: VagrantNode, role: str) -> None:
    """The K3s fixture (tests/support/k3s_fixture) in place of real K3s: copy it in, run its installer."""
    for path in sorted(FIXTURE_DIR.iterdir()):
        if path.is_file() and not path.name.endswith(".pyc"):
            node.copy_in(path.read_bytes(), f"/opt/k3s_fixture/{path.name}", 0o755)
    node.run(["/bin/sh", "/opt/k3s_fixture/install.sh", "/", role], timeout=180)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the Vagrant suite starts libvirtd and VMs: run it as root")
    # The Node protocol and the scenario come with the e2e suite (tests/e2e).
    from tests.vagrant.vagrant_node import VagrantNode, attach_operator_peers, wait_ssh

    log = tmp_path_factory.mktemp("vagrant") / "vagrant.log"
    env = dict(os.environ)
    timings: dict[str, float] = {}
    nodes: dict[str, VagrantNode] = {}
    peers: list[VagrantNode] = []
    started = time.monotonic()
    try:
        deb = _package(log)
        timings["package"] = time.monotonic() - started
        env["K3SA_PKG_DIR"] = str(deb.parent)
        mark = time.monotonic()
        _run_logged([str(CI_DIR / "up.sh"), "server", "agent"], log, env, 2400)
        timings["up (host set-up, box, vagrant up)"] = time.monotonic() - mark
        for line in log.read_text().splitlines():
            if "timings:" in line:
                _say(line.split("] ", 1)[-1])
        nodes = {name: VagrantNode(name, str(SSH_CONFIG)) for name in ("server", "agent")}
        wait_ssh(list(nodes.values()))
        # The lock-out probe (tests/e2e/operator.py): each VM logs in to the other.
        peers = attach_operator_peers(nodes, ADDRESSES)
        mark = time.monotonic()
        # The package stage (vagrant/provision/agent.sh install-only) left the
        # package file in E2E_PACKAGE_DIR for the scenario's reinstall step.
        for name, node in nodes.items():
            _install_fixture(node, name)
        # The fixture does not listen: stand-ins on K3s's ports, as K3s would.
        nodes["server"].listen(6443)
        for node in nodes.values():
            node.listen(10250)
        timings["fixture"] = time.monotonic() - mark
        _say(f"cluster ready in {time.monotonic() - started:.0f}s; log {log}")
        made = Cluster(nodes, _mgmt_addresses(SSH_CONFIG), timings, log)
        _CLUSTERS.append(made)
        yield made
    finally:
        for node in [*nodes.values(), *peers]:
            node.close()  # the shared SSH connections are ssh processes we started
        if os.environ.get("K3SA_KEEP") == "1":
            _say(f"K3SA_KEEP=1: VMs left running (vagrant/ci/cleanup.sh --daemons removes them); log {log}")
        else:
            mark = time.monotonic()
            # CI: stop the libvirt daemons too (only if our set-up started them).
            _run_logged([str(CI_DIR / "cleanup.sh"), "--daemons"], log, env, 600)
            timings["destroy + clean-up"] = time.monotonic() - mark
        _say("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
