"""A real SSH login as a non-root operator with a key, into a real sshd in a network namespace.

The guard's promise checked end to end: after a heal it let through, the
operator still logs in from a peer namespace over IPv4 and IPv6; a heal it
refuses leaves sshd as it was (the login still works); and the same locking
change forced through with allow_lockout really locks the operator out, so
the guard refused something real.

sshd authenticates against the machine's accounts, so the operator is a real
account (k3sa-guard-op, removed afterwards) whose home is inside the temp
root; the temp root's own etc/passwd names the same home, for the guard.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.controls.sshd import DROPIN, Reloader, SshdControl
from k3s_agent.host import Host
from k3s_agent.model import Mode, Status
from k3s_agent.policy.model import ControlPolicy
from tests.support import sshdroot
from tests.support.netns import CLIENT_IP, SERVER_IP, SERVER_IP6, sh, veth_pair

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("sshd", path="/usr/sbin:/usr/bin") is None, reason="needs openssh-server"
    ),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs openssh-client"),
]

OPERATOR = "k3sa-guard-op"
PROFILE = {"PermitRootLogin": "no", "PasswordAuthentication": "no", "X11Forwarding": "no"}


@contextlib.contextmanager
def operator_root() -> Iterator[tuple[Path, Path]]:
    """(temp root with sshd and the operator, the operator's private key); the account removed after."""
    root = Path(tempfile.mkdtemp(prefix="k3sa-sshd-login."))
    os.chmod(root, 0o755)  # sshd reads the key file as the operator: the path must be traversable
    home = root / "home" / OPERATOR
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", OPERATOR],
            check=True,
        )
        uid = pwd.getpwnam(OPERATOR).pw_uid
        sshdroot.install_sshd(root, sshdroot.host_key(root))
        (root / "run").mkdir()
        client_key = root / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
        public = (root / "client_key.pub").read_text().strip()
        sshdroot.add_account(root, "root", 0)
        sshdroot.add_account(root, OPERATOR, uid, keys=(public,), shell="/bin/sh", home=f"/home/{OPERATOR}")
        yield root, client_key
    finally:
        subprocess.run(["userdel", OPERATOR], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def sshd_in(ns: str, root: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(root / "sshd.log", "w")  # noqa: SIM115 (closed below, after the daemon)
    main = str(root / sshdroot.MAIN)
    daemon = subprocess.Popen(["ip", "netns", "exec", ns, sshdroot.SSHD, "-D", "-e", "-f", main], stderr=log)
    try:
        pidfile = root / "run/sshd.pid"
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            assert daemon.poll() is None, (root / "sshd.log").read_text()
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        log.close()


def login(client_ns: str, key: Path, address: str) -> subprocess.CompletedProcess[str]:
    return sh(
        "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
        f"{OPERATOR}@{address}", "id -un",
        ns=client_ns, check=False,
    )  # fmt: skip


def heal(root: Path, items: dict[str, Any], **options: Any) -> list[Any]:
    host = Host(root=str(root))
    policy = ControlPolicy(
        "sshd",
        Mode.ENFORCE,
        True,
        {"operators": [OPERATOR], **options},
        {k: {"value": v} for k, v in items.items()},
    )
    # No systemd here: SIGHUP to the pid in the temp root's PidFile, the sshd we started.
    reload = Reloader(host, booted=False, pidfile="/run/sshd.pid")
    ctl = SshdControl(policy, host, sshd=sshdroot.SSHD, reload=reload)
    return ctl.apply([f for f in ctl.check() if f.status is Status.DRIFT])


def reloaded(root: Path, count: int) -> None:
    for _ in range(200):
        if (root / "sshd.log").read_text().count("Received SIGHUP") >= count:
            time.sleep(0.3)  # sshd re-executes itself; let it listen again
            return
        time.sleep(0.05)
    raise AssertionError(f"sshd did not reload: {(root / 'sshd.log').read_text()}")


def test_operator_logs_in_after_every_heal_the_guard_lets_through() -> None:
    with operator_root() as (root, key), veth_pair() as (server, client), sshd_in(server, root):
        assert login(client, key, SERVER_IP).stdout.strip() == OPERATOR  # before: the path works

        results = heal(root, PROFILE)
        assert {r.status for r in results} == {Status.HEALED}, results[0].message
        reloaded(root, 1)
        for address in (SERVER_IP, SERVER_IP6):
            done = login(client, key, address)
            assert done.returncode == 0 and done.stdout.strip() == OPERATOR, (address, done.stderr)

        # A change that would lock the operator out from the client's network: refused, nothing written.
        dropin = (root / DROPIN.lstrip("/")).read_text()
        locking = {**PROFILE, "DenyUsers": f"{OPERATOR}@{CLIENT_IP.rsplit('.', 1)[0]}.0/24"}
        refused = heal(root, locking, management_sources=["10.99.0.0/24"])
        assert {r.status for r in refused} == {Status.FAILED}
        assert f"denies {OPERATOR}" in refused[0].message and "not written" in refused[0].message
        assert (root / DROPIN.lstrip("/")).read_text() == dropin
        assert login(client, key, SERVER_IP).stdout.strip() == OPERATOR

        # Forced through, the very same change does lock the operator out: the guard was right.
        forced = heal(root, locking, management_sources=["10.99.0.0/24"], allow_lockout=True)
        assert {r.status for r in forced} == {Status.HEALED}
        reloaded(root, 2)
        shut = login(client, key, SERVER_IP)
        assert shut.returncode != 0 and OPERATOR not in shut.stdout
