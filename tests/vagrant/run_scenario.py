"""Run the e2e scenario (tests/e2e/scenario.py) against VMs of vagrant/Vagrantfile.

    cd vagrant && K3SA_STAGE=package vagrant up && cd ..
    python3 -m tests.vagrant.run_scenario server agent

(vagrant/e2e.sh does exactly this, then `vagrant provision` for the full cluster.)

It drifts and heals each node for real (sysctl, firewall, sshd, files), kills
and restarts the daemon, reboots the node and purges/reinstalls the package
when its file is in /var/cache/k3s-agentd-e2e/: use throw-away VMs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e.scenario import run_scenario
from tests.vagrant.vagrant_node import VagrantNode

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
        for name in names:
            node = VagrantNode(name, handle.name)
            try:
                results = run_scenario(node, log=lambda line, n=name: print(f"[{n}] {line}"))
            finally:
                node.close()
            failed += sum(1 for why in results.values() if why.startswith("FAIL"))
    print(f"{failed} failed step(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
