"""Running args come from real journal entries, and only from the unit's current start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.k3s.journal import JournalSource, RunningArgsReader
from tests.support.k3s_fixture import K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, invocation, unit_entries, write_journal

pytestmark = pytest.mark.skipif(not JOURNAL_REMOTE, reason="systemd-journal-remote not installed")

OLD_CONFIG = "secrets-encryption: true\nkube-apiserver-arg:\n  - anonymous-auth=true\n"
NEW_CONFIG = (
    "secrets-encryption: true\nkube-apiserver-arg:\n  - anonymous-auth=false\n  - request-timeout=300s\n"
)


def _start_lines(root: Path, config: str) -> list[str]:
    """What the K3s fixture logs at a start with this config (a real process run)."""
    node = K3sNode(root, config=config)
    with node.start() as proc:
        return proc.log_lines()


@pytest.fixture
def two_starts(tmp_path: Path) -> dict[str, object]:
    old_lines = _start_lines(tmp_path / "old", OLD_CONFIG)
    new_lines = _start_lines(tmp_path / "new", NEW_CONFIG)
    first, second = invocation(), invocation()
    t0 = int((time.time() - 3600) * 1e6)
    t1 = t0 + 1800 * 10**6
    entries = unit_entries("k3s.service", first, old_lines, t0)
    # An unrelated unit logging a Running line after the restart must not count.
    entries += unit_entries(
        "other.service", invocation(), ['msg="Running kube-apiserver --anonymous-auth=true"'], t1 - 10
    )
    entries += unit_entries("k3s.service", second, new_lines, t1)
    path = write_journal(tmp_path / "system.journal", entries)
    return {"path": path, "first": first, "second": second, "t0": t0 / 1e6, "t1": t1 / 1e6, "root": tmp_path}


def test_only_the_current_invocation_is_used(two_starts: dict[str, object]):
    reader = RunningArgsReader(
        Host(root=str(two_starts["root"])), JournalSource(files=[str(two_starts["path"])])
    )
    got = reader.read("k3s.service", str(two_starts["second"]), float(two_starts["t1"]))
    api = got.get("kube-apiserver")
    assert got.error == ""
    assert api["anonymous-auth"] == ["false"]
    assert api["request-timeout"] == ["300s"]
    assert set(got.components) == {
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
        "kubelet",
        "kube-proxy",
    }
    older = reader.read("k3s.service", str(two_starts["first"]), float(two_starts["t0"]))
    assert older.get("kube-apiserver")["anonymous-auth"] == ["true"]
    assert "request-timeout" not in older.get("kube-apiserver")


def test_start_time_pins_the_run_without_invocation_id(two_starts: dict[str, object]):
    reader = RunningArgsReader(
        Host(root=str(two_starts["root"])), JournalSource(files=[str(two_starts["path"])]), persist=False
    )
    got = reader.read("k3s.service", None, float(two_starts["t1"]) - 1)
    assert got.get("kube-apiserver")["anonymous-auth"] == ["false"]
    assert "process start" in got.since
    # Without any start at all the last line of all runs wins (never an older one).
    unpinned = reader.read("k3s.service", None, None)
    assert unpinned.get("kube-apiserver")["anonymous-auth"] == ["false"]


def test_remembered_after_the_journal_rotated(two_starts: dict[str, object], tmp_path: Path):
    host = Host(root=str(two_starts["root"]))
    (two_starts["root"] / "var/lib/k3s-agentd").mkdir(parents=True, exist_ok=True)
    reader = RunningArgsReader(host, JournalSource(files=[str(two_starts["path"])]))
    reader.read("k3s.service", str(two_starts["second"]), float(two_starts["t1"]))
    # A new agent process, and the start lines are gone from the journal.
    empty = write_journal(
        tmp_path / "rotated.journal",
        unit_entries(
            "k3s.service", str(two_starts["second"]), ["noise"], int(two_starts["t1"] * 1e6) + 5 * 10**6
        ),
    )
    fresh = RunningArgsReader(host, JournalSource(files=[str(empty)]))
    got = fresh.read("k3s.service", str(two_starts["second"]), float(two_starts["t1"]))
    assert got.get("kube-apiserver")["request-timeout"] == ["300s"]
    # ... but never for another start.
    other = fresh.read("k3s.service", invocation(), float(two_starts["t1"]))
    assert other.get("kube-apiserver") is None


def test_unreadable_journal_is_reported(tmp_path: Path):
    reader = RunningArgsReader(
        Host(root=str(tmp_path)), JournalSource(files=[str(tmp_path / "missing.journal")]), persist=False
    )
    got = reader.read("k3s.service", invocation(), None)
    assert got.error.startswith("cannot read the journal")
    assert got.components == {}


def test_a_message_beyond_the_cap_is_skipped_not_parsed_in_part(tmp_path: Path):
    """A Running line of 200 KiB (journald's native protocol allows it): never read in part."""
    from k3s_agent.k3s.journal import MESSAGE_LIMIT

    run = invocation()
    huge = 'msg="Running kube-apiserver --anonymous-auth=true ' + "--x=" + "y" * (200 << 10) + '"'
    lines = [
        'msg="Running kube-apiserver --anonymous-auth=false"',
        huge,
        'msg="Running kubelet --read-only-port=0"',
    ]
    entries = unit_entries("k3s.service", run, lines, int(time.time() * 1e6))
    path = write_journal(tmp_path / "big.journal", entries)
    reader = RunningArgsReader(Host(root=str(tmp_path)), JournalSource(files=[str(path)]), persist=False)
    got = reader.read("k3s.service", run, None)
    assert len(huge) > MESSAGE_LIMIT and got.error == ""
    assert got.get("kube-apiserver")["anonymous-auth"] == ["false"]  # the earlier, whole line stands
    assert got.get("kubelet")["read-only-port"] == ["0"]
