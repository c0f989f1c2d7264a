"""A files control over real files under a temporary root, and the small moves its tests repeat."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from k3s_agent.controls.files import FilesControl
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ControlPolicy


def control(root: Path, items: dict[str, dict[str, Any]], proc: str = "/proc") -> FilesControl:
    """An enforcing files control with `items`, on Host(root=root, proc=proc)."""
    policy = ControlPolicy("files", Mode.ENFORCE, True, {}, items)
    return FilesControl(policy, Host(root=str(root), proc=proc))


def by_key(findings: list[Finding]) -> dict[str, Finding]:
    return {f.key: f for f in findings}


def put(path: Path, mode: int, uid: int = 0) -> Path:
    """A file with that mode, owned by uid:0 (parents made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret\n")
    os.chown(path, uid, 0)  # before chmod: chown clears set-id bits
    os.chmod(path, mode)
    return path


def fingerprint(path: Path) -> tuple[int, int, int, int]:
    """What a write to the inode would change: mode, owner, group, ctime."""
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns


def heal(ctl: FilesControl) -> dict[str, Finding]:
    """check, then apply what drifted; the apply results by key."""
    drift = [f for f in ctl.check() if f.status is Status.DRIFT]
    return by_key(ctl.apply(drift))
