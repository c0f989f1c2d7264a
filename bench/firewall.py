"""Firewall control: check and heal time, default ruleset, empty vs 10,000 foreign rules.

Runs as root in fresh network namespaces (nothing on the host changes):
    PYTHONPATH=$PWD python bench/firewall.py [rounds] [foreign]
Prints one line per (backend, foreign rules, operation): median and p90 in ms.
Foreign rules (nftables): `foreign` iptables-nft rules (a kube-proxy node) plus
`foreign` rules in another nft table; (iptables) `foreign` legacy rules.
"first" is the first check of a fresh control (it probes the backend), "auto"
the same with backend = "auto" (K3s's legacy/nft detection first), "heal"
is apply() after flushing our chain (the atomic rewrite plus the foreign audit),
"rss" the peak RSS (VmHWM, MB) of a fresh process running one check, as
`k3s-agentctl check` does.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from k3s_agent.model import Finding, Status  # noqa: E402
from tests.support.fwcontrol import make_control  # noqa: E402 - after the path set-up above
from tests.support.netns import fresh_netns, run_in, sh  # noqa: E402

FOREIGN = 10000
PEAK_PROBE = (
    "import sys; sys.path.insert(1, sys.argv[2]); from pathlib import Path; import tempfile\n"
    "from tests.support.fwcontrol import make_control\n"
    "with tempfile.TemporaryDirectory() as tmp: make_control(Path(tmp), sys.argv[1]).check()\n"
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
)


def load(ns: str, argv: list[str], text: str) -> None:
    """argv with a file holding text as its last argument (too big for a command line)."""
    with tempfile.NamedTemporaryFile("w", suffix=".rules") as f:
        f.write(text)
        f.flush()
        sh(*argv, f.name, ns=ns)


def nft_foreign(ns: str) -> None:
    rules = "\n".join(
        f"    ip daddr 10.43.{i // 250}.{i % 250 + 1} tcp dport 80 counter accept" for i in range(FOREIGN)
    )
    text = f"table ip kube-sim {{\n  chain KUBE-SERVICES {{\n{rules}\n  }}\n}}\n"
    load(ns, ["nft", "-f"], text)


def ipt_foreign(ns: str, variant: str = "legacy", net: int = 43) -> None:
    """FOREIGN rules in iptables' filter table, through iptables-<variant>-restore."""
    lines = ["*filter", ":KUBE-SERVICES - [0:0]"]
    lines += [
        f"-A KUBE-SERVICES -d 10.{net}.{i // 250}.{i % 250 + 1}/32 -p tcp --dport 80 -j ACCEPT"
        for i in range(FOREIGN)
    ]
    lines.append("COMMIT")
    load(ns, [f"iptables-{variant}-restore", "-w", "--noflush"], "\n".join(lines) + "\n")


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
        if foreign and backend == "nftables":
            nft_foreign(ns)
            ipt_foreign(ns, "nft", net=44)
        elif foreign:
            ipt_foreign(ns)
        control = make_control(root, backend)
        drift = [Finding("firewall", "ssh", Status.DRIFT)]
        assert run_in(ns, control.apply, drift)[0].status is Status.HEALED
        rss = [peak_rss(ns, backend) for _ in range(3)]
        firsts = [run_in(ns, timed, make_control(root, backend).check) for _ in range(rounds)]
        # backend = "auto" (the default) also runs K3s's detection on a first check
        autos = [run_in(ns, timed, make_control(root, "auto").check) for _ in range(rounds)]
        checks, heals = [], []
        for _ in range(rounds):
            checks.append(run_in(ns, timed, control.check))
            break_one(ns, backend)
            heals.append(run_in(ns, timed, lambda: control.apply(drift)))
            assert all(f.status is Status.OK for f in run_in(ns, control.check))
        return {"first": firsts, "auto": autos, "check": checks, "heal": heals, "rss": rss}


def peak_rss(ns: str, backend: str) -> float:
    """VmHWM in MB of a fresh interpreter that runs one check."""
    out = sh(sys.executable, "-c", PEAK_PROBE, backend, str(REPO), ns=ns).stdout
    return int(out.strip()) / 1024


def main() -> None:
    global FOREIGN
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    FOREIGN = int(sys.argv[2]) if len(sys.argv) > 2 else FOREIGN
    print(f"{'backend':<10} {'foreign':>7} {'op':<6} {'median ms':>10} {'p90 ms':>8}")
    for backend in ("nftables", "iptables"):
        for foreign in (False, True):
            for op, values in bench(backend, foreign, rounds).items():
                values.sort()
                p90 = values[max(int(len(values) * 0.9) - 1, 0)]
                median = statistics.median(values)
                print(f"{backend:<10} {FOREIGN if foreign else 0:>7} {op:<6} {median:>10.2f} {p90:>8.2f}")


if __name__ == "__main__":
    main()
