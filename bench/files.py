"""Benchmark: the files control's check() over the full default server profile.

Builds a populated K3s data dir with the real layout (~500 files under
server/tls and agent/) in a temporary root, then times check() (read-only)
and prints the median wall time. Run: PYTHONPATH=. python3 bench/files.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from k3stree import DATA, count_files, populate

from k3s_agent.controls.files import FilesControl
from k3s_agent.host import Host
from k3s_agent.policy.loader import Layer, compose

ROUNDS = 50


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        populate(root, temporary_certs=110, manifests=220)
        tls = count_files(root / DATA / "server/tls")
        agent = count_files(root / DATA / "agent")
        host = Host(root=str(root))
        policy = compose(host, [Layer("bench", {"extends": "k3s-cis-server"})])
        control = FilesControl(policy.controls["files"], host)
        control.check()  # warm the dentry cache and pwd/grp lookups
        times = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            findings = control.check()
            times.append(time.perf_counter() - t0)
        print(f"files under server/tls: {tls}, under agent/: {agent}, total: {tls + agent}")
        print(
            f"policy items: {len(control.rules)}, findings: {len(findings)}, "
            f"entries checked: {control.entries_seen}"
        )
        print(
            f"check() over {ROUNDS} rounds: median {statistics.median(times) * 1000:.2f} ms, "
            f"min {min(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms"
        )


if __name__ == "__main__":
    main()
