"""Idle daemon memory: RSS of k3s-agentd after 10 cycles of the default profile (goal < 40 MB).

Runs the real daemon in a fresh network namespace against a temporary root and
a converged fake /proc/sys, with a 1 s interval, and reads VmRSS from /proc.
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
from common import converged_root

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    root, proc = converged_root("k3s-cis-server")
    policy = root / "etc/k3s-agentd/policy.toml"
    policy.write_text('extends = "k3s-cis-server"\ninterval = 1\n')
    argv = ["unshare", "--net", "--", sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    argv += ["--proc", str(proc)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = root / "run/k3s-agentd/status.json"
    try:
        deadline = time.monotonic() + 120
        cycles = 0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                cycles = json.loads(status.read_text())["cycle"]["number"]
            except (OSError, ValueError, KeyError):
                continue
            if cycles >= 10:
                break
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
            if ":" in line
        )
        print(f"after {cycles} cycles: VmRSS {fields['VmRSS'].strip()}, VmHWM {fields['VmHWM'].strip()}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)


if __name__ == "__main__":
    main()
