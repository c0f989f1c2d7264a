"""Temps an agent killed mid-write left behind are gone once the daemon has started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.netns import netns_argv

pytestmark = pytest.mark.root

POLICY = """
extends = "none"
interval = 60
[controls.sysctl.items."net.ipv4.conf.all.send_redirects"]
value = 0
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temps_in_managed_folders_are_swept_at_start(root: Path, tmp_path: Path) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text(POLICY)
    # /run/sysctl.d is watched by the sysctl control and never written by it:
    # only the start-up sweep can clean it.
    folder = root / "run/sysctl.d"
    folder.mkdir(parents=True)
    dead = _dead_pid()
    ours = [f".90-k3s-agentd.conf.k3s-agentd.{dead}.tmp", f".50-x.conf.k3s-agentd.{dead}.tmp"]
    theirs = [".50-x.conf.tmp", "50-x.conf.dpkg-new", f".50-x.conf.k3s-agentd.{dead}.tmp~"]
    for name in ours + theirs:
        (folder / name).write_text("kernel.panic = 0\n")
    unset = ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    argv = [sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(netns_argv(argv), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (root / "run/k3s-agentd/status.json").exists():
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert json.loads((root / "run/k3s-agentd/status.json").read_text())["cycle"]
        assert sorted(os.listdir(folder)) == sorted(theirs)
    finally:
        proc.terminate()
        proc.wait(10)
