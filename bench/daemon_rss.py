"""Idle cost of k3s-agentd: CPU and RSS over a quiet stretch, and RSS growth over a soak.

python bench/daemon_rss.py [--idle 600] [--interval 60]
    The real daemon in a fresh network namespace against a temporary root
    and a converged fake /proc/sys (default profile), left alone: average
    CPU (share of one core) from /proc/<pid>/stat and VmRSS/VmHWM at the end.
    Goals: CPU <= 0.5 % of a core over 10 minutes, RSS <= 40 MB.

python bench/daemon_rss.py --churn 120
    The same daemon while iptables-nft rules of someone else's (kube-proxy's
    way) change 10 times a second: daemon CPU. Goal: <= 2 % of a core.

python bench/daemon_rss.py --soak 10000
    The daemon's own cycle (Daemon.cycle: engine, merge, status document,
    status and metrics files) run in this process, alternating full sweeps
    and targeted event cycles of one control: VmRSS after 1,000 warm-up
    cycles and after N more. Goal: growth <= 1 MB over 10,000 cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import converged_root, private_netns

REPO = Path(__file__).resolve().parent.parent


def proc_status(pid: object) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def churn(pid: int, seconds: float, per_second: float = 10.0) -> int:
    """kube-proxy's way: iptables-nft rules of its own added and deleted in the daemon's netns."""
    rule = ["INPUT", "-p", "tcp", "--dport", "30080", "-j", "ACCEPT"]
    end, changes = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        verb = "-A" if changes % 2 == 0 else "-D"
        subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables-nft", "-w", verb, *rule], check=True)
        changes += 1
        time.sleep(1 / per_second)
    return changes


def idle(seconds: float, interval: int, churn_seconds: float = 0.0) -> None:
    root, proc = converged_root("k3s-cis-server")
    (root / "etc/k3s-agentd/policy.toml").write_text(f'extends = "k3s-cis-server"\ninterval = {interval}\n')
    argv = ["unshare", "--net", "--", sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    argv += ["--proc", str(proc)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = root / "run/k3s-agentd/status.json"
    try:
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = _python_child(daemon.pid)
        time.sleep(5)  # past start-up and the first cycle's echoes
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        if churn_seconds:
            changes = churn(pid, churn_seconds)
            share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            print(f"iptables-nft churn: {changes} changes in {churn_seconds:g}s: daemon CPU {share:.3%}")
            return
        time.sleep(seconds)
        share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        fields = proc_status(pid)
        cycles = json.loads(status.read_text())["cycle"]["number"]
        print(
            f"idle {seconds:g}s (interval {interval}s, {cycles} cycles): CPU {share:.3%} of a core, "
            f"VmRSS {fields['VmRSS']}, VmHWM {fields['VmHWM']}"
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)


def _python_child(pid: int) -> int:
    """unshare execs the daemon in the same process; wait until it has."""
    for _ in range(100):
        if "python" in Path(f"/proc/{pid}/comm").read_text():
            return pid
        time.sleep(0.05)
    return pid


def soak(cycles: int) -> None:
    import structlog

    from k3s_agent.daemon import Daemon
    from k3s_agent.host import Host

    private_netns()
    root, proc = converged_root("k3s-cis-server")
    (root / "etc/k3s-agentd/policy.toml").write_text('extends = "k3s-cis-server"\n')
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no console I/O in the loop
    daemon = Daemon(Host(root=str(root), proc=str(proc)), None, structlog.get_logger())
    daemon.cycle()  # converge what a temp root can
    name = next(iter(daemon.engine.guards))
    warm_up = 1000  # caches fill, the allocator settles: growth after that is what a soak is about
    rss = {}
    started = time.monotonic()
    for number in range(1, warm_up + cycles + 1):
        if number % 2:
            daemon.trigger, daemon.only = "event", [name]
        daemon.cycle()
        if number in (100, warm_up, warm_up + cycles):
            rss[number] = int(proc_status("self")["VmRSS"].split()[0]) / 1024
    took = time.monotonic() - started
    early, warm, last = rss[100], rss[warm_up], rss[warm_up + cycles]
    print(
        f"soak: {warm_up} + {cycles} cycles (half sweeps, half targeted) in {took:.0f}s; VmRSS after 100: "
        f"{early:.1f} MB, after {warm_up}: {warm:.1f} MB, {cycles} cycles later: {last:.1f} MB "
        f"(growth {last - warm:.2f} MB; {last - early:.2f} MB since cycle 100)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=600.0, help="seconds to watch the idle daemon")
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--soak", type=int, default=0, help="run this many cycles in-process instead")
    parser.add_argument("--churn", type=float, default=0.0, help="seconds of iptables-nft churn, 10/s")
    args = parser.parse_args()
    if args.soak:
        soak(args.soak)
    else:
        idle(args.idle, args.interval, args.churn)


if __name__ == "__main__":
    main()
