"""Which K3s process is this node's: one in the agent's own PID namespace, never a
container's (k3d, K3s in Docker, a systemd-nspawn machine such as the booted-node
e2e's, which runs the K3s fixture as root in a PID namespace of its own)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3s_agent.k3s.discovery import scan_processes

pytestmark = pytest.mark.root


def _look_alike(tmp: Path, name: str, role: str, new_pidns: bool) -> subprocess.Popen:
    """A root process with comm `name` and cmdline `<name> <role>`: a copy of bash
    reading its script from a file named after the role (as K3s's own argv reads)."""
    folder = tmp / ("pidns" if new_pidns else "here")
    folder.mkdir()
    program = folder / name
    shutil.copy("/bin/bash", program)
    # A builtin that blocks on the never-written stdin: no forked child (a fork of bash
    # would be a second k3s-server for a moment).
    (folder / role).write_text("read -r -t 60 _\n")
    argv = [str(program), role]
    if new_pidns:
        argv = ["unshare", "--pid", "--fork", "--kill-child", *argv]
    return subprocess.Popen(argv, cwd=folder, stdin=subprocess.PIPE)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def _found(tmp: Path, want: int) -> list[tuple[str, tuple[str, ...]]]:
    """The scan's answer about our look-alikes, once `want` of them had time to exec."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            (p.comm, p.cmdline[1:2])
            for p in scan_processes()
            if p.cmdline[:1] and p.cmdline[0].startswith(str(tmp))
        ]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _started(tmp: Path, comm: str) -> bool:
    """A look-alike under tmp runs with this comm, whatever its PID namespace."""
    for entry in Path("/proc").iterdir():
        try:
            named = entry.name.isdigit() and (entry / "comm").read_text().strip() == comm
            if named and (entry / "cmdline").read_bytes().startswith(str(tmp).encode()):
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize(
    ("here", "in_container", "want"),
    [
        (("k3s-agent", "agent"), ("k3s-server", "server"), [("k3s-agent", ("agent",))]),
        (None, ("k3s-server", "server"), []),
        (("k3s-server", "server"), None, [("k3s-server", ("server",))]),
    ],
)
def test_only_k3s_in_our_pid_namespace_is_found(tmp_path, processes, here, in_container, want) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    if in_container:
        processes.append(_look_alike(tmp_path, *in_container, new_pidns=True))
    if here:
        processes.append(_look_alike(tmp_path, *here, new_pidns=False))
    # The container's look-alike must be running before its absence means anything.
    deadline = time.monotonic() + 10
    while in_container and not _started(tmp_path, in_container[0]):
        assert time.monotonic() < deadline, "the container's look-alike never started"
        time.sleep(0.05)
    found = _found(tmp_path, len(want))
    assert sorted(found) == sorted(want)
