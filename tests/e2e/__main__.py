"""Run the scenario outside pytest on a fresh nspawn node: `python3 -m tests.e2e [--keep]`.

Prints one line per step (PASS / SKIPPED: why / FAIL: why) and exits 1 if any
step failed. --keep leaves the node running (its nsenter leader PID is
printed) for poking around; stop it with `kill <nspawn pid>`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e.nspawn import NspawnNode, make_node_rootfs
from tests.e2e.scenario import run_scenario

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.e2e")
    parser.add_argument("--deb", help="a built .deb (default: make deb)")
    parser.add_argument("--keep", action="store_true", help="leave the node running")
    args = parser.parse_args()
    deb = args.deb
    if not deb:
        subprocess.run(["make", "-s", "-C", str(REPO), "deb"], check=True)
        version = subprocess.run(
            ["make", "-s", "-C", str(REPO), "version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        deb = str(REPO / "dist" / f"k3s-hardening-agent_{version}_all.deb")
    work = tempfile.mkdtemp(prefix="k3s-agentd-e2e-", dir="/var/tmp")
    with open(f"{work}/build.log", "w") as log:
        rootfs = make_node_rootfs(work, deb, str(REPO / "tests" / "support" / "k3s_fixture"), log)
    node = NspawnNode(rootfs)
    node.boot()
    print(f"node booted: rootfs {rootfs}, leader pid {node.leader}, console {node.console_log}")
    try:
        results = run_scenario(node)
    finally:
        if args.keep:
            assert node.proc is not None
            print(f"kept running: nsenter -t {node.leader} -a ...; stop: kill {node.proc.pid}")
            print(
                f"operator login: ip netns exec {node.peer.peer_ns} ssh -i {node.peer.key_path} "
                f"operator@{node.peer.address}; after the stop: ip netns del {node.peer.peer_ns} "
                f"{node.peer.node_ns}"
            )
        else:
            node.shutdown()
            subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)
    return 1 if any(r.startswith("FAIL") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
