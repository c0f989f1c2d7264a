"""Time from drift to heal, for the real daemon in a network namespace.

Two kinds of drift: a runtime sysctl (no kernel event exists for it, so the
interval bounds it) and an edit of the persisted sysctl.d file (inotify wakes
the loop, at most one event-driven cycle per 5 s). Interval 10 s; 5 samples
each, 12 s apart so no sample waits for an earlier one's cycle; prints median and max.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import converged_root, median

REPO = Path(__file__).resolve().parent.parent
KEY = "net.ipv4.conf.all.send_redirects"


def nsrun(pid: int, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True
    ).stdout.strip()


def wait_until(probe, timeout: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if probe():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise TimeoutError


def main() -> None:
    root, proc = converged_root("k3s-cis-server")
    (root / "etc/k3s-agentd/policy.toml").write_text(
        f'extends = "none"\ninterval = 10\n[contest]\nthreshold = 100\n'
        f'[controls.sysctl.items."{KEY}"]\nvalue = 0\n'
    )
    argv = ["unshare", "--net", "--", sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    persisted = root / "etc/sysctl.d/90-k3s-agentd.conf"
    try:
        wait_until(lambda: (root / "run/k3s-agentd/status.json").exists())
        wait_until(lambda: persisted.exists())
        runtime, files = [], []
        for _ in range(5):
            nsrun(daemon.pid, "sysctl", "-qw", f"{KEY}=1")
            runtime.append(wait_until(lambda: nsrun(daemon.pid, "sysctl", "-n", KEY) == "0"))
            time.sleep(6)  # past the event gap that the runtime heal's cycle opened
            persisted.write_text("# edited by hand\n")
            files.append(wait_until(lambda: persisted.read_text().startswith("# Managed by k3s-agentd")))
            time.sleep(6)  # past the wake-up our own rewrite causes and the event gap
        status = json.loads((root / "run/k3s-agentd/status.json").read_text())
        for label, values in (("runtime sysctl (interval 10s)", runtime), ("sysctl.d edit (inotify)", files)):
            print(f"{label:30} drift -> heal: median {median(values):.2f} s, max {max(values):.2f} s")
        print(f"heals counted by the daemon: {status['daemon']['heals_total']}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)


if __name__ == "__main__":
    main()
