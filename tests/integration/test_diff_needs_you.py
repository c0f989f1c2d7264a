"""Issue 16's example: a sysctl.d file of someone else's that wins at boot.

Real kernel values in a fresh network namespace, files under a temporary root.
`diff` lists that item under "needs you", not among what would change; apply
leaves that file untouched; the engine never hands it to apply, and neither
the heal-failure count nor the contest tracker counts it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.controls.sysctl import NOT_OURS, PERSIST_FILE
from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy
from tests.support.applied import record_apply
from tests.support.netns import in_netns

pytestmark = pytest.mark.root

KEY = "net.ipv4.conf.all.accept_redirects"
BOOT = f"{KEY}@boot"
FOREIGN = "/etc/sysctl.d/99-foreign.conf"
FOREIGN_TEXT = f"# another tool's file\n{KEY} = 1\n"
POLICY = (
    'extends = "none"\n'
    f'[controls.sysctl.items."{KEY}"]\nvalue = 0\n'
    '[controls.sysctl.items."net.ipv4.conf.all.send_redirects"]\nvalue = 0\n'
)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k3s_agent.cli", *argv], capture_output=True, text=True)


def _set(key: str, value: int) -> None:
    subprocess.run(["sysctl", "-qw", f"{key}={value}"], check=True)


def _by_key(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for c in document["controls"] for f in c["findings"]}


def _engine_sweeps(root: str, policy: str, sweeps: int) -> dict[str, Any]:
    """Sweeps of the daemon's engine; what apply was handed each time, and the events."""
    host = Host(root=root)
    events: list[tuple[str, str]] = []
    engine = Engine(load_policy(host, path=policy), host, on_event=lambda e, f: events.append((e, f.key)))
    applied = record_apply(engine.controls["sysctl"])
    last = None
    for _ in range(sweeps):
        last = engine.run_cycle()
    assert last is not None
    return {
        "applied": applied,
        "events": events,
        "last": {f.key: (f.status.value, f.declined) for f in last.findings()},
        "contested": engine.contest.contest(("sysctl", BOOT)),
    }


def _scenario(root: str, policy: str) -> dict[str, Any]:
    _set(KEY, 1)
    _set("net.ipv4.conf.all.send_redirects", 1)
    common = ["--root", root, "--policy", policy]
    diff = _cli("diff", *common)
    diff_json = _cli("diff", "--json", *common)
    applied = _cli("apply", "--json", *common)
    _set(KEY, 1)  # undone again: the daemon's engine heals it, and only it
    return {
        "diff": (diff.returncode, diff.stdout, diff.stderr),
        "diff_json": (diff_json.returncode, json.loads(diff_json.stdout)),
        "apply": (applied.returncode, json.loads(applied.stdout)),
        "engine": _engine_sweeps(root, policy, sweeps=4),
    }


def test_diff_lists_another_tools_boot_file_under_needs_you_and_apply_leaves_it(root: Path) -> None:
    foreign = root / FOREIGN.lstrip("/")
    foreign.write_text(FOREIGN_TEXT)
    os.utime(foreign, ns=(1_000_000_000, 1_000_000_000))
    policy = root / "policy.toml"
    policy.write_text(POLICY)
    result = in_netns(_scenario, str(root), str(policy))

    rc, out, err = result["diff"]
    lines = out.splitlines()
    why = f"{FOREIGN} loads after {PERSIST_FILE} and sets '1': it wins at boot; {NOT_OURS}"
    assert f"needs you: sysctl {BOOT}: {why}" in lines, out
    assert f"sysctl {BOOT}" not in lines  # not among the changes
    assert {f"sysctl {KEY}", "sysctl net.ipv4.conf.all.send_redirects", f"sysctl {PERSIST_FILE}"} <= set(
        lines
    )
    assert lines[-1] == "3 item(s) would change; 1 item(s) need you (apply leaves them)"
    assert rc == 1  # the node is not compliant: the exit code is the verdict's, as for check

    rc, document = result["diff_json"]
    boot = _by_key(document)[BOOT]
    assert (rc, boot["status"], boot["declined"]) == (1, "drift", NOT_OURS)
    assert _by_key(document)[KEY]["declined"] is None

    rc, document = result["apply"]
    found = _by_key(document)
    assert found[BOOT]["status"] == "drift" and found[BOOT]["declined"] == NOT_OURS
    assert {found[k]["status"] for k in (KEY, "net.ipv4.conf.all.send_redirects", PERSIST_FILE)} == {"healed"}
    assert document["summary"]["by_status"]["failed"] == 0
    assert rc == 1  # still drift: a human must act on the foreign file
    assert foreign.read_text() == FOREIGN_TEXT
    assert foreign.stat().st_mtime_ns == 1_000_000_000

    engine = result["engine"]
    assert engine["applied"] == [[KEY]]  # the first sweep heals the runtime value; the rest: nothing
    assert ("drift", BOOT) in engine["events"]
    assert not [e for e in engine["events"] if e[0] == "failed"]
    assert engine["last"][BOOT] == ("drift", NOT_OURS)
    assert engine["contested"] is None
    assert foreign.read_text() == FOREIGN_TEXT
