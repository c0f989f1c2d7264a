"""Benchmark: the K3s controls' check() on the fixture node with a busy journal.

K3s logs a lot: the Running lines are at the start of a run, followed here by
NOISE other lines of the same invocation. Prints the first check() (a full
scan of the run's journal entries), then the median of later checks (which
read only entries added since the last cursor), for k3s_args and
k3s_encryption, and the journal scan rate.
Run: PYTHONPATH=. python3 bench/k3s.py [NOISE]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k3s_agent.controls.k3s_args import K3sArgsControl
from k3s_agent.controls.k3s_encryption import K3sEncryptionControl
from k3s_agent.host import Host
from k3s_agent.k3s.discovery import scan_processes
from k3s_agent.k3s.journal import JournalSource, RunningArgsReader
from k3s_agent.k3s.node import Observer
from k3s_agent.policy.loader import load_policy
from tests.support.k3s_fixture import K3sNode
from tests.support.k3s_fixture.journalfile import invocation, unit_entries, write_journal

ROUNDS = 20


def main() -> None:
    noise = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        node = K3sNode(root)
        host = Host(root=str(root))
        policy = load_policy(host, profile="k3s-cis-server")
        with node.start() as proc:
            inv = invocation()
            lines = proc.log_lines() + [
                f'time="2026-01-01T00:00:00Z" level=info msg="Tunnel server egress proxy {i}"'
                for i in range(noise)
            ]
            t0 = time.perf_counter()
            journal = write_journal(
                root / "k3s.journal", unit_entries("k3s.service", inv, lines, int(time.time() * 1e6))
            )
            print(f"journal: {len(lines)} entries written in {time.perf_counter() - t0:.1f}s")

            def show(h: Host, unit: str) -> dict[str, str]:
                return {"MainPID": str(proc.pid), "InvocationID": inv} if unit == "k3s.service" else {}

            def scan():
                return [p for p in scan_processes() if p.pid == proc.pid]

            for name, cls in (("k3s_args", K3sArgsControl), ("k3s_encryption", K3sEncryptionControl)):
                reader = RunningArgsReader(host, JournalSource(files=[str(journal)]), persist=False)
                control = cls(policy.controls[name], host, Observer(host, reader, show, scan))
                t0 = time.perf_counter()
                control.check()
                first = time.perf_counter() - t0
                later = []
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    control.check()
                    later.append(time.perf_counter() - t0)
                print(
                    f"{name}: first check {first * 1000:.0f} ms ({len(lines) / first:,.0f} entries/s), "
                    f"later checks median {statistics.median(later) * 1000:.1f} ms"
                )


if __name__ == "__main__":
    main()
