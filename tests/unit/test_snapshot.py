"""The last-good snapshot: saved whole or not at all, and only a policy that really ran."""

from __future__ import annotations

import os
from pathlib import Path

from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.snapshot import FOLDER, load_last_good, save_last_good


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)


def _load(host: Host):
    return load_policy(host, path=None, dropins=None)


def _snapshot_111_then_edit(root: Path) -> tuple[Host, Path]:
    """A snapshot of `interval = 111` taken, then the main file edited to 222."""
    host = Host(root=str(root))
    main = root / "etc/k3s-agentd/policy.toml"
    _write(main, "interval = 111\n")
    assert save_last_good(host, _load(host))
    _write(main, "interval = 222\n")
    return host, main


def test_snapshot_round_trip(root: Path) -> None:
    host = Host(root=str(root))
    _write(root / "etc/k3s-agentd/policy.toml", "interval = 111\n")
    _write(root / "etc/k3s-agentd/policy.d/10-a.toml", "control_timeout = 50\n")
    policy = _load(host)
    assert save_last_good(host, policy)
    again = load_last_good(host)
    assert again is not None
    assert (again.interval, again.control_timeout) == (111, 50)


def test_vanished_dropin_keeps_the_previous_snapshot(root: Path) -> None:
    host, main = _snapshot_111_then_edit(root)
    dropin = root / "etc/k3s-agentd/policy.d/05-a.toml"
    _write(dropin, "control_timeout = 50\n")
    policy = _load(host)
    dropin.unlink()  # gone between the load and the snapshot
    assert not save_last_good(host, policy)
    kept = load_last_good(host)
    # Before the fix the snapshot was emptied and half rewritten: interval 222
    # without the drop-in, a policy that never ran.
    assert kept is not None
    assert kept.interval == 111


def test_file_edited_after_load_is_not_snapshotted(root: Path) -> None:
    host, main = _snapshot_111_then_edit(root)
    policy = _load(host)
    _write(main, "interval = 0\n")  # a bad edit lands before the snapshot reads the file
    assert not save_last_good(host, policy)
    kept = load_last_good(host)
    assert kept is not None
    assert kept.interval == 111


def test_source_swapped_for_symlink_is_not_followed(root: Path, tmp_path_factory) -> None:
    host, main = _snapshot_111_then_edit(root)
    policy = _load(host)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "planted.toml"
    _write(elsewhere, "interval = 222\n")
    main.unlink()
    main.symlink_to(elsewhere)
    assert not save_last_good(host, policy)
    assert load_last_good(host).interval == 111


def test_crash_between_renames_falls_back_to_the_old_copy(root: Path) -> None:
    host = Host(root=str(root))
    _write(root / "etc/k3s-agentd/policy.toml", "interval = 111\n")
    assert save_last_good(host, _load(host))
    state = root / "var/lib/k3s-agentd"
    os.rename(state / FOLDER, state / f"{FOLDER}.old")  # as if killed before the second rename
    kept = load_last_good(host)
    assert kept is not None
    assert kept.interval == 111
