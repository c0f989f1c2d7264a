"""sshd control against the real /usr/sbin/sshd (-T and -t) over a temporary config root.

The temporary sshd_config names rooted paths (Include, HostKey, PidFile), so
the real sshd reads only the test's files; the reload goes to a systemctl
test double that logs its arguments (the e2e suite tests the real reload).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.controls.sshd import DROPIN, MAIN, Reloader, SshdControl, block_span
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ControlPolicy
from tests.support import sshdroot
from tests.support.sshdroot import write_main

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("sshd", path="/usr/sbin:/usr/bin") is None, reason="needs openssh-server"
    ),
]

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin") or "/usr/sbin/sshd"
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  "show -p LoadState --value ssh.service") echo loaded ;;
  "show -p LoadState --value sshd.service") echo not-found ;;
esac
exit 0
"""


@pytest.fixture(scope="session")
def host_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sshdroot.host_key(tmp_path_factory.mktemp("hostkey"))


@pytest.fixture
def ssh_root(root: Path, host_key: Path) -> Path:
    """A Debian 12 style /etc/ssh under the temporary root, with rooted paths,
    and an operator "ops" with a key (the lock-out guard must let the heals through)."""
    sshdroot.install_sshd(root, host_key)
    sshdroot.add_account(root, "root", 0)
    sshdroot.add_account(root, "ops", 1000, keys=(sshdroot.ED25519,))
    return root


@pytest.fixture
def systemctl_log(tmp_path: Path) -> Path:
    return tmp_path / "systemctl.log"


def control(root: Path, log: Path, items: dict[str, Any], sshd: str = SSHD) -> SshdControl:
    fake = log.parent / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(log=log))
    os.chmod(fake, 0o755)
    host = Host(root=str(root))
    policy = ControlPolicy("sshd", Mode.ENFORCE, True, {}, {k: {"value": v} for k, v in items.items()})
    return SshdControl(policy, host, sshd=sshd, reload=Reloader(host, systemctl=str(fake), booted=True))


def by_key(findings: list[Finding]) -> dict[str, Finding]:
    return {f.key: f for f in findings}


def heal(ctl: SshdControl) -> dict[str, Finding]:
    return by_key(ctl.apply([f for f in ctl.check() if f.status is Status.DRIFT]))


def effective(root: Path, keyword: str) -> str:
    out = subprocess.run([SSHD, "-T", "-f", str(root / MAIN.lstrip("/"))], capture_output=True, text=True)
    return next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith(keyword + " "))


DEFAULTS = {
    "PermitRootLogin": "no",
    "PasswordAuthentication": "no",
    "X11Forwarding": "no",
    "MaxAuthTries": 3,
    "LoginGraceTime": "1m",
    "Ciphers": ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"],
    "AllowUsers": ["root", "ops"],
}


def test_drift_is_read_from_sshd_T_and_healed_with_a_drop_in(ssh_root: Path, systemctl_log: Path) -> None:
    ctl = control(ssh_root, systemctl_log, DEFAULTS)
    found = by_key(ctl.check())
    assert found["X11Forwarding"].status is Status.DRIFT
    assert found["X11Forwarding"].observed == "yes"
    assert f"{MAIN}:6 sets X11Forwarding 'yes'" in found["X11Forwarding"].message
    assert found["LoginGraceTime"].desired == "60"  # "1m" compared the way sshd -T prints it
    assert found["PermitRootLogin"].message == "not set in any file: sshd's built-in default applies"
    main_before = (ssh_root / MAIN.lstrip("/")).read_bytes()
    results = heal(ctl)
    assert {r.status for r in results.values()} == {Status.HEALED}
    assert "wrote /etc/ssh/sshd_config.d/01-k3s-agentd.conf" in results["X11Forwarding"].message
    assert "reloaded ssh.service" in results["X11Forwarding"].message
    dropin = ssh_root / DROPIN.lstrip("/")
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o600
    assert "Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com\n" in dropin.read_text()
    assert (ssh_root / MAIN.lstrip("/")).read_bytes() == main_before  # main file untouched
    assert effective(ssh_root, "x11forwarding") == "no"
    after = by_key(ctl.check())
    assert {f.status for f in after.values()} == {Status.OK}
    assert after["X11Forwarding"].message == f"set by {DROPIN}:5"
    assert "reload ssh.service" in systemctl_log.read_text().splitlines()


