"""Full check cycle of the default profile with no drift: median wall time (goal < 20 ms).

Usage: python bench/cycle.py [--profile k3s-cis-server] [--runs 200]
The root and /proc/sys are temporary and converged first, so the numbers are
for the steady state a healthy node spends its life in.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import converged_root, median, percentile, private_netns

from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Status
from k3s_agent.policy.loader import load_policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="k3s-cis-server")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    private_netns()
    root, proc = converged_root(args.profile)
    host = Host(root=str(root), proc=str(proc))
    policy = load_policy(host, profile=args.profile)
    engine = Engine(policy, host)
    engine.run_cycle(enforce=True)  # converge what can be converged in a temp root
    timings: list[float] = []
    per_control: dict[str, list[float]] = {}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        report = engine.run_cycle(enforce=False)
        timings.append(time.perf_counter() - t0)
        for control in report.controls:
            per_control.setdefault(control.name, []).append(control.duration)
    drift = [f for f in report.findings() if f.status in (Status.DRIFT, Status.FAILED)]
    print(f"profile {args.profile}: {len(report.findings())} items, {len(drift)} not ok in the temp root")
    print(
        f"full check cycle: median {median(timings) * 1e3:.2f} ms, p95 {percentile(timings, 95) * 1e3:.2f} ms"
    )
    for name, values in per_control.items():
        print(f"  {name:15} median {median(values) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
