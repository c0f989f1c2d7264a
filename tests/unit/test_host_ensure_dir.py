"""Host.ensure_dir: the audit log directory is made before K3s is pointed at it."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Optional

import pytest

from k3s_agent.host import Host, HostError

pytestmark = pytest.mark.root


def _nothing(root: Path) -> None:
    pass


def _dir_0755(root: Path) -> None:
    (root / "var/log/k3s").mkdir(parents=True)
    os.chmod(root / "var/log/k3s", 0o755)


def _file(root: Path) -> None:
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/k3s").write_text("x")


def _link(root: Path) -> None:
    (root / "var/log").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    os.symlink(root / "elsewhere", root / "var/log/k3s")


# (what is there first, path, read-only host, mode after or the error)
CASES: list[tuple[Callable[[Path], None], str, bool, object]] = [
    (_nothing, "/var/log/k3s", False, 0o700),  # made, parents too
    (_dir_0755, "/var/log/k3s", False, 0o755),  # an existing one is left as it is
    (_file, "/var/log/k3s", False, "exists and is not a directory"),
    (_link, "/var/log/k3s", False, "exists and is not a directory"),  # never followed
    (_nothing, "/var/log/../k3s", False, "not a normalised absolute path"),
    (_nothing, "var/log/k3s", False, "not a normalised absolute path"),
    (_nothing, "/var/log/k3s", True, "read-only run"),
]


@pytest.mark.parametrize(("setup", "path", "read_only", "want"), CASES)
def test_ensure_dir(tmp_path: Path, setup: Callable[[Path], None], path: str, read_only: bool, want: object):
    setup(tmp_path)
    host = Host(root=str(tmp_path), read_only=read_only)
    if isinstance(want, str):
        with pytest.raises(HostError, match=want):
            host.ensure_dir(path)
        return
    st = host.ensure_dir(path, mode=0o700)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == want and st.st_uid == 0
    made: Optional[os.stat_result] = os.lstat(tmp_path / path.lstrip("/"))
    assert made is not None and stat.S_IMODE(made.st_mode) == want
