"""files control against hostile host state (issue 12): wrong types, mounts, hard links,
deep trees, races. Real files under a temporary root; real mounts in a private mount
namespace (chown and mount need root)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from pytest import MonkeyPatch

from k3s_agent import hostfs
from k3s_agent.model import Finding, Status
from tests.support.filescontrol import by_key, control, fingerprint, heal, put
from tests.support.netns import in_mountns

pytestmark = pytest.mark.root

NOBODY = pwd.getpwnam("nobody").pw_uid
APP = "/srv/app"


Summary = dict[str, tuple[str, str, str]]


def summary(findings: list[Finding]) -> Summary:
    """Picklable (status, message, observed) per key, to carry results out of a namespace child."""
    return {f.key: (f.status.value, f.message, f.observed) for f in findings}


# -- type: what an item expects ----------------------------------------------------------


def make_dir(path: Path, mode: int) -> Path:
    path.mkdir(parents=True)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("kind", "make", "message"),
    [
        ("file", lambda p: make_dir(p, 0o755), "a directory where a regular file is expected"),
        ("dir", lambda p: put(p, 0o644), "a regular file where a directory is expected"),
    ],
)
def test_a_type_mismatch_is_reported_and_never_changed(
    root: Path, kind: str, make: Callable[[Path], Path], message: str
) -> None:
    target = make(root / "srv/app/key")
    before = fingerprint(target)
    ctl = control(root, {f"{APP}/key": {"mode": "0600", "owner": "root", "type": kind}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and message in found.message, found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.DRIFT and "left for an operator" in result.message
    assert fingerprint(target) == before


def test_a_glob_with_type_file_judges_the_files_and_reports_the_directory(root: Path) -> None:
    put(root / "srv/app/a.key", 0o644)
    odd = make_dir(root / "srv/app/b.key", 0o755)
    ctl = control(root, {f"{APP}/*.key": {"max_mode": "0600", "type": "file"}})
    results = heal(ctl)
    assert results[f"{APP}/a.key"].status is Status.HEALED
    assert results[f"{APP}/b.key"].status is Status.DRIFT
    assert stat.S_IMODE(os.stat(odd).st_mode) == 0o755


def test_type_any_governs_a_directory_too(root: Path) -> None:
    target = make_dir(root / "srv/app/key", 0o755)
    ctl = control(root, {f"{APP}/key": {"max_mode": "0700", "type": "any"}})
    assert heal(ctl)[f"{APP}/key"].status is Status.HEALED
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_a_recursive_item_whose_top_is_a_file_where_a_dir_is_expected(root: Path) -> None:
    target = put(root / "srv/app/tree", 0o644, uid=NOBODY)
    before = fingerprint(target)
    ctl = control(root, {f"{APP}/tree": {"owner": "root", "recursive": True, "type": "dir"}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and "where a directory is expected" in found.message
    assert ctl.apply([found])[0].status is Status.DRIFT
    assert fingerprint(target) == before


# -- mount points ----------------------------------------------------------------------------


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def _bind_file_over_item(root: Path, proc: str) -> tuple[Summary, Summary]:
    mount("--bind", str(root / "home/user/precious"), str(root / "srv/app/key"))
    ctl = control(root, {f"{APP}/key": {"mode": "0600", "owner": "root", "type": "file"}}, proc=proc)
    found = ctl.check()
    return summary(found), summary(ctl.apply([f for f in found if f.status is Status.DRIFT]))


def test_a_file_bind_mounted_over_an_item_is_reported_and_not_changed_through(root: Path) -> None:
    outside = put(root / "home/user/precious", 0o644, uid=NOBODY)
    put(root / "srv/app/key", 0o600)
    before = fingerprint(outside)
    checked, applied = in_mountns(_bind_file_over_item, root, "/proc")
    status, message, _ = checked[f"{APP}/key"]
    assert status == "drift" and "mount point" in message, message
    assert applied[f"{APP}/key"][0] == "drift" and "left for an operator" in applied[f"{APP}/key"][1]
    assert fingerprint(outside) == before


def _mount_over_dir_item(root: Path, how: str, proc: str) -> tuple[dict[str, Any], dict[str, Any]]:
    target = str(root / "srv/app/dir")
    if how == "bind":
        mount("--bind", str(root / "home/user/dir"), target)
    else:
        mount("-t", "tmpfs", "-o", "mode=0777", "tmpfs", target)
    ctl = control(root, {f"{APP}/dir": {"max_mode": "0700", "owner": "root", "type": "dir"}}, proc=proc)
    found = ctl.check()
    applied = summary(ctl.apply([f for f in found if f.status is Status.DRIFT]))
    return summary(found), {"applied": applied, "mode": stat.S_IMODE(os.stat(target).st_mode)}


@pytest.mark.parametrize(
    ("how", "proc"),
    [("bind", "/proc"), ("tmpfs", "/proc"), ("tmpfs", "no-proc")],  # no-proc: st_dev alone
)
def test_a_mount_over_a_directory_item_is_reported_and_not_changed(root: Path, how: str, proc: str) -> None:
    outside = make_dir(root / "home/user/dir", 0o777)
    make_dir(root / "srv/app/dir", 0o755)
    before = fingerprint(outside)
    proc_dir = "/proc" if proc == "/proc" else str(root / "no-proc")
    checked, after = in_mountns(_mount_over_dir_item, root, how, proc_dir)
    status, message, _ = checked[f"{APP}/dir"]
    assert status == "drift" and "mount point" in message, message
    assert after["applied"][f"{APP}/dir"][0] == "drift"
    assert after["mode"] == 0o777  # the mounted directory kept its mode
    assert fingerprint(outside) == before


def _compliant_mount(root: Path) -> dict[str, Any]:
    mount("-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(root / "srv/app/dir"))
    ctl = control(root, {f"{APP}/dir": {"max_mode": "0700", "owner": "root", "type": "dir"}})
    found = ctl.check()[0]
    return {"status": found.status.value, "observed": found.observed}


def test_a_compliant_mount_point_is_ok_and_says_it_is_a_mount(root: Path) -> None:
    make_dir(root / "srv/app/dir", 0o755)
    found = in_mountns(_compliant_mount, root)
    assert found["status"] == "ok" and "mount point" in found["observed"]


def _mount_inside_tree(root: Path, how: str) -> tuple[dict[str, Any], dict[str, Any]]:
    target = str(root / "srv/app/tree/sub")
    if how == "bind":
        mount("--bind", str(root / "home/user/dir"), target)
    else:
        mount("-t", "tmpfs", "tmpfs", target)
        put(Path(target) / "inside", 0o644, uid=NOBODY)
    ctl = control(root, {f"{APP}/tree": {"owner": "root", "max_mode": "0600", "recursive": True}})
    found = ctl.check()
    applied = summary(ctl.apply([f for f in found if f.status is Status.DRIFT]))
    again = summary(ctl.check())
    inside = os.stat(Path(target) / "inside")
    return {
        "check": summary(found),
        "apply": applied,
        "again": again,
        "inside": (inside.st_uid, inside.st_mode),
    }


@pytest.mark.parametrize("how", ["bind", "tmpfs"])
def test_a_recursive_walk_never_enters_a_mount(root: Path, how: str) -> None:
    outside = put(root / "home/user/dir/inside", 0o644, uid=NOBODY)
    before = fingerprint(outside)
    mine = put(root / "srv/app/tree/mine", 0o644, uid=NOBODY)
    make_dir(root / "srv/app/tree/sub", 0o755)
    out = in_mountns(_mount_inside_tree, root, how)
    status, message, observed = out["check"][f"{APP}/tree"]
    assert status == "drift" and "/srv/app/tree/mine" in message and "inside" not in message, message
    assert "1 mount point not entered (/srv/app/tree/sub)" in observed, observed
    assert out["again"][f"{APP}/tree"][0] == "ok"  # a compliant mount root is no drift
    assert out["inside"][0] == NOBODY and stat.S_IMODE(out["inside"][1]) == 0o644
    assert (os.stat(mine).st_uid, stat.S_IMODE(os.stat(mine).st_mode)) == (0, 0o600)  # the rest is healed
    assert fingerprint(outside) == before


# -- hard links ---------------------------------------------------------------------------


def test_check_reports_a_hard_linked_file(root: Path) -> None:
    victim = put(root / "etc/victim", 0o644)
    (root / "srv/app").mkdir(parents=True)
    os.link(victim, root / "srv/app/key")
    ctl = control(root, {f"{APP}/key": {"mode": "0600", "type": "file"}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and "2 hard links" in found.message, found.message
    assert "left for an operator" in ctl.apply([found])[0].message
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644


def test_check_reports_a_hard_linked_file_in_a_tree(root: Path) -> None:
    victim = put(root / "etc/victim", 0o644)
    put(root / "srv/app/tree/plain", 0o644)
    os.link(victim, root / "srv/app/tree/linked")
    ctl = control(root, {f"{APP}/tree": {"max_mode": "0600", "recursive": True}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT, found.message
    assert "/srv/app/tree/linked: 2 hard links" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.DRIFT and "hard links" in result.message
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(root / "srv/app/tree/plain").st_mode) == 0o600


def test_a_compliant_hard_linked_file_is_ok(root: Path) -> None:
    victim = put(root / "etc/victim", 0o600)
    (root / "srv/app").mkdir(parents=True)
    os.link(victim, root / "srv/app/key")
    ctl = control(root, {f"{APP}/key": {"max_mode": "0600"}})
    found = ctl.check()[0]
    assert found.status is Status.OK and "2 hard links" in found.observed


# -- deep and wide trees ----------------------------------------------------------------------


def deep_tree(top: Path, levels: int) -> None:
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_a_1200_level_tree_is_walked_without_recursion_and_capped(root: Path) -> None:
    top = root / "srv/app/tree"
    try:
        deep_tree(top, 1200)
        os.chown(top / "d", NOBODY, 0)
        ctl = control(root, {f"{APP}/tree": {"owner": "root", "recursive": True}})
        found = ctl.check()[0]
        assert found.status is Status.DRIFT
        assert f"deeper than {hostfs.MAX_DEPTH} levels" in found.message, found.message
        assert "/srv/app/tree/d: owner nobody" in found.message
        result = ctl.apply([found])[0]
        assert result.status is Status.DRIFT and "deeper than" in result.message
        assert os.stat(top / "d").st_uid == 0  # what was seen is healed
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)


def test_a_tree_with_more_entries_than_the_cap_is_reported(root: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(hostfs, "MAX_ENTRIES", 50)
    for index in range(80):
        put(root / f"srv/app/tree/f{index:03d}", 0o600)
    ctl = control(root, {f"{APP}/tree": {"max_mode": "0600", "recursive": True}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and "more than 50 entries" in found.message, found.message


def test_a_glob_matching_more_than_the_cap_is_reported(root: Path, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(hostfs, "MAX_ENTRIES", 50)
    for index in range(80):
        put(root / f"srv/app/f{index:03d}.key", 0o600)
    ctl = control(root, {f"{APP}/*.key": {"max_mode": "0600"}})
    found = by_key(ctl.check())
    assert found[f"{APP}/*.key"].status is Status.DRIFT
    assert "more than 50 entries" in found[f"{APP}/*.key"].message


# -- races: one entry costs one cycle, never the control -----------------------------------------


def race_on(monkeypatch: MonkeyPatch, name: str, swap: Callable[[], None]) -> None:
    """Swap a real entry at the exact moment the control reads the link at `name`."""
    real = os.readlink

    def racing(path: Any, *args: Any, **kw: Any) -> Any:
        if path == name:
            swap()
        return real(path, *args, **kw)

    monkeypatch.setattr(os, "readlink", racing)


def link_to_file(link: Path) -> Callable[[], None]:
    def swap() -> None:
        if link.is_symlink():
            link.unlink()
            put(link, 0o644)

    return swap


@pytest.mark.parametrize("recursive", [False, True])
def test_a_link_swapped_for_a_file_costs_that_entry_one_cycle(
    root: Path, monkeypatch: MonkeyPatch, recursive: bool
) -> None:
    put(root / "srv/app/tree/b.key", 0o644)
    os.symlink("/etc/shadow", root / "srv/app/tree/a.key")
    key = f"{APP}/tree" if recursive else f"{APP}/tree/*.key"
    ctl = control(root, {key: {"max_mode": "0600", "recursive": recursive}})
    race_on(monkeypatch, "a.key", link_to_file(root / "srv/app/tree/a.key"))
    found = by_key(ctl.check())  # before: OSError EINVAL from readlink failed the whole control
    a_key = key if recursive else f"{APP}/tree/a.key"
    assert found[a_key].status is Status.DRIFT
    assert "changed while we looked" in found[a_key].message, found[a_key].message
    monkeypatch.undo()
    heal(ctl)
    assert stat.S_IMODE(os.stat(root / "srv/app/tree/b.key").st_mode) == 0o600
    again = by_key(control(root, {key: {"max_mode": "0600", "recursive": recursive}}).check())
    assert "changed while" not in again[a_key].message  # the next cycle judges it as it is now


def test_a_directory_swapped_for_a_link_mid_walk_is_named(root: Path, monkeypatch: MonkeyPatch) -> None:
    victim = put(root / "etc/victim/x", 0o644, uid=NOBODY)
    before = fingerprint(victim)
    put(root / "srv/app/tree/sub/x", 0o600)
    ctl = control(root, {f"{APP}/tree": {"owner": "root", "max_mode": "0600", "recursive": True}})
    real = os.stat

    def racing(path: Any, *args: Any, **kw: Any) -> Any:
        result = real(path, *args, **kw)
        sub = root / "srv/app/tree/sub"
        if path == "sub" and not sub.is_symlink():
            os.rename(sub, root / "srv/app/sub.old")
            os.symlink(root / "etc/victim", sub)
        return result

    monkeypatch.setattr(os, "stat", racing)
    found = ctl.check()[0]
    monkeypatch.undo()
    assert found.status is Status.DRIFT and "/srv/app/tree/sub: changed while we looked" in found.message
    ctl.apply([found])
    assert fingerprint(victim) == before


def test_a_key_the_kernel_refuses_fails_that_item_only(root: Path) -> None:
    put(root / "srv/app/ok", 0o644)
    items = {
        f"{APP}/a\x00b": {"max_mode": "0600"},
        f"{APP}/{'x' * 300}": {"max_mode": "0600"},
        f"{APP}/ok": {"max_mode": "0600"},
    }
    found = by_key(control(root, items).check())
    assert found[f"{APP}/a\x00b"].status is Status.FAILED
    assert found[f"{APP}/{'x' * 300}"].status is Status.FAILED
    assert found[f"{APP}/ok"].status is Status.DRIFT
