"""What wakes the loop: inotify on paths, netlink for nftables and addresses (real kernel)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from k3s_agent.watch import NetlinkWatcher, PathWatcher
from tests.support.netns import in_netns


def _collect(watcher_factory, action, settle: float = 0.5) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    lock = threading.Lock()

    def wake(what: str) -> None:
        with lock:
            seen.append(what)

    watcher = watcher_factory(wake)
    watcher.start()
    time.sleep(0.1)
    action()
    time.sleep(settle)
    watcher.close()
    return seen


def test_path_watcher_wakes_on_edit_and_on_creation(tmp_path: Path) -> None:
    existing = tmp_path / "sshd_config"
    existing.write_text("a\n")
    later = tmp_path / "conf.d" / "new.conf"
    later.parent.mkdir()
    seen = _collect(lambda w: PathWatcher([str(existing), str(later)], w), lambda: existing.write_text("b\n"))
    assert seen, "an edit of a watched file must wake the loop"
    seen = _collect(lambda w: PathWatcher([str(later)], w), lambda: later.write_text("x\n"))
    assert seen, "creating a watched file that did not exist must wake the loop"
    quiet = _collect(lambda w: PathWatcher([str(existing)], w), lambda: None)
    assert quiet == []


def _nft_events() -> dict[str, int]:
    def run(*argv: str) -> None:
        subprocess.run(list(argv), check=True)

    foreign = _collect(
        lambda w: NetlinkWatcher(["nftables:k3s_agentd"], w),
        lambda: run("nft", "add", "table", "inet", "kube"),
    )
    ours = _collect(
        lambda w: NetlinkWatcher(["nftables:k3s_agentd"], w),
        lambda: run("nft", "add", "table", "inet", "k3s_agentd"),
    )
    anything = _collect(
        lambda w: NetlinkWatcher(["nftables"], w), lambda: run("nft", "delete", "table", "inet", "kube")
    )
    addr = _collect(
        lambda w: NetlinkWatcher(["ipv4_addr"], w),
        lambda: run("ip", "addr", "add", "192.0.2.1/32", "dev", "lo"),
    )
    return {"foreign": len(foreign), "ours": len(ours), "anything": len(anything), "addr": len(addr)}


@pytest.mark.root
def test_netlink_watcher_filters_nft_tables_and_sees_addresses() -> None:
    counts = in_netns(_nft_events)
    assert counts["foreign"] == 0, "a change to someone else's table must not wake us"
    assert counts["ours"] >= 1
    assert counts["anything"] >= 1
    assert counts["addr"] >= 1


def test_path_watcher_keeps_watching_a_file_replaced_by_rename(tmp_path: Path) -> None:
    """write_atomic, sed -i and editors replace a file by rename: the next edit must wake us too."""
    config = tmp_path / "sshd_config"
    config.write_text("a\n")
    seen: list[str] = []
    watcher = PathWatcher([str(config)], seen.append)
    watcher.start()
    try:
        time.sleep(0.1)
        replacement = tmp_path / ".sshd_config.tmp"
        replacement.write_text("b\n")
        replacement.rename(config)
        time.sleep(0.5)
        assert seen, "the replace itself must wake the loop"
        seen.clear()
        config.write_text("c\n")  # an edit of the new file
        time.sleep(0.5)
        assert seen, "an edit after a replace must wake the loop (the watch died with the old inode)"
    finally:
        watcher.close()