def test_edited_drop_in_is_rewritten_with_a_backup(ssh_root: Path, systemctl_log: Path) -> None:
    ctl = control(ssh_root, systemctl_log, DEFAULTS)
    heal(ctl)
    dropin = ssh_root / DROPIN.lstrip("/")
    dropin.write_text(dropin.read_text().replace("MaxAuthTries 3", "MaxAuthTries 10"))
    found = by_key(ctl.check())["MaxAuthTries"]
    assert (found.status, found.observed) == (Status.DRIFT, "10")
    assert found.message == f"our {DROPIN}:6 is out of date"
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED and "previous copy" in result.message
    assert by_key(ctl.check())["MaxAuthTries"].status is Status.OK
    backups = list((ssh_root / "var/lib/k3s-agentd/backup").rglob("*"))
    assert any("MaxAuthTries 10" in p.read_text() for p in backups if p.is_file())


def test_earlier_sorted_drop_in_wins_and_is_beaten_by_the_top_block(
    ssh_root: Path, systemctl_log: Path
) -> None:
    ctl = control(ssh_root, systemctl_log, DEFAULTS)
    heal(ctl)
    foreign = ssh_root / "etc/ssh/sshd_config.d/00-foo.conf"
    foreign.write_text("# someone else's file\nPermitRootLogin yes\n")
    found = by_key(ctl.check())["PermitRootLogin"]
    assert (found.status, found.observed) == (Status.DRIFT, "yes")
    assert found.message.startswith("/etc/ssh/sshd_config.d/00-foo.conf:2 sets PermitRootLogin 'yes'")
    assert ctl.plan().target == MAIN
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED
    assert "00-foo.conf:2 sets PermitRootLogin before" in result.message
    text = (ssh_root / MAIN.lstrip("/")).read_text()
    assert text.startswith("# BEGIN k3s-agentd managed block")
    assert block_span(text) is not None
    assert foreign.read_text() == "# someone else's file\nPermitRootLogin yes\n"  # not ours: untouched
    assert effective(ssh_root, "permitrootlogin") == "no"
    after = by_key(ctl.check())
    assert {f.status for f in after.values()} == {Status.OK}
    assert after["PermitRootLogin"].message == f"set by {MAIN}:2"
    # the block stays the target and stays in one piece on the next change
    ctl2 = control(ssh_root, systemctl_log, {**DEFAULTS, "MaxAuthTries": 2})
    assert heal(ctl2)["MaxAuthTries"].status is Status.HEALED
    text = (ssh_root / MAIN.lstrip("/")).read_text()
    assert text.count("# BEGIN k3s-agentd") == 1 and "MaxAuthTries 2\n" in text


def test_edited_main_file_above_the_include_is_detected_and_healed(
    ssh_root: Path, systemctl_log: Path
) -> None:
    ctl = control(ssh_root, systemctl_log, DEFAULTS)
    heal(ctl)
    write_main(ssh_root, "PasswordAuthentication yes\n")
    found = by_key(ctl.check())["PasswordAuthentication"]
    assert (found.status, found.observed) == (Status.DRIFT, "yes")
    assert f"{MAIN}:1 sets PasswordAuthentication 'yes'" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED
    assert effective(ssh_root, "passwordauthentication") == "no"
    assert "PasswordAuthentication yes\n" in (ssh_root / MAIN.lstrip("/")).read_text()  # kept, now shadowed


def test_main_config_without_include_gets_the_marked_block(ssh_root: Path, systemctl_log: Path) -> None:
    main = ssh_root / MAIN.lstrip("/")
    main.write_text(f"HostKey {ssh_root}/etc/ssh/ssh_host_ed25519_key\nUsePAM yes\nX11Forwarding yes\n")
    os.chmod(main, 0o640)
    ctl = control(ssh_root, systemctl_log, {"X11Forwarding": "no"})
    assert ctl.plan().target == MAIN and "does not include" in ctl.plan().reason
    assert heal(ctl)["X11Forwarding"].status is Status.HEALED
    assert not (ssh_root / DROPIN.lstrip("/")).exists()
    assert stat.S_IMODE(main.stat().st_mode) == 0o640  # mode of the admin's file kept
    assert ctl.check()[0].status is Status.OK


