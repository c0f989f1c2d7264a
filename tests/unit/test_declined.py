"""Finding.declined is set by check() exactly where apply will not act (sysctl, files).

Per situation: is the field set, and does apply (called directly, as a tool or
test would) then leave the host as it was and answer drift with that reason,
while every undeclined drift is still healed. sshd and k3s_args, which need a
real sshd and the K3s fixture, are in tests/integration/test_declined_real.py;
the engine's side (never applies them, never counts them) in test_engine.py.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from k3s_agent.controls.files import LEFT, FilesControl
from k3s_agent.controls.sysctl import NOT_OURS, PERSIST_FILE, SysctlControl
from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.host import Host
from k3s_agent.log import finding_fields, finding_message
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy
from k3s_agent.report import build_document, exit_code, render


def _check_then_apply(ctl: Any, key: str, watched: Path) -> tuple[Finding, Finding, bytes, bytes]:
    """(the key's finding, apply's answer to it, watched file before, after)."""
    found = {f.key: f for f in ctl.check()}[key]
    before = _state(watched)
    result = ctl.apply([found])[0]
    return found, result, before, _state(watched)


def _state(path: Path) -> bytes:
    if not os.path.lexists(path):
        return b"<none>"
    st = os.lstat(path)
    content = os.readlink(path).encode() if os.path.islink(path) else b""
    if path.is_file() and not path.is_symlink():
        content = path.read_bytes()[:64]
    return f"{st.st_mode:o} {st.st_uid}:{st.st_gid} ".encode() + content


def _assert_declined_exactly_there(
    found: Finding, result: Finding, before: bytes, after: bytes, declined: Optional[str]
) -> None:
    assert found.status is Status.DRIFT
    assert found.declined == declined
    if declined is None:  # apply acts on it
        assert result.status is Status.HEALED, result.message
        assert result.declined is None
    else:  # apply answers with the reason and touches nothing
        assert result.status is Status.DRIFT
        assert result.message == f"{found.message}; {declined}"
        assert after == before


# -- sysctl --------------------------------------------------------------------------------


def _sysctl(root: Path, proc: Path) -> SysctlControl:
    policy = ControlPolicy("sysctl", Mode.ENFORCE, True, {"persist": True}, {"kernel.panic": {"value": 10}})
    return SysctlControl(policy, Host(root=str(root), proc=str(proc)))


def _foreign_wins(root: Path) -> Path:
    path = root / "etc/sysctl.d/99-local.conf"
    path.write_text("kernel.panic = 0\n")
    return path


def _oversized(root: Path) -> Path:
    path = root / "etc/sysctl.d/60-huge.conf"
    path.write_bytes(b"")
    os.truncate(path, 2 << 20)
    return path


SYSCTL = [
    # situation, set-up (returns the file apply must leave), finding key, declined
    ("runtime value differs", lambda root: root / "proc/sys/kernel/panic", "kernel.panic", None),
    ("our persisted file missing", lambda root: root / PERSIST_FILE.lstrip("/"), PERSIST_FILE, None),
    ("a later foreign file wins at boot", _foreign_wins, "kernel.panic@boot", NOT_OURS),
    ("a sysctl.d file too large to read", _oversized, "/etc/sysctl.d/60-huge.conf@boot", NOT_OURS),
]


@pytest.mark.parametrize(("situation", "setup", "key", "declined"), SYSCTL, ids=[s[0] for s in SYSCTL])
def test_sysctl_declines_exactly_another_tools_boot_file(
    root: Path,
    fake_proc: Path,
    situation: str,
    setup: Callable[[Path], Path],
    key: str,
    declined: Optional[str],
) -> None:
    watched = setup(root)
    ctl = _sysctl(root, fake_proc)
    _assert_declined_exactly_there(*_check_then_apply(ctl, key, watched), declined)
    # the rest of the drift is never declined: runtime and our own file
    others = [f for f in ctl.check() if f.status is Status.DRIFT and not f.key.endswith("@boot")]
    assert all(f.declined is None for f in others)


# -- files ---------------------------------------------------------------------------------

APP = "/srv/app/data"


def _file(root: Path, mode: int = 0o644) -> Path:
    path = root / APP.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret\n")
    os.chmod(path, mode)
    return path


def _symlink(root: Path) -> Path:
    target = _file(root)
    link = target.with_name("link")
    link.symlink_to(target)
    return link


def _fifo(root: Path) -> Path:
    path = root / APP.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path, 0o644)
    return path


def _hard_linked(root: Path) -> Path:
    path = _file(root)
    os.link(path, path.with_name("other-name"))
    return path


def _tree(root: Path) -> Path:
    path = _file(root)
    return path.parent


def _tree_through_a_link(root: Path) -> Path:
    real = _file(root).parent
    link = real.with_name("app-link")
    link.symlink_to(real)
    return link


FILES: list[tuple[str, Callable[[Path], Path], str, dict[str, Any], Optional[str]]] = [
    # situation, set-up (returns the path apply must leave), item key, item, declined
    ("mode too open", _file, APP, {"max_mode": "0600"}, None),
    ("required, nothing matches", lambda r: r / "srv/none", "/srv/app/none", {"required": True}, ...),
    ("a symlink where a file is expected", _symlink, "/srv/app/link", {"max_mode": "0600"}, LEFT),
    ("a fifo", _fifo, APP, {"max_mode": "0600"}, LEFT),
    ("a file where a dir is expected", _file, APP, {"max_mode": "0600", "type": "dir"}, LEFT),
    ("a hard-linked file", _hard_linked, APP, {"max_mode": "0600"}, LEFT),
    ("a tree with an open file", _tree, "/srv/app", {"max_mode": "0700", "recursive": True}, None),
    # every deviation below is one apply refuses to change: the whole finding is declined
    (
        "a tree whose one deviation is hard-linked",
        _hard_linked,
        "/srv/app",
        {"max_mode": "0700", "recursive": True},
        LEFT,
    ),
    (
        "a tree through a symlink",
        _tree_through_a_link,
        "/srv/app-link",
        {"recursive": True, "max_mode": "0700"},
        LEFT,
    ),
]


@pytest.mark.parametrize(("situation", "setup", "key", "item", "declined"), FILES, ids=[f[0] for f in FILES])
def test_files_declines_exactly_what_it_leaves_for_an_operator(
    root: Path,
    situation: str,
    setup: Callable[[Path], Path],
    key: str,
    item: dict[str, Any],
    declined: Any,
) -> None:
    watched = setup(root)
    if declined is ...:
        declined = "we never create files: K3s (or its operator) must"
    ctl = FilesControl(ControlPolicy("files", Mode.ENFORCE, True, {}, {key: item}), Host(root=str(root)))
    _assert_declined_exactly_there(*_check_then_apply(ctl, key, watched), declined)


def test_files_compliant_items_carry_no_reason(root: Path) -> None:
    _file(root, 0o600)
    ctl = FilesControl(
        ControlPolicy("files", Mode.ENFORCE, True, {}, {APP: {"max_mode": "0600"}}), Host(root=str(root))
    )
    assert [(f.status, f.declined) for f in ctl.check()] == [(Status.OK, None)]


# -- every rendering says why apply leaves it ----------------------------------------------

BOOT = Finding(
    "sysctl",
    "kernel.panic@boot",
    Status.DRIFT,
    "10",
    "0",
    "/etc/sysctl.d/99-local.conf loads after /etc/sysctl.d/90-k3s-agentd.conf and sets '0': it wins at boot",
    "4.2.6",
    declined=NOT_OURS,
)


def _document() -> dict[str, Any]:
    cycle = CycleReport(1, time.time(), 0.001, [ControlReport("sysctl", Mode.ENFORCE, [BOOT], 0.001)])
    policy = Policy("test", Mode.ENFORCE, 60, 30, ContestSettings(), {}, (), ())
    return build_document(cycle, policy)


def test_renderings_and_the_journal_carry_the_reason() -> None:
    document = _document()
    said = f"{BOOT.message}; {NOT_OURS}"  # what apply answered before check declined it
    assert document["controls"][0]["findings"][0]["declined"] == NOT_OURS
    assert f"             needs you: {NOT_OURS}" in render(document, "table").splitlines()
    junit = ET.fromstring(render(document, "junit"))
    assert [f.get("message") for f in junit.iter("failure")] == [said]
    kube = json.loads(render(document, "kube-bench-json"))
    assert [r.get("reason") for c in kube["Controls"] for t in c["tests"] for r in t["results"]] == [said]
    assert finding_message("drift", BOOT) == f"sysctl kernel.panic@boot: drift: {said}"
    assert finding_fields(BOOT)["declined"] == NOT_OURS
    assert exit_code(document) == 1  # still drift: the node is not compliant
