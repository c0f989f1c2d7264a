"""Shared set-up for the benchmarks: a temporary root and /proc that satisfy the default profile."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy


def converged_root(profile: str = "k3s-cis-server") -> tuple[Path, Path]:
    """A temp root + fake /proc/sys holding every value the profile's sysctl items want."""
    base = Path(tempfile.mkdtemp(prefix="k3s-agentd-bench-"))
    root, proc = base / "root", base / "proc"
    for folder in ("etc/sysctl.d", "var/lib/k3s-agentd", "run/k3s-agentd", "etc/k3s-agentd"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (proc / "sys").mkdir(parents=True)  # the firewall lint lists processes under it
    policy = load_policy(Host(root=str(root), proc=str(proc)), profile=profile)
    for key, item in policy.controls["sysctl"].items.items():
        path = proc / "sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{item['value']}\n")
    os.chmod(root, 0o755)
    return root, proc


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def private_netns() -> None:
    """Re-run this script in a fresh network namespace: a bench must never touch the host firewall."""
    if os.environ.get("K3S_AGENTD_BENCH_NETNS") == "1":
        return
    import sys

    env = dict(os.environ, K3S_AGENTD_BENCH_NETNS="1")
    os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv], env)
