"""Finding.declined is set by check() exactly where apply will not act: sshd (the real
sshd -T over a temporary root) and k3s_args (the K3s fixture).

Per situation: the field as check() sets it, and apply's answer, called directly:
declined -> still drift, the reason appended, nothing written; not declined ->
apply acts (healed, or pending for K3s args it wrote).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from k3s_agent.controls import k3s_args
from k3s_agent.controls.base import ControlSpec
from k3s_agent.controls.sshd import DROPIN, MAIN, Reloader, SshdControl
from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy
from tests.support import sshdroot
from tests.support.applied import record_apply
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE

pytestmark = pytest.mark.root

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin")
FOREIGN = "etc/ssh/sshd_config.d/50-foreign.conf"
NO_SUCH = "this node's OpenSSH does not support NoSuchKeyword: upgrade sshd or drop the item"


def _answer(ctl: Any, found: Finding, declined: Optional[str], acted: Status) -> None:
    assert found.status is Status.DRIFT
    assert found.declined == declined
    result = ctl.apply([found])[0]
    if declined is None:
        assert result.status is acted, result.message
    else:
        assert (result.status, result.message) == (Status.DRIFT, f"{found.message}; {declined}")


# -- sshd ----------------------------------------------------------------------------------


def _foreign(text: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        (root / FOREIGN).write_text(text)

    return write


def _huge(root: Path) -> None:
    (root / "etc/ssh/sshd_config.d/50-huge.conf").write_text(
        "#" * 1023 + "\n" + ("#" * 1023 + "\n") * (2 << 10)
    )


SSHD_CASES = [
    # situation, set-up, items, finding key, declined
    ("a keyword at sshd's default", lambda root: None, {"MaxAuthTries": 3}, "MaxAuthTries", None),
    (
        "another file adds names to AllowUsers",
        _foreign("AllowUsers ops alice\n"),
        {"AllowUsers": ["ops"]},
        "AllowUsers",
        "remove it there (not our file)",
    ),
    (
        "another file's AllowUsers lacks one of ours",
        _foreign("AllowUsers ops\n"),
        {"AllowUsers": ["ops", "root"]},
        "AllowUsers",
        None,
    ),
    (
        "a keyword at sshd's default that sshd -T does not print (AllowUsers unset)",
        lambda root: None,
        {"AllowUsers": ["ops", "root"]},
        "AllowUsers",
        None,
    ),
    (
        "a keyword this OpenSSH does not know",
        lambda root: None,
        {"NoSuchKeyword": "yes"},
        "NoSuchKeyword",
        NO_SUCH,
    ),
    (
        "a keyword sshd takes but sshd -T never shows (an old alias)",
        lambda root: None,
        {"ChallengeResponseAuthentication": "no"},
        "ChallengeResponseAuthentication",
        "sshd takes ChallengeResponseAuthentication but sshd -T never shows it (deprecated, an alias of"
        " another keyword, or not built in): drop the item or manage the keyword sshd -T shows",
    ),
    (
        "a keyword this platform's sshd refuses",
        lambda root: None,
        {"RDomain": "%D"},
        "RDomain",
        "this node's sshd refuses 'RDomain %D' (command-line line 0: setting RDomain not supported on this"
        " platform.): upgrade sshd or drop the item",
    ),
    (
        "an sshd config file too large to read",
        _huge,
        {"MaxAuthTries": 3},
        "/etc/ssh/sshd_config.d/50-huge.conf",
        "not ours to edit",
    ),
]


def _sshd_control(root: Path, tmp_path_factory: pytest.TempPathFactory, items: dict[str, Any]) -> SshdControl:
    """The sshd control over a temporary root with the real sshd; reload through a no-op systemctl."""
    sshdroot.install_sshd(root, sshdroot.host_key(tmp_path_factory.mktemp("hostkey")))
    sshdroot.add_account(root, "root", 0)
    sshdroot.add_account(root, "ops", 1000, keys=(sshdroot.ED25519,))
    fake = tmp_path_factory.mktemp("bin") / "systemctl"
    fake.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    host = Host(root=str(root))
    policy = ControlPolicy("sshd", Mode.ENFORCE, True, {}, {k: {"value": v} for k, v in items.items()})
    return SshdControl(policy, host, sshd=SSHD, reload=Reloader(host, systemctl=str(fake), booted=True))


@pytest.mark.skipif(SSHD is None, reason="needs openssh-server")
@pytest.mark.parametrize(
    ("situation", "setup", "items", "key", "declined"), SSHD_CASES, ids=[c[0] for c in SSHD_CASES]
)
def test_sshd_declines_exactly_other_files(
    root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    situation: str,
    setup: Callable[[Path], None],
    items: dict[str, Any],
    key: str,
    declined: Optional[str],
) -> None:
    ctl = _sshd_control(root, tmp_path_factory, items)
    setup(root)
    before = {
        p: p.read_bytes()
        for p in (root / "etc/ssh/sshd_config.d").iterdir()
        if p.name != "01-k3s-agentd.conf"
    }
    _answer(ctl, {f.key: f for f in ctl.check()}[key], declined, Status.HEALED)
    assert {p: p.read_bytes() for p in before} == before  # another's file is never edited
    if declined is not None:  # declined alone: nothing of ours written either
        assert not (root / DROPIN.lstrip("/")).exists()
        assert "k3s-agentd" not in (root / MAIN.lstrip("/")).read_text()


@pytest.mark.skipif(SSHD is None, reason="needs openssh-server")
def test_engine_never_applies_a_keyword_sshd_does_not_know_and_heals_the_rest(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ctl = _sshd_control(root, tmp_path_factory, {"NoSuchKeyword": "yes", "MaxAuthTries": 3})
    applied = record_apply(ctl)
    policy = Policy(
        profile="test",
        mode=Mode.ENFORCE,
        interval=60,
        control_timeout=30.0,
        contest=ContestSettings(threshold=3, window=600, backoff_max=3600),
        controls={"sshd": ControlPolicy("sshd", Mode.ENFORCE, True, {}, {})},
        waivers=(),
        sources=(),
    )
    registry = {"sshd": ControlSpec(name="sshd", build=lambda _p, _h: ctl)}
    engine = Engine(policy, ctl.host, registry=registry)
    first, second = engine.run_cycle(), engine.run_cycle()
    found = {f.key: f for f in first.findings()}
    assert (found["MaxAuthTries"].status, found["MaxAuthTries"].declined) == (Status.HEALED, None)
    unknown = found["NoSuchKeyword"]
    assert (unknown.status, unknown.declined) == (Status.DRIFT, NO_SUCH)
    assert applied == [["MaxAuthTries"]]  # the second sweep: nothing to heal
    assert {f.key: f.status for f in second.findings()} == {
        "NoSuchKeyword": Status.DRIFT,
        "MaxAuthTries": Status.OK,
    }
    written = (root / DROPIN.lstrip("/")).read_text()
    assert "MaxAuthTries 3" in written and "NoSuchKeyword" not in written


# -- k3s_args ------------------------------------------------------------------------------

CANNOT = "cannot be fixed from /etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml"
AUDIT = "/var/lib/rancher/k3s/server/audit.yaml"
VANILLA = 'write-kubeconfig-mode: "0600"\n'

K3S_CASES = [
    # situation, make(...) arguments, started, finding key, declined (a prefix), apply's status otherwise
    ("installed but not running", {}, False, "k3s:service", k3s_args.NEEDS_OPERATOR, None),
    (
        "an item, remediation off",
        {"config": VANILLA},
        True,
        "kube-apiserver:request-timeout",
        k3s_args.NOT_REMEDIATED,
        None,
    ),
    (
        "an item, remediation on",
        {"config": VANILLA, "options": {"remediate": "config"}},
        True,
        "kube-apiserver:request-timeout",
        None,
        Status.PENDING,
    ),
    (
        "an item an ExecStart flag overrides",
        {
            "config": VANILLA,
            "options": {"remediate": "config"},
            "exec_flags": ["--kube-apiserver-arg=anonymous-auth=true"],
        },
        True,
        "kube-apiserver:anonymous-auth",
        CANNOT,
        None,
    ),
    ("a managed file with content", {}, True, AUDIT, None, Status.HEALED),
    (
        "a managed file without content",
        {"options": {"audit_policy_content": None}},
        True,
        AUDIT,
        k3s_args.NO_CONTENT,
        None,
    ),
]


@pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")
@pytest.mark.parametrize(
    ("situation", "kwargs", "started", "key", "declined", "acted"), K3S_CASES, ids=[c[0] for c in K3S_CASES]
)
def test_k3s_args_declines_exactly_what_needs_an_operator(
    make: Any,
    situation: str,
    kwargs: dict[str, Any],
    started: bool,
    key: str,
    declined: Optional[str],
    acted: Optional[Status],
) -> None:
    h = make(**kwargs)
    if started:
        h.start()
    found = h.check()[key]
    if declined is not None and declined.startswith("cannot"):
        assert (found.declined or "").startswith(declined)
        declined = found.declined
    dropin = h.node.path("/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml")
    _answer(h.control, found, declined, acted or Status.HEALED)
    assert dropin.exists() is (acted is Status.PENDING)


DROPIN_NOT_WRITTEN = "/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml not written"
UNREADY = (
    f"{DROPIN_NOT_WRITTEN}: --audit-policy-file {AUDIT}: missing; {k3s_args.NO_CONTENT} (K3s would not start)"
)
LOGS = "/var/lib/rancher/k3s/server/logs"
NOT_A_DIR = (
    f"{DROPIN_NOT_WRITTEN}: --audit-log-path directory {LOGS}: {LOGS}: exists and is not a directory"
    " (K3s would not start)"
)


def _logs_a_file(node: Any) -> None:
    shutil.rmtree(node.path(LOGS), ignore_errors=True)
    node.path(LOGS).write_text("not a directory\n")


@pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")
@pytest.mark.parametrize(
    ("options", "setup", "declined"),
    [
        # the policy's audit policy is written first, the log dir made: the drop-in too
        ({"remediate": "config"}, lambda node: shutil.rmtree(node.path(LOGS), ignore_errors=True), None),
        ({"remediate": "config", "audit_policy_content": None}, lambda node: None, UNREADY),
        ({"remediate": "config"}, _logs_a_file, NOT_A_DIR),
    ],
    ids=["ready once apply prepares it", "a path without content", "a file where the log dir goes"],
)
def test_k3s_args_check_foresees_a_path_the_drop_in_would_need(
    make: Any, options: dict[str, Any], setup: Callable[[Any], None], declined: Optional[str]
) -> None:
    """check() declines what apply would not write the drop-in for, with apply's reason; it writes nothing."""
    h = make(config=VANILLA, options=options)
    h.start()
    audit = h.node.path(AUDIT)
    audit.unlink(missing_ok=True)
    setup(h.node)
    logs_before = h.node.path(LOGS).exists()
    found = h.check()["kube-apiserver:request-timeout"]
    assert found.status is Status.DRIFT and found.declined == declined
    assert not audit.exists() and h.node.path(LOGS).exists() is logs_before  # check wrote nothing
    acted = h.control.apply([dataclasses.replace(found, declined=None)])[0]  # apply's own decision
    if declined is None:
        assert acted.status is Status.PENDING, acted.message
        assert audit.exists() and h.node.path(LOGS).is_dir()
    else:
        assert (acted.status, acted.message) == (Status.DRIFT, f"{found.message}; {declined}")
