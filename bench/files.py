"""Benchmark: the files control's check() over the full default server profile,
and over one recursive item of 10,000 files.

Builds a populated K3s data dir with the real layout (~500 files under
server/tls and agent/) in a temporary root, then times check() (read-only)
and prints the median wall time; then the same for a 100 x 100 file tree under
one recursive item (the capped, iterative walk). Run: PYTHONPATH=. python3 bench/files.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k3s_agent.controls.files import FilesControl
from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.model import ControlPolicy
from tests.support.k3stree import DATA, count_files, populate

ROUNDS = 50
WIDE_ROUNDS = 20


def timed(control: FilesControl, rounds: int) -> list[float]:
    control.check()  # warm the dentry cache and pwd/grp lookups
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        control.check()
        times.append(time.perf_counter() - t0)
    return times


def show(label: str, times: list[float]) -> None:
    print(
        f"{label} over {len(times)} rounds: median {statistics.median(times) * 1000:.2f} ms, "
        f"min {min(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms"
    )


def wide_tree() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "srv/app/tree"
        for d in range(100):
            folder = top / f"d{d:03d}"
            folder.mkdir(parents=True)
            for f in range(100):
                (folder / f"f{f:03d}").write_text("x")
        items = {"/srv/app/tree": {"owner": "root", "max_mode": "0644", "recursive": True}}
        policy = ControlPolicy("files", Mode.ENFORCE, True, {}, items)
        control = FilesControl(policy, Host(root=tmp))
        times = timed(control, WIDE_ROUNDS)
        print(f"one recursive item, {control.entries_seen} entries (100 dirs x 100 files):")
        show("check()", times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        populate(root, temporary_certs=110, manifests=220)
        tls = count_files(root / DATA / "server/tls")
        agent = count_files(root / DATA / "agent")
        host = Host(root=str(root))
        policy = compose(host, [Layer("bench", {"extends": "k3s-cis-server"})])
        control = FilesControl(policy.controls["files"], host)
        times = timed(control, ROUNDS)
        print(f"files under server/tls: {tls}, under agent/: {agent}, total: {tls + agent}")
        print(
            f"policy items: {len(control.rules)}, findings: {len(control.check())}, "
            f"entries checked: {control.entries_seen}"
        )
        show("check()", times)
    wide_tree()


if __name__ == "__main__":
    main()
