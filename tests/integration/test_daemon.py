"""k3s-agentd as a real process in its own network namespace, against a temporary root."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from tests.support.netns import netns_argv

pytestmark = pytest.mark.root

INTERVAL = 2
KEY = "net.ipv4.conf.all.send_redirects"
GOOD_POLICY = f"""
extends = "none"
interval = {INTERVAL}
[contest]
threshold = 10
[controls.sysctl.items."{KEY}"]
value = 0
[controls.sysctl.items."net.ipv4.conf.all.accept_redirects"]
value = 0
"""


def ctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "k3s_agent.cli", *args[:1], "--root", str(root), *args[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def status(root: Path) -> dict[str, Any]:
    proc = ctl(root, "status", "--json")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_daemon_netns(pid: int, *argv: str) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


@contextlib.contextmanager
def running_daemon(root: Path, tmp_path: Path, policy: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """k3s-agentd in a fresh network namespace, its console log in tmp_path/daemon.log."""
    (root / "etc/k3s-agentd/policy.toml").write_text(policy)
    environ = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    environ.update(env)
    argv = [sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(netns_argv(argv), env=environ, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("the first cycle", lambda: status(root).get("cycle"), 20)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def daemon(root: Path, tmp_path: Path, notify_socket: socket.socket) -> Iterator[subprocess.Popen[bytes]]:
    notify = str(tmp_path / "notify.sock")
    with running_daemon(root, tmp_path, GOOD_POLICY, NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000") as proc:
        yield proc


def notifications(sock: socket.socket) -> list[str]:
    seen = []
    while True:
        try:
            seen.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            return seen


def test_daemon_heals_reloads_and_stops(
    root: Path, daemon: subprocess.Popen[bytes], notify_socket: socket.socket
) -> None:
    pid = daemon.pid
    sent = "\n".join(notifications(notify_socket))
    assert "READY=1" in sent
    time.sleep(1.2)
    sent += "\n".join(notifications(notify_socket))
    assert "WATCHDOG=1" in sent and "STATUS=" in sent

    # drift injected from outside is healed within one interval
    in_daemon_netns(pid, "sysctl", "-qw", f"{KEY}=1")
    injected = time.monotonic()
    wait_for("the heal", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", INTERVAL + 3)
    assert time.monotonic() - injected <= INTERVAL + 3
    doc = wait_for("heal counted", lambda: (d := status(root)).get("daemon", {}).get("heals_total") and d, 10)
    assert doc["schema"] == "k3s-agentd/node-compliance"
    assert doc["daemon"]["heals_total"] >= 3  # first cycle: two keys + the persisted file
    metrics = (root / "run/k3s-agentd/metrics.prom").read_text()
    assert 'k3s_agentd_heals_total{control="sysctl"}' in metrics
    assert f'k3s_agentd_item_status{{control="sysctl",item="{KEY}",cis="",status=' in metrics
    # node_exporter installed after the agent: the default textfile = "auto" finds its folder
    textfiles = root / "var/lib/prometheus/node-exporter"
    assert not textfiles.exists()  # never created by us
    textfiles.mkdir(parents=True)
    textfile = wait_for(
        "the textfile", lambda: (p := textfiles / "k3s_agentd.prom").exists() and p, INTERVAL + 5
    )
    assert "k3s_agentd_last_cycle_timestamp_seconds" in textfile.read_text()
    assert 'k3s_agentd_declined_items{control="sysctl"} ' in textfile.read_text()  # needs-you, zero or not
    assert textfile.stat().st_mode & 0o777 == 0o644
    # `k3s-agentctl status --prometheus` renders the daemon's document the same way
    shown = ctl(root, "status", "--prometheus")
    assert (
        shown.returncode in (0, 1)
        and f'k3s_agentd_item_status{{control="sysctl",item="{KEY}"' in shown.stdout
    )

    # a broken policy on SIGHUP is refused, the old one stays in force
    (root / "etc/k3s-agentd/policy.toml").write_text("bogus_key = 1\n" + GOOD_POLICY)
    os.kill(pid, signal.SIGHUP)
    doc = wait_for("the refusal", lambda: (d := status(root)).get("daemon", {}).get("policy_error") and d, 10)
    assert "policy.toml: bogus_key: unknown key" in doc["daemon"]["policy_error"]
    in_daemon_netns(pid, "sysctl", "-qw", f"{KEY}=1")
    wait_for(
        "the heal under the old policy",
        lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0",
        INTERVAL + 3,
    )

    # SIGTERM: clean exit, socket gone, status falls back to the last file with exit 3
    os.kill(pid, signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    assert not (root / "run/k3s-agentd/agentd.sock").exists()
    offline = ctl(root, "status")
    assert offline.returncode == 3
    assert "k3s-agentd is NOT running; last status from" in offline.stdout


def test_status_socket_is_root_only(root: Path, daemon: subprocess.Popen[bytes]) -> None:
    sock_path = root / "run/k3s-agentd/agentd.sock"
    assert oct(sock_path.stat().st_mode & 0o777) == "0o600"
    assert oct((root / "run/k3s-agentd").stat().st_mode & 0o777) == "0o700"
    probe = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "print(s.recv(100).decode())  # the refusal comes before any request"
    )
    for parent in [*root.parents][:3]:  # pytest's tmp dirs are 0700: let uid 65534 reach the socket
        os.chmod(parent, parent.stat().st_mode | 0o011)
    os.chmod(root, 0o755)
    os.chmod(root / "run", 0o755)
    os.chmod(root / "run/k3s-agentd", 0o755)
    os.chmod(sock_path, 0o666)  # even if someone loosens the modes, SO_PEERCRED refuses
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            probe,
            str(sock_path),
        ],
        capture_output=True,
        text=True,
    )
    assert "permission denied: root only" in proc.stdout, proc.stderr


def test_no_status_at_all_is_exit_3(root: Path) -> None:
    proc = ctl(root, "status")
    assert proc.returncode == 3
    assert "not running and has recorded no status" in proc.stdout


def test_status_imports_no_engine(root: Path, daemon: subprocess.Popen[bytes]) -> None:
    """`status` is what monitoring polls: it reads the socket without importing the
    engine, the policy loader or structlog (3/4 of the CLI's start-up time)."""
    wait_for("the first cycle", lambda: status(root).get("cycle"), 20)
    probe = (
        "import sys\n"
        "from k3s_agent import cli\n"
        f"code = cli.main(['status', '--json', '--root', {str(root)!r}])\n"
        "heavy = sorted(m for m in ('k3s_agent.engine', 'k3s_agent.policy.loader', 'structlog')"
        " if m in sys.modules)\n"
        "sys.stderr.write(repr(heavy))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert proc.stderr == "[]", proc.stderr
    assert json.loads(proc.stdout)["daemon"]["running"] is True


# -- a fight: something re-sets a hardened sysctl right after every heal ------------------

FIGHT = 150.0  # seconds, as issue 11 asks: long enough that CPU is measured over 15 sweeps
FIGHT_INTERVAL = 10
FIGHT_POLICY = f"""
extends = "none"
interval = {FIGHT_INTERVAL}
[controls.sysctl.items."{KEY}"]
value = 0
"""
# The fighter: polls the sysctl every 0.1 s; 0.2 s after it sees our heal it sets it
# back and pokes a watched directory, so the daemon also wakes on an event each time
# (a targeted check of sysctl 0.2 s later). It prints when it saw each heal.
FIGHTER = """
import json, sys, time
key, noise, seconds = sys.argv[1:4]
path = "/proc/sys/" + key.replace(".", "/")
end, seen = time.monotonic() + float(seconds), []
while time.monotonic() < end:
    with open(path) as f:
        value = f.read().strip()
    if value == "0":
        seen.append(time.monotonic())
        time.sleep(0.2)
        with open(path, "w") as f:
            f.write("1")
        with open(noise, "a") as f:
            f.write("# poke\\n")
    time.sleep(0.1)
print(json.dumps(seen))
"""


def test_a_fight_is_healed_every_sweep_reported_contested_and_cheap(root: Path, tmp_path: Path) -> None:
    """Issue 11: a tool undoes one hardened sysctl within 0.5 s of every heal."""
    with running_daemon(root, tmp_path, FIGHT_POLICY) as proc:
        pid = proc.pid
        wait_for("the first convergence", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", 20)
        daemon = psutil.Process(pid)
        cpu_before, started = sum(daemon.cpu_times()), time.monotonic()
        noise = str(root / "etc/sysctl.d/50-noise.conf")
        fighter = subprocess.run(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", FIGHTER, KEY, noise, str(FIGHT)],
            capture_output=True,
            text=True,
            check=True,
            timeout=FIGHT + 30,
        )
        cpu = (sum(daemon.cpu_times()) - cpu_before) / (time.monotonic() - started)
        heals = json.loads(fighter.stdout)
        doc = status(root)
        code = ctl(root, "status").returncode
    log = (tmp_path / "daemon.log").read_text()

    # healed at least once per interval, all the fight long (cycle time and polling as slack)
    gaps = [b - a for a, b in zip([started, *heals], [*heals, started + FIGHT])]
    assert max(gaps) <= FIGHT_INTERVAL + 2, gaps
    # once contested, the event cycles leave the item to the sweep: one heal per
    # interval, not one per event -- the CPU figure below depends on it
    late = [t for t in heals if t > started + FIGHT - 60]
    assert len(late) <= 60 / FIGHT_INTERVAL + 1, gaps
    finding = next(f for c in doc["controls"] for f in c["findings"] if f["key"] == KEY)
    assert finding["status"] == "contested", finding
    assert "by something on the host" in finding["message"]
    assert code == 1
    # the first convergence and the first two undos are healed; the third undo
    # makes the item contested, and the journal says so (a warning, each heal)
    lines = [line for line in log.splitlines() if f"sysctl {KEY}: healed" in line]
    first = next(i for i, line in enumerate(lines) if "(contested)" in line)
    assert first == 3, lines[:5]
    assert "[warning" in lines[first] and "undone 3 time(s)" in lines[first]
    assert cpu < 0.10, f"daemon used {cpu:.1%} of a core during the fight"
    print(f"contest: {len(heals)} heals in {FIGHT:g}s, max gap {max(gaps):.1f}s, daemon CPU {cpu:.2%}")


# -- fast heal (issue 13): no waiting for the sweep, and a storm stays cheap ------------

SLOW_SWEEP_POLICY = f"""
extends = "none"
interval = 60
[contest]
threshold = 10  # three undos in a row would make it contested: healed only by the sweep
[controls.sysctl.items."{KEY}"]
value = 0
"""


def test_a_runtime_sysctl_write_is_healed_within_2s_with_a_60s_interval(root: Path, tmp_path: Path) -> None:
    """The kernel sends no event for `sysctl -w`: the sysctl control's fingerprint is sampled instead."""
    with running_daemon(root, tmp_path, SLOW_SWEEP_POLICY) as proc:
        pid = proc.pid
        wait_for("the first convergence", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", 20)
        latencies = []
        for _ in range(3):
            time.sleep(0.7)  # past the settle time of the previous heal
            in_daemon_netns(pid, "sysctl", "-qw", f"{KEY}=1")
            injected = time.monotonic()
            wait_for("the heal", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", 10)
            latencies.append(time.monotonic() - injected)
        doc = status(root)
    assert max(latencies) <= 2.0, latencies
    # the status document is still the full view after targeted cycles
    assert {c["name"] for c in doc["controls"]} >= {"sysctl", "files", "sshd"}
    print(f"runtime sysctl healed in {', '.join(f'{t:.2f}' for t in latencies)} s (interval 60 s)")


STORM = 20.0  # seconds


def test_a_storm_of_watch_events_costs_under_5_percent_of_a_core(root: Path, tmp_path: Path) -> None:
    """A loop touching a watched file 50 times a second for 20 s: the per-control budget bounds it."""
    with running_daemon(root, tmp_path, SLOW_SWEEP_POLICY) as proc:
        pid = proc.pid
        wait_for("the first convergence", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", 20)
        time.sleep(1.0)
        before = status(root)["cycle"]["number"]
        daemon = psutil.Process(pid)
        noise = root / "etc/sysctl.d/50-noise.conf"
        cpu_before, started = sum(daemon.cpu_times()[:2]), time.monotonic()
        touches = 0
        while time.monotonic() - started < STORM:
            with open(noise, "a") as handle:
                handle.write("# poke\n")
            touches += 1
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        cpu = (sum(daemon.cpu_times()[:2]) - cpu_before) / elapsed
        # a real drift during the storm is still healed fast
        in_daemon_netns(pid, "sysctl", "-qw", f"{KEY}=1")
        injected = time.monotonic()
        wait_for("the heal after a storm", lambda: in_daemon_netns(pid, "sysctl", "-n", KEY) == "0", 10)
        healed_in = time.monotonic() - injected
        cycles = status(root)["cycle"]["number"] - before
    assert touches >= 40 * STORM
    assert cycles >= 5, "the storm must still be checked, only less often"
    assert cpu < 0.05, f"daemon used {cpu:.1%} of a core during the storm"
    assert healed_in <= 2.0
    print(f"storm: {touches} touches in {elapsed:.0f}s, {cycles} targeted checks, daemon CPU {cpu:.2%}")
