"""k3s-agentd against hostile policy.d entries (issue 12): it never exits or blocks on a
policy, keeps enforcing the one in force, reports the refusal, and honours SIGTERM in 2 s."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from test_daemon import GOOD_POLICY, INTERVAL, KEY, ctl, in_daemon_netns, status, wait_for

from tests.support.netns import netns_argv

pytestmark = pytest.mark.root

STOP_WITHIN = 2.0  # seconds from SIGTERM to exit, in every state


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


def _write(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)
        os.chmod(path, 0o644)

    return make


HOSTILE = [
    ("directory", lambda p: p.mkdir(), "a directory, not a regular file"),
    ("fifo", lambda p: os.mkfifo(p), "a FIFO, not a regular file"),
    ("socket", _socket, "socket"),
    ("symlink", lambda p: p.symlink_to(p.parent.parent / "policy.toml"), "symlinks are refused"),
    ("5000-deep array", _write(("x = " + "[" * 5000 + "]" * 5000 + "\n").encode()), "nested too deep"),
    ("2 MiB file", _write(b"#" * (2 << 20) + b"\n"), "larger than the 1 MiB limit"),
]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


@pytest.fixture
def start(root: Path, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts k3s-agentd (in its own network namespace) on root; kills what is left at the end."""
    started: list[subprocess.Popen[bytes]] = []
    unset = ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")
    env = {k: v for k, v in os.environ.items() if k not in unset}

    def run() -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
        log = open(tmp_path / f"daemon{len(started)}.log", "wb")  # noqa: SIM115 - the child owns it
        started.append(subprocess.Popen(netns_argv(argv), env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        return started[-1]

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop_in_time(proc: subprocess.Popen[bytes]) -> float:
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_WITHIN + 5) == 0
    took = time.monotonic() - sent
    assert took < STOP_WITHIN, f"SIGTERM took {took:.2f}s"
    return took


def _daemon(document: dict[str, Any]) -> dict[str, Any]:
    return document.get("daemon") or {}


def _first_cycle(root: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    doc = wait_for(
        "the first cycle", lambda: proc.poll() is None and (d := status(root)).get("cycle") and d, 30
    )
    assert proc.poll() is None, "the daemon exited"
    return doc


def test_hostile_dropins_on_sighup_keep_the_old_policy(root: Path, start: Callable[[], Any]) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text(GOOD_POLICY)
    daemon = start()
    sources = _first_cycle(root, daemon)["policy"]["sources"]
    target = root / "etc/k3s-agentd/policy.d/50-x.toml"
    for count, (case, make, expected) in enumerate(HOSTILE, 1):
        _remove(target)
        make(target)
        daemon.send_signal(signal.SIGHUP)
        doc = wait_for(
            f"the refusal of a {case}",
            lambda n=count: _daemon(d := status(root)).get("policy_reload_failures_total", 0) >= n and d,
            INTERVAL + 8,
        )
        assert daemon.poll() is None, f"the daemon exited on a {case}"
        error = doc["daemon"]["policy_error"]
        assert f"{target}: " in error and expected in error, error
        assert doc["policy"]["sources"] == sources, "the old policy stays in force"
        assert doc["daemon"]["policy_fallback"] is None
        assert ctl(root, "status").returncode == 2, "a refused policy is loud: status exits 2"

    # still enforcing the old policy: drift is healed
    in_daemon_netns(daemon.pid, "sysctl", "-qw", f"{KEY}=1")
    wait_for("the heal", lambda: in_daemon_netns(daemon.pid, "sysctl", "-n", KEY) == "0", INTERVAL + 5)

    # a FIFO being reloaded as SIGTERM arrives: still out in time
    _remove(target)
    os.mkfifo(target)
    daemon.send_signal(signal.SIGHUP)
    _stop_in_time(daemon)


def test_sigterm_during_a_slow_reload(root: Path, start: Callable[[], Any]) -> None:
    """Parsing a 1 MiB array takes a second or more: SIGTERM does not wait for it."""
    (root / "etc/k3s-agentd/policy.toml").write_text(GOOD_POLICY)
    daemon = start()
    _first_cycle(root, daemon)
    slow = b"x = [" + b"1," * ((1 << 20) // 2 - 4) + b"]\n"
    assert len(slow) <= 1 << 20
    _write(slow)(root / "etc/k3s-agentd/policy.d/50-x.toml")
    daemon.send_signal(signal.SIGHUP)
    time.sleep(0.3)  # the reload is under way
    _stop_in_time(daemon)


def test_refused_policy_at_start_without_snapshot_runs_builtin_audit(
    root: Path, start: Callable[[], Any]
) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text(GOOD_POLICY)
    fifo = root / "etc/k3s-agentd/policy.d/50-x.toml"
    os.mkfifo(fifo)
    daemon = start()
    doc = _first_cycle(root, daemon)
    assert doc["daemon"]["policy_fallback"] == "the built-in profile in audit mode"
    assert f"{fifo}: a FIFO" in doc["daemon"]["policy_error"]
    assert doc["policy"]["mode"] == "audit" and doc["policy"]["profile"] == "k3s-cis-server"
    assert {c["mode"] for c in doc["controls"]} == {"audit"}
    shown = ctl(root, "status")
    assert shown.returncode == 2
    assert "POLICY REFUSED (running the built-in profile in audit mode)" in shown.stdout
    assert not (root / "etc/sysctl.d/90-k3s-agentd.conf").exists(), "audit mode changes nothing"

    fifo.unlink()  # fixed: the next reload takes the policy on disk
    daemon.send_signal(signal.SIGHUP)
    fixed = lambda: (d := status(root))["policy"]["mode"] == "enforce" and d  # noqa: E731
    doc = wait_for("the fixed policy", fixed, INTERVAL + 8)
    assert doc["daemon"]["policy_error"] is None and doc["daemon"]["policy_fallback"] is None
    assert ctl(root, "status").returncode in (0, 1)
    _stop_in_time(daemon)


def test_refused_policy_at_start_runs_the_last_good_one(root: Path, start: Callable[[], Any]) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text(GOOD_POLICY)
    first = start()
    _first_cycle(root, first)
    _stop_in_time(first)
    (root / "etc/k3s-agentd/policy.d/50-x.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    second = start()
    doc = wait_for("the fallback", lambda: _daemon(d := status(root)).get("pid") == second.pid and d, 30)
    assert doc["daemon"]["policy_fallback"] == "the last good policy"
    assert "50-x.toml: not valid TOML: arrays or tables nested too deep" in doc["daemon"]["policy_error"]
    assert doc["policy"]["mode"] == "enforce"
    assert any("last-good/000-policy.toml" in s for s in doc["policy"]["sources"]), doc["policy"]["sources"]
    in_daemon_netns(second.pid, "sysctl", "-qw", f"{KEY}=1")
    wait_for("the heal", lambda: in_daemon_netns(second.pid, "sysctl", "-n", KEY) == "0", INTERVAL + 5)
    _stop_in_time(second)
