"""Run the e2e scenario (tests/e2e/scenario.py) against VMs of vagrant/Vagrantfile.

    cd vagrant && K3SA_STAGE=package vagrant up && cd ..
    python3 -m tests.vagrant.run_scenario server agent

(vagrant/e2e.sh does exactly this, then `vagrant provision` for the full cluster.)

It drifts and heals each node for real (sysctl, firewall, sshd, files), kills
and restarts the daemon, reboots the node and purges/reinstalls the package
when its file is in /var/cache/k3s-agentd-e2e/: use throw-away VMs. After
every firewall and sshd heal the account `operator` logs in to the node from
the other VM with a key made for the run (tests/e2e/operator.py): both VMs
are needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e.scenario import run_scenario
from tests.vagrant.vagrant_node import VagrantNode, attach_operator_peers

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"


def main(names: list[str]) -> int:
    names = names or ["server", "agent"]
    config = subprocess.run(
        ["vagrant", "ssh-config", *names], cwd=VAGRANT_DIR, check=True, capture_output=True, text=True
    ).stdout
    failed = 0
    with tempfile.NamedTemporaryFile("w", suffix=".ssh_config") as handle:
        handle.write(config)
        handle.flush()
        nodes = {name: VagrantNode(name, handle.name) for name in names}
        # The lock-out probe logs in to each VM from the other (AssertionError if not two).
        peers = attach_operator_peers(nodes, cluster_addresses())
        try:
            for name, node in nodes.items():
                results = run_scenario(node, log=lambda line, n=name: print(f"[{n}] {line}"))
                failed += sum(1 for why in results.values() if why.startswith("FAIL"))
        finally:
            for node in [*nodes.values(), *peers]:
                node.close()
    print(f"{failed} failed step(s)")
    return 1 if failed else 0


def cluster_addresses() -> dict[str, str]:
    """The VMs' addresses on the cluster network, as vagrant/Vagrantfile sets them."""
    net = os.environ.get("K3SA_NET", "10.77.0")
    return {"server": f"{net}.10", "agent": f"{net}.11"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
