"""Commit-confirmed enforcement against the real kernel (nft, iptables-legacy) and the real sshd.

Each test runs in a named network namespace of its own (tests/support/netns.py) over a
temporary root: the control's snapshot/restore give back the byte-equal
ruleset / drop-in; the daemon rolls an unconfirmed first change back within
timeout + one interval, keeps a confirmed one, and rolls back at start after
a kill -9; `k3s-agentctl apply --confirm` rolls back with no daemon at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import wait_for

from k3s_agent.confirm import RECORD
from k3s_agent.controls.sshd import DROPIN, MAIN, Reloader, SshdControl
from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.model import ControlPolicy
from tests.support.confirmpolicy import LOCK_SSH, confirm_policy
from tests.support.fwcontrol import heal, make_control
from tests.support.netns import LEGACY_MISSING, fresh_netns, run_in, sh

pytestmark = pytest.mark.root

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin")
TIMEOUT = 4
INTERVAL = 2
SSH_ENV = "192.0.2.10 50022 192.0.2.1 22"  # a "new ssh session" for `confirm`
OLD_TABLE = """
add table inet k3s_agentd
add chain inet k3s_agentd input { type filter hook input priority 0; policy accept; }
add rule inet k3s_agentd input tcp dport 22 accept comment "ssh"
"""
FOREIGN = "add table ip foreign; add chain ip foreign c { type filter hook input priority 10; }; "
FOREIGN += "add rule ip foreign c tcp dport 99 accept"
OLD_DROPIN = "# an older drop-in of ours\nPermitRootLogin prohibit-password\n"


def listing(ns: str) -> str:
    return sh("nft", "list", "ruleset", ns=ns).stdout


def our_table(ns: str) -> str:
    return sh("nft", "list", "table", "inet", "k3s_agentd", ns=ns, check=False).stdout


# -- the controls' snapshot / restore ----------------------------------------------------------


@pytest.mark.parametrize("before", ["absent", "older table"])
def test_nft_restore_gives_back_the_exact_ruleset(root: Path, before: str) -> None:
    with fresh_netns() as ns:
        sh("nft", FOREIGN, ns=ns)
        if before != "absent":
            run_in(ns, _nft_file, OLD_TABLE)
        original = listing(ns)
        locking = {"lock": {"action": "drop", "proto": "tcp", "ports": [22], "order": 1}}
        control = make_control(root, "nftables", items=locking, allow_lockout=True)
        taken = run_in(ns, control.snapshot)
        assert json.loads(json.dumps(taken)) == taken  # it goes to disk as JSON
        run_in(ns, heal, control)
        assert listing(ns) != original
        message = run_in(ns, control.restore, taken)
        assert listing(ns) == original  # byte-equal, foreign table included
        assert "k3s_agentd" in message


def _nft_file(text: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)


@pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)
@pytest.mark.parametrize("before", ["absent", "older chain"])
def test_iptables_restore_gives_back_the_exact_chain_jump_and_policy(root: Path, before: str) -> None:
    with fresh_netns() as ns:
        sh("ip6tables-legacy", "-w", "-L", ns=ns)  # the IPv6 filter table exists too
        sh("iptables-legacy", "-w", "-N", "KUBE-LIKE", ns=ns)
        sh("iptables-legacy", "-w", "-A", "KUBE-LIKE", "-s", "10.9.9.9", "-j", "RETURN", ns=ns)
        sh("iptables-legacy", "-w", "-A", "INPUT", "-j", "KUBE-LIKE", ns=ns)
        if before != "absent":
            old = make_control(root, "iptables", default_input="accept")
            run_in(ns, heal, old)
            sh(
                "iptables-legacy",
                "-w",
                "-I",
                "INPUT",
                "1",
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "ACCEPT",
                ns=ns,
            )

        def state() -> str:
            v4 = sh("iptables-legacy", "-w", "-S", ns=ns).stdout
            return v4 + sh("ip6tables-legacy", "-w", "-S", ns=ns).stdout

        original = state()
        control = make_control(root, "iptables", allow_lockout=True)
        taken = run_in(ns, control.snapshot)
        taken = json.loads(json.dumps(taken))
        run_in(ns, heal, control)
        assert state() != original
        run_in(ns, control.restore, taken)
        assert state() == original


@pytest.fixture
def ssh_root(root: Path, tmp_path: Path) -> Path:
    if SSHD is None:
        pytest.skip("needs openssh-server")
    ssh = root / "etc/ssh"
    (ssh / "sshd_config.d").mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "ssh_host_ed25519_key")], check=True
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    (root / MAIN.lstrip("/")).write_text(
        f"Include {root}/etc/ssh/sshd_config.d/*.conf\n"
        f"HostKey {root}/etc/ssh/ssh_host_ed25519_key\n"
        f"PidFile {root}/run/sshd.pid\n"
        "UsePAM yes\n"
    )
    return root


def sshd_control(root: Path, items: dict[str, Any]) -> SshdControl:
    host = Host(root=str(root))
    # No accounts under this root: the lock-out guard (tested on its own) would
    # refuse every change; these tests are about restore.
    options = {"allow_lockout": True}
    policy = ControlPolicy("sshd", Mode.ENFORCE, True, options, {k: {"value": v} for k, v in items.items()})
    return SshdControl(policy, host, sshd=SSHD, reload=Reloader(host, booted=False))


@pytest.mark.parametrize("before", ["no drop-in", "older drop-in", "marked block"])
def test_sshd_restore_gives_back_the_exact_files(ssh_root: Path, before: str) -> None:
    main, dropin = ssh_root / MAIN.lstrip("/"), ssh_root / DROPIN.lstrip("/")
    if before == "older drop-in":
        dropin.write_text(OLD_DROPIN)
        os.chmod(dropin, 0o600)
    if before == "marked block":  # a line before the Include wins: we manage a block in sshd_config
        main.write_text("PermitRootLogin yes\n" + main.read_text())
        older = sshd_control(ssh_root, {"PermitRootLogin": "prohibit-password"})
        older.apply(older.check())
        assert "BEGIN k3s-agentd" in main.read_text()
    files_before = (main.read_bytes(), dropin.read_bytes() if dropin.exists() else None)
    control = sshd_control(ssh_root, {"PermitRootLogin": "no", "X11Forwarding": "no"})
    taken = json.loads(json.dumps(control.snapshot()))
    control.apply([f for f in control.check() if f.status.value == "drift"])
    assert (main.read_bytes(), dropin.read_bytes() if dropin.exists() else None) != files_before
    message = control.restore(taken)
    assert (main.read_bytes(), dropin.read_bytes() if dropin.exists() else None) == files_before
    assert "sshd is not running" in message  # reloaded the way the control reloads
    if before == "no drop-in":
        assert f"removed {DROPIN}" in message
    assert control.restore(taken).startswith("sshd files already as they were")


# -- the daemon ---------------------------------------------------------------------------------


def daemon_policy(timeout: float = TIMEOUT) -> str:
    return confirm_policy(
        INTERVAL,
        timeout,
        "drop",
        f"""allow_lockout = true
