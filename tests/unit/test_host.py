"""Host reads and writes: never through a link, never stuck on a special file."""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from k3s_agent.controls import sshd
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
    user = pwd.struct_passwd(("mallory", "x", 4242, 4242, "", "/home/mallory", "/bin/sh"))
    box = _finishes(lambda: sshd._has_authorized_key(user, {}, Host(root=str(tmp_path))), fifo)
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