@pytest.mark.parametrize(
    ("items", "complaint"),
    [
        ({"MaxAuthTries": "lots"}, "MaxAuthTries"),
        ({"Ciphers": ["aes999-gcm"]}, "cipher"),
        ({"PermitRootLogin": "sometimes"}, "sometimes"),
        # a keyword sshd does not know is declined by check(), not refused here (test_declined_real)
    ],
)
def test_invalid_value_is_refused_by_sshd_t_with_nothing_written(
    ssh_root: Path, systemctl_log: Path, items: dict[str, Any], complaint: str
) -> None:
    ctl = control(ssh_root, systemctl_log, {"X11Forwarding": "no", **items})
    before = {p: p.read_bytes() for p in (ssh_root / "etc/ssh").rglob("*") if p.is_file()}
    results = heal(ctl)
    assert results["X11Forwarding"].status is Status.FAILED
    message = results["X11Forwarding"].message
    assert message.startswith("sshd -t refused the candidate:") and complaint in message
    assert DROPIN in message  # sshd's own message, naming the real file, not the temp copy
    after = {p: p.read_bytes() for p in (ssh_root / "etc/ssh").rglob("*") if p.is_file()}
    assert after == before
    assert not systemctl_log.exists() or "reload" not in systemctl_log.read_text()


def test_allow_users_from_another_file_is_reported_not_removed(ssh_root: Path, systemctl_log: Path) -> None:
    ctl = control(ssh_root, systemctl_log, {"AllowUsers": ["ops"]})
    heal(ctl)
    extra = ssh_root / "etc/ssh/sshd_config.d/50-extra.conf"
    extra.write_text("AllowUsers mallory\n")
    found = ctl.check()[0]
    assert (found.status, found.observed) == (Status.DRIFT, "mallory ops")
    assert "accumulates over every file: also set by" in found.message and "50-extra.conf:1" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.DRIFT and "not our file" in result.message
    assert extra.read_text() == "AllowUsers mallory\n"


def test_sshd_not_installed_is_absent(ssh_root: Path, systemctl_log: Path) -> None:
    ctl = control(ssh_root, systemctl_log, DEFAULTS, sshd="")
    ctl.sshd = None
    assert {f.status for f in ctl.check()} == {Status.ABSENT}
    ctl = control(ssh_root, systemctl_log, DEFAULTS, sshd=str(ssh_root / "no/sshd"))
    assert {f.status for f in ctl.check()} == {Status.ABSENT}


def test_reload_is_skipped_when_sshd_is_not_running(
    ssh_root: Path, systemctl_log: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "systemctl-inactive"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> "{systemctl_log}"\n'
        'case "$*" in "show -p LoadState --value ssh.service") echo loaded ;; is-active*) exit 3 ;; esac\n'
    )
    os.chmod(fake, 0o755)
    reloader = Reloader(Host(root=str(ssh_root)), systemctl=str(fake), booted=True)
    assert reloader() == "ssh.service is not running: it reads the new config when it starts"
    assert "reload ssh.service" not in systemctl_log.read_text().splitlines()