ssh_ports = [22]
{LOCK_SSH}[controls.sshd]
allow_lockout = true
[controls.sshd.items.PermitRootLogin]
value = "no"
""",
    )


def ctl(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "k3s_agent.cli", *args[:1], "--root", str(root), *args[1:]]
    full = {k: v for k, v in os.environ.items() if k not in ("SSH_CONNECTION", "INVOCATION_ID")}
    full.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=full)


def status(root: Path) -> dict[str, Any]:
    proc = ctl(root, "status", "--json")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def record(root: Path) -> dict[str, Any]:
    path = root / RECORD.lstrip("/")
    return json.loads(path.read_text())["controls"] if path.exists() else {}


class Node:
    """A temporary root + a named netns, the previous state laid down, and a daemon we can kill."""

    def __init__(self, root: Path, ns: str, log: Path):
        self.root, self.ns, self.log = root, ns, log
        self.proc: subprocess.Popen[bytes] | None = None
        run_in(ns, _nft_file, OLD_TABLE)
        (root / DROPIN.lstrip("/")).write_text(OLD_DROPIN)
        os.chmod(root / DROPIN.lstrip("/"), 0o600)
        self.before = self.state()

    def state(self) -> tuple[str, bytes]:
        return our_table(self.ns), (self.root / DROPIN.lstrip("/")).read_bytes()

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")
        }
        argv = [
            "ip",
            "netns",
            "exec",
            self.ns,
            sys.executable,
            "-m",
            "k3s_agent.daemon",
            "--root",
            str(self.root),
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


@pytest.fixture
def node(ssh_root: Path, tmp_path: Path) -> Iterator[Node]:
    with fresh_netns("k3scf") as ns:
        (ssh_root / "etc/k3s-agentd/policy.toml").write_text(daemon_policy())
        one = Node(ssh_root, ns, tmp_path / "daemon.log")
        try:
            yield one
        finally:
            one.stop(signal.SIGKILL)


def armed(node: Node) -> dict[str, Any]:
    return wait_for("both changes armed", lambda: len(record(node.root)) == 2 and record(node.root), 30)


def test_daemon_rolls_back_an_unconfirmed_first_change_and_holds_it(node: Node) -> None:
    node.start()
    entries = armed(node)
    assert {e["state"] for e in entries.values()} == {"pending"}
    assert node.state() != node.before  # the locking change is in place
    doc = wait_for("status", lambda: status(node.root).get("confirmation"), 10)
    assert doc["message"].startswith("awaiting confirmation (rollback at ")
    assert "awaiting confirmation (rollback at" in ctl(node.root, "status").stdout
    armed_at = min(e["at"] for e in entries.values())

    wait_for("the rollback", lambda: node.state() == node.before, TIMEOUT + INTERVAL + 5)
    took = time.time() - armed_at
    assert took <= TIMEOUT + INTERVAL + 1, f"rolled back {took:.1f}s after arming"
    assert {e["state"] for e in record(node.root).values()} == {"rolled_back"}
    record_mode = (node.root / RECORD.lstrip("/")).stat().st_mode & 0o777
    assert record_mode == 0o600

    # held: reported as drift saying why, never healed back over the rollback
    time.sleep(2 * INTERVAL + 1)
    assert node.state() == node.before
    doc = status(node.root)
    firewall = next(c for c in doc["controls"] if c["name"] == "firewall")
    held = [f for f in firewall["findings"] if f["status"] == "drift"]
    assert held and all("ROLLED BACK, NOT CONFIRMED" in f["message"] for f in held)
    assert doc["summary"]["verdict"] == "drift"
    log = node.log.read_text()
    assert "firewall: rolled back the change k3s-agentd applied at" in log
    assert "restored nftables: table inet k3s_agentd as it was" in log
    assert "sshd: rolled back" in log and f"{DROPIN} as it was" in log

    # the operator acts: a reload lets the daemon try again (armed again), and a confirm keeps it
    node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for("re-armed", lambda: {e["state"] for e in record(node.root).values()} == {"pending"}, 15)
    refused = ctl(node.root, "confirm")
    assert refused.returncode == 2 and "not in an SSH session" in refused.stderr
    confirmed = ctl(node.root, "confirm", env={"SSH_CONNECTION": SSH_ENV})
    assert confirmed.returncode == 0, confirmed.stderr
    assert "confirmed: firewall, sshd" in confirmed.stdout
    changed = node.state()
    time.sleep(TIMEOUT + INTERVAL + 1)
    assert node.state() == changed != node.before
    assert {e["state"] for e in record(node.root).values()} == {"established"}
    assert "confirmed from ssh session 192.0.2.10 50022" in confirmed.stderr + node.log.read_text()


def test_kill9_during_the_window_rolls_back_at_the_next_start(node: Node) -> None:
    node.start()
    entries = armed(node)
    node.stop(signal.SIGKILL)
    changed = node.state()
    assert changed != node.before
    deadline = max(e["deadline"] for e in entries.values())
    time.sleep(max(deadline - time.time(), 0) + 1)
    assert node.state() == changed  # nobody rolled back while the daemon was dead
    node.start()
    wait_for("the rollback at start", lambda: node.state() == node.before, 10)
    assert {e["state"] for e in record(node.root).values()} == {"rolled_back"}


def test_cli_apply_confirm_rolls_back_without_a_daemon(node: Node) -> None:
    def apply() -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", node.ns, sys.executable, "-m", "k3s_agent.cli", "apply", "--root"]
        env = {**os.environ, "SSH_CONNECTION": SSH_ENV}
        return subprocess.run(
            [*argv, str(node.root), "--confirm", "3"], capture_output=True, text=True, env=env
        )

    done = apply()
    assert "ROLLED BACK at" in done.stderr and "detached process" in done.stderr, done.stderr
    assert node.state() != node.before
    wait_for("the rollback", lambda: node.state() == node.before, 3 + 5)

    # confirmed from the same session: refused; from a new one: kept
    apply()
    same = ctl(node.root, "confirm", env={"SSH_CONNECTION": SSH_ENV})
    assert same.returncode == 2 and "open a NEW ssh session" in same.stderr
    new = ctl(node.root, "confirm", env={"SSH_CONNECTION": "192.0.2.10 50023 192.0.2.1 22"})
    assert new.returncode == 0, new.stderr
    kept = node.state()
    time.sleep(3 + 2)
    assert node.state() == kept != node.before
