"""Firewall control: check and heal time, default ruleset, with and without 1000 foreign rules.

Runs as root in fresh network namespaces (nothing on the host changes):
    PYTHONPATH=$PWD python bench/firewall.py [rounds]
Prints one line per (backend, foreign rules, operation): median and p90 in ms.
"heal" is apply() after deleting one of our rules, i.e. the whole atomic
rewrite plus the before/after snapshot of everything foreign.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fwcontrol import make_control
from fwnet import fresh_netns, run_in, sh

from k3s_agent.model import Finding, Status

FOREIGN = 1000


def nft_foreign(ns: str) -> None:
    rules = "\n".join(
        f"    ip daddr 10.43.{i // 250}.{i % 250 + 1} tcp dport 80 counter accept" for i in range(FOREIGN)
    )
    text = f"table ip kube-sim {{\n  chain KUBE-SERVICES {{\n{rules}\n  }}\n}}\n"
    sh("sh", "-c", f"nft -f - <<'EOF'\n{text}EOF", ns=ns)


def ipt_foreign(ns: str) -> None:
    lines = ["*filter", ":KUBE-SERVICES - [0:0]"]
    lines += [
        f"-A KUBE-SERVICES -d 10.43.{i // 250}.{i % 250 + 1}/32 -p tcp --dport 80 -j ACCEPT"
        for i in range(FOREIGN)
    ]
    lines.append("COMMIT")
    sh("sh", "-c", "iptables-legacy-restore -w --noflush <<'EOF'\n" + "\n".join(lines) + "\nEOF", ns=ns)


def break_one(ns: str, backend: str) -> None:
    if backend == "nftables":
        sh("nft", "flush", "chain", "inet", "k3s_agentd", "input", ns=ns)
    else:
        sh("iptables-legacy", "-w", "-D", "K3S-AGENTD-INPUT", "1", ns=ns)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def bench(backend: str, foreign: bool, rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp, fresh_netns("k3sfw-bench") as ns:
        root = Path(tmp)
        if foreign:
            (nft_foreign if backend == "nftables" else ipt_foreign)(ns)
        control = make_control(root, backend)
        drift = [Finding("firewall", "ssh", Status.DRIFT)]
        assert run_in(ns, control.apply, drift)[0].status is Status.HEALED
        checks, heals = [], []
        for _ in range(rounds):
            checks.append(run_in(ns, timed, control.check))
            break_one(ns, backend)
            heals.append(run_in(ns, timed, lambda: control.apply(drift)))
            assert all(f.status is Status.OK for f in run_in(ns, control.check))
        return {"check": checks, "heal": heals}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(f"{'backend':<10} {'foreign':>7} {'op':<6} {'median ms':>10} {'p90 ms':>8}")
    for backend in ("nftables", "iptables"):
        for foreign in (False, True):
            for op, values in bench(backend, foreign, rounds).items():
                values.sort()
                p90 = values[int(len(values) * 0.9) - 1]
                median = statistics.median(values)
                print(f"{backend:<10} {FOREIGN if foreign else 0:>7} {op:<6} {median:>10.2f} {p90:>8.2f}")


if __name__ == "__main__":
    main()
