"""Host reads and writes: never through a link, never stuck on a special file."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from k3s_agent.controls import sshd_lockout
from k3s_agent.controls.sshd_accounts import Account
from k3s_agent.host import Host, HostError


def _finishes(fn: Callable[[], Any], fifo: Path, seconds: float = 5.0) -> dict[str, Any]:
    """Run fn in a thread; if it is stuck opening the FIFO, free it and report that."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    box["stuck"] = worker.is_alive()
    if box["stuck"]:  # a writer end lets the blocked open(2) return
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
    return box


def test_read_of_a_fifo_is_refused_not_stuck(tmp_path: Path) -> None:
    fifo = tmp_path / "etc/planted"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    box = _finishes(lambda: Host(root=str(tmp_path)).read_bytes("/etc/planted"), fifo)
    assert not box["stuck"], "read_bytes blocked on a FIFO"
    assert isinstance(box.get("error"), HostError)
    assert "not a regular file" in str(box["error"])


def test_fifo_authorized_keys_cannot_hang_the_lockout_lint(tmp_path: Path) -> None:
    """Any user can put a FIFO in their ~/.ssh; the policy lint reads it as root."""
    home = tmp_path / "home/mallory"
    (home / ".ssh").mkdir(parents=True)
    fifo = home / ".ssh/authorized_keys"
    os.mkfifo(fifo)
    user = Account("mallory", 4242, 4242, "/home/mallory", "/bin/sh")
    box = _finishes(lambda: sshd_lockout._has_authorized_key(user, {}, Host(root=str(tmp_path))), fifo)
    assert not box["stuck"], "the lint blocked on a FIFO"
    assert box.get("value") is False


def test_write_refuses_a_symlink_target(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "etc/conf").symlink_to(victim)
    with pytest.raises(HostError, match="not a regular file"):
        Host(root=str(tmp_path)).write_atomic("/etc/conf", b"new\n")
    assert victim.read_text() == "keep\n"


NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.mark.root
def test_write_refuses_a_link_in_a_folder_another_user_owns(tmp_path: Path) -> None:
    """e.g. a metrics textfile under a node_exporter folder: its owner must not redirect root's write."""
    (tmp_path / "etc").mkdir()
    theirs = tmp_path / "var/lib/prom"
    theirs.mkdir(parents=True)
    os.chown(theirs, NOBODY, NOBODY)
    (theirs / "sub").symlink_to("../../../etc")  # planted: var/lib/prom/sub -> etc
    with pytest.raises(HostError, match="symlink in a directory others can write"):
        Host(root=str(tmp_path)).write_atomic("/var/lib/prom/sub/cron.d/k3s.prom", b"x 1\n", backup=False)
    assert not (tmp_path / "etc/cron.d").exists()


@pytest.mark.root
def test_write_refuses_another_users_link_in_a_sticky_folder(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (tmp_path / "etc").mkdir()
    link = shared / "out"
    link.symlink_to("../etc")
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(HostError, match="not followed"):
        Host(root=str(tmp_path)).write_atomic("/shared/out/cron.d/x.conf", b"x\n", backup=False)
    assert not (tmp_path / "etc/cron.d").exists()


def test_write_follows_roots_own_links_and_makes_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "srv/conf").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/alt").symlink_to("../srv/conf")  # made by root in a root-only folder
    host = Host(root=str(tmp_path))
    host.write_atomic("/etc/alt/new/x.conf", b"one\n", backup=False)
    assert (tmp_path / "srv/conf/new/x.conf").read_text() == "one\n"
    assert stat.S_IMODE(os.stat(tmp_path / "srv/conf/new").st_mode) == 0o755
    (tmp_path / "etc/abs").symlink_to("/srv/conf")  # absolute: resolved under the host root
    host.write_atomic("/etc/abs/y.conf", b"two\n", backup=False)
    assert (tmp_path / "srv/conf/y.conf").read_text() == "two\n"


def test_write_refuses_dot_dot(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    host = Host(root=str(tmp_path / "root"))
    with pytest.raises(HostError, match="not a normalised path"):
        host.write_atomic("/x/../../escaped.prom", b"x 1\n", backup=False)
    assert not (tmp_path / "escaped.prom").exists()
    assert not (tmp_path / "root/x").exists()


def test_root_given_as_a_symlink_still_works(tmp_path: Path) -> None:
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "tree")
    Host(root=str(tmp_path / "link")).write_atomic("/etc/x.conf", b"x\n", backup=False)
    assert (tmp_path / "tree/etc/x.conf").read_text() == "x\n"


def test_globs_are_host_paths_under_a_root_with_glob_characters(tmp_path: Path) -> None:
    root = tmp_path / "node[1]"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    for name in ("b.conf", "a.conf", ".hidden.conf", "c.txt"):
        (root / "etc/ssh/sshd_config.d" / name).write_text("")
    host = Host(root=str(root))
    assert host.glob("/etc/ssh/sshd_config.d", "*.conf") == ["a.conf", "b.conf"]
    assert host.glob_paths("/etc/ssh/*.d/*.conf") == [
        "/etc/ssh/sshd_config.d/a.conf",
        "/etc/ssh/sshd_config.d/b.conf",
    ]
    assert host.glob("/etc/missing", "*") == []


def test_proc_reads_are_bounded_and_from_the_hosts_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42/comm").write_text("sshd\n")
    (proc / "42/environ").write_bytes(b"x" * 100)
    (proc / "self").mkdir()
    host = Host(root=str(tmp_path), proc=str(proc))
    assert host.proc_read("42/comm") == b"sshd\n"
    assert host.proc_pids() == [42]
    with pytest.raises(HostError, match="read cap"):
        host.proc_read("42/environ", limit=10)