def test_sighup_without_systemd_refuses_a_pid_that_is_not_sshd(ssh_root: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (ssh_root / "run").mkdir(exist_ok=True)
        (ssh_root / "run/sshd.pid").write_text(f"{sleeper.pid}\n")
        reloader = Reloader(Host(root=str(ssh_root)), systemctl=None, booted=False)
        with pytest.raises(Exception, match="not sshd; not signalled"):
            reloader()
        assert sleeper.poll() is None  # no SIGHUP reached it
    finally:
        sleeper.kill()
        sleeper.wait()


def test_apply_reloads_a_running_sshd_with_sighup_not_a_restart(ssh_root: Path) -> None:
    """No systemd here: the heal HUPs the real sshd (in its own network namespace); same pid after."""
    log = ssh_root / "sshd.log"
    (ssh_root / "run").mkdir(exist_ok=True)
    main = str(ssh_root / MAIN.lstrip("/"))
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            ["unshare", "--net", "--", SSHD, "-D", "-e", "-f", main, "-p", "2222"], stderr=out
        )
    try:
        pidfile = ssh_root / "run/sshd.pid"
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            daemon.poll()
            assert daemon.returncode is None, log.read_text()
            subprocess.run(["sleep", "0.05"], check=True)
        assert int(pidfile.read_text()) == daemon.pid  # unshare execs sshd: same pid
        host = Host(root=str(ssh_root))
        policy = ControlPolicy("sshd", Mode.ENFORCE, True, {}, {"X11Forwarding": {"value": "no"}})
        ctl = SshdControl(policy, host, sshd=SSHD, reload=Reloader(host, booted=False))
        result = heal(ctl)["X11Forwarding"]
        assert result.status is Status.HEALED
        assert f"sent SIGHUP to sshd (pid {daemon.pid})" in result.message
        for _ in range(100):
            if "Received SIGHUP" in log.read_text():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert "Received SIGHUP; restarting." in log.read_text()
        subprocess.run(["sleep", "0.3"], check=True)
        assert daemon.poll() is None  # re-executed in place, still serving
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_engine_cycle_heals_and_verifies_through_sshd_T(ssh_root: Path) -> None:
    from k3s_agent.engine import Engine
    from k3s_agent.policy.loader import Layer, compose

    items = {"PermitRootLogin": {"value": "no"}, "X11Forwarding": {"value": False}}
    layer = Layer("p.toml", {"extends": "none", "controls": {"sshd": {"items": items}}})
    host = Host(root=str(ssh_root))
    engine = Engine(compose(host, [layer]), host)
    ctl = engine.controls["sshd"]
    assert isinstance(ctl, SshdControl)
    ctl.reload = Reloader(host, booted=False)  # never the CI machine's own sshd
    first = by_key(engine.run_cycle(enforce=True, only=["sshd"]).findings())
    assert {f.status for f in first.values()} == {Status.HEALED}
    assert "sshd is not running (no pid file)" in first["X11Forwarding"].message  # no systemd, no daemon here
    second = engine.run_cycle(enforce=True, only=["sshd"]).findings()
    assert {f.status for f in second} == {Status.OK}


def test_sshd_config_that_is_a_symlink_is_failed_not_followed(ssh_root: Path, systemctl_log: Path) -> None:
    main = ssh_root / MAIN.lstrip("/")
    real = ssh_root / "etc/ssh/sshd_config.real"
    main.rename(real)
    main.symlink_to(real)
    ctl = control(ssh_root, systemctl_log, {"X11Forwarding": "no"})
    found = ctl.check()
    assert found[0].status is Status.FAILED and "symlink" in found[0].message
    assert "X11Forwarding yes" in real.read_text()


def test_an_oversized_drop_in_is_a_finding_for_that_file(ssh_root: Path, systemctl_log: Path) -> None:
    """sshd reads it; we do not (beyond the read cap): named, declined by apply, the rest judged."""
    big = ssh_root / "etc/ssh/sshd_config.d/50-huge.conf"
    # 2 MiB of comments: sshd reads it (196 MB it refuses itself: "insufficient buffer space").
    big.write_text("X11Forwarding no\n" + ("#" * 1023 + "\n") * (2 << 10))
    ctl = control(ssh_root, systemctl_log, {"X11Forwarding": "no", "MaxAuthTries": 3})
    found = by_key(ctl.check())
    unread = found["/etc/ssh/sshd_config.d/50-huge.conf"]
    assert unread.status is Status.DRIFT
    assert unread.message.startswith("/etc/ssh/sshd_config.d/50-huge.conf: larger than the 1 MiB read cap")
    assert found["MaxAuthTries"].status is Status.DRIFT  # the other keywords are still judged
    results = heal(ctl)
    assert results["/etc/ssh/sshd_config.d/50-huge.conf"].message.endswith("not ours to edit")
    assert results["MaxAuthTries"].status is Status.HEALED
    assert big.stat().st_size > 2 << 20
