"""hostfs's mount table: mountinfo parsed bounded, escapes decoded, host root mapped."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from k3s_agent import hostfs
from k3s_agent.host import Host

LINES = [
    "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    "65 22 254:0 /tmp/src {root}/srv/app/key rw - ext4 /dev/vda rw",
    r"66 22 0:40 / {root}/srv/my\040dir rw - tmpfs tmpfs rw",
    r"67 22 0:41 / {root}/srv/back\134slash rw - tmpfs tmpfs rw",
]


def table(tmp_path: Path, lines: list[str], root: str) -> hostfs.MountTable:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text("".join(line.format(root=root.rstrip("/")) + "\n" for line in lines))
    return Host(root=root, proc=str(proc)).mounts()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/app/key", True),
        ("/srv/my dir", True),  # \040 is a space
        ("/srv/back\\slash", True),  # \134 is a backslash
        ("/srv/app", False),
        ("/srv/my\\040dir", False),
    ],
)
def test_mount_points_are_host_paths_with_escapes_decoded(tmp_path: Path, path: str, expected: bool) -> None:
    root = str(tmp_path / "host")
    assert table(tmp_path, LINES, root).has(path) is expected


def test_the_real_root_is_not_prefixed(tmp_path: Path) -> None:
    mounts = table(tmp_path, LINES, "/")
    assert mounts.has("/") and mounts.has("/srv/app/key")


def test_a_missing_mountinfo_is_an_empty_table(tmp_path: Path) -> None:
    mounts = Host(root=str(tmp_path), proc=str(tmp_path / "none")).mounts()
    assert mounts.points == frozenset() and not mounts.truncated


def test_a_huge_mountinfo_is_read_up_to_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostfs, "MOUNTINFO_LIMIT", 100)
    many = [f"{i} 22 0:40 / /srv/m{i:04d} rw - tmpfs tmpfs rw" for i in range(1000)]
    mounts = table(tmp_path, many, "/")
    assert mounts.truncated and 0 < len(mounts.points) < 5
    assert all(p.startswith("/srv/m") and len(p) == len("/srv/m0000") for p in mounts.points)  # no cut line


def fake_stat(mode: int, dev: int) -> os.stat_result:
    return os.stat_result((mode, 1, dev, 1, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "dev", "listed", "expected"),
    [
        (stat.S_IFDIR | 0o755, 2, False, True),  # another file system mounted on a directory
        (stat.S_IFDIR | 0o755, 1, False, False),
        (stat.S_IFDIR | 0o755, 1, True, True),  # a bind mount of the same file system
        (stat.S_IFREG | 0o644, 1, True, True),  # a file bind-mounted over a file
        (stat.S_IFREG | 0o644, 2, False, False),  # overlayfs: a lower layer's st_dev, no mount
    ],
)
def test_is_mount(mode: int, dev: int, listed: bool, expected: bool) -> None:
    mounts = hostfs.MountTable(frozenset({"/srv/app/x"} if listed else set()))
    assert hostfs.is_mount(fake_stat(mode, dev), 1, "/srv/app/x", mounts) is expected
