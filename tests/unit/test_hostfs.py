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


# -- the one walk, its two link policies -------------------------------------------------

REFUSE, ROOT_PLACED = hostfs.LinkPolicy.REFUSE_ALL, hostfs.LinkPolicy.ROOT_PLACED
NOBODY = 65534


def linked_tree(root: Path, folder_mode: int, link_owner: int) -> None:
    """/srv/real/ (a folder) and /srv/link -> /srv/real (absolute: under the root)."""
    (root / "srv/real").mkdir(parents=True)
    (root / "srv").chmod(folder_mode)
    os.symlink("/srv/real", root / "srv/link")
    os.lchown(root / "srv/link", link_owner, link_owner)


@pytest.mark.skipif(os.geteuid() != 0, reason="link ownership needs root")
@pytest.mark.parametrize(
    ("policy", "folder_mode", "link_owner", "expected"),
    [
        (REFUSE, 0o755, 0, hostfs.LinkInPath),  # never a link, whoever placed it
        (REFUSE, 0o1777, 0, hostfs.LinkInPath),
        (ROOT_PLACED, 0o755, 0, None),  # root's link in root's folder: followed
        (ROOT_PLACED, 0o1777, 0, None),  # sticky: others cannot replace root's link
        (ROOT_PLACED, 0o777, 0, hostfs.HostError),  # anyone could have swapped it in
        (ROOT_PLACED, 0o775, 0, hostfs.HostError),
        (ROOT_PLACED, 0o755, NOBODY, hostfs.HostError),  # not root's link
    ],
)
def test_a_link_on_the_way_by_policy(
    tmp_path: Path, policy: hostfs.LinkPolicy, folder_mode: int, link_owner: int, expected: type | None
) -> None:
    linked_tree(tmp_path, folder_mode, link_owner)
    if expected is not None:
        with pytest.raises(expected, match="/srv/link"):
            hostfs.open_dir(str(tmp_path), "/srv/link/below", policy, create=True)
        assert not (tmp_path / "srv/real/below").exists()  # nothing made through it
        return
    fd = hostfs.open_dir(str(tmp_path), "/srv/link/below", policy, create=True)
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "srv/real/below").stat().st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("policy", [REFUSE, ROOT_PLACED])
def test_a_missing_folder_is_made_only_when_asked(tmp_path: Path, policy: hostfs.LinkPolicy) -> None:
    with pytest.raises(FileNotFoundError):
        hostfs.open_dir(str(tmp_path), "/a/b", policy)
    os.close(hostfs.open_dir(str(tmp_path), "/a/b", policy, create=True))
    assert (tmp_path / "a/b").is_dir()


@pytest.mark.parametrize(("policy", "expected"), [(REFUSE, hostfs.Refused), (ROOT_PLACED, hostfs.HostError)])
def test_a_file_where_a_folder_should_be(tmp_path: Path, policy: hostfs.LinkPolicy, expected: type) -> None:
    (tmp_path / "a").write_text("")
    with pytest.raises(expected, match="not a directory"):
        hostfs.open_dir(str(tmp_path), "/a/b", policy, create=True)


def test_a_link_loop_ends(tmp_path: Path) -> None:
    os.symlink("/loop", tmp_path / "loop")
    with pytest.raises(hostfs.HostError, match="/loop"):
        hostfs.open_dir(str(tmp_path), "/loop/x", ROOT_PLACED, create=True)
