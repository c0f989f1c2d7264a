"""The version of the K3s this node runs: `k3s --version` of the binary its unit starts.

The binary is the first word of the unit's ExecStart (k3s.service, else
k3s-agent.service; the install script writes `ExecStart=/usr/local/bin/k3s
server ...`), else /usr/local/bin/k3s. K3s prints (pkg/version, cmd/k3s)

    k3s version v1.30.4+k3s1 (98262b5d)
    go version go1.22.5

The command runs through the host layer (argv only, a timeout, capped output),
only for a root-owned binary no one else can write, and its answer is cached
per binary path + inode + mtime + size: an upgrade replaces the file, so the
cache never serves an old version and a node does not fork K3s every load.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import threading
from typing import Optional

from k3s_agent.host import Host, HostError
from k3s_agent.k3s.discovery import BINARY, UNITS
from k3s_agent.k3s.unit import load_unit

TIMEOUT = 5.0  # seconds; `k3s --version` answers in ~50 ms
OUTPUT_LIMIT = 4096  # two short lines expected
_LINE = re.compile(r"k3s version (v\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?)(?:\s|$)")
NOT_FOUND = "K3s not found"


@dataclasses.dataclass(frozen=True)
class K3sVersion:
    version: Optional[str]  # "v1.30.4+k3s1", None when unknown
    binary: Optional[str]  # host path run (None: no binary)
    why: str = ""  # why the version is unknown


_cache: dict[tuple[str, int, int, int, int], K3sVersion] = {}
_lock = threading.Lock()


def parse(output: str) -> Optional[str]:
    """The version from `k3s --version` output (its first line), None for anything else."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    match = _LINE.match(first)
    return match.group(1) if match else None


def unit_binary(host: Host) -> Optional[str]:
    """The absolute path the K3s unit runs (server unit first), else the default binary
    when it exists; None when neither is there."""
    for name in UNITS.values():
        unit = load_unit(host, name)
        if unit is not None and unit.exec_start and unit.exec_start[0].startswith("/"):
            return unit.exec_start[0]
    return BINARY if host.exists(BINARY) else None


def detect(host: Host) -> K3sVersion:
    """The K3s version on this host (cached per binary file)."""
    binary = unit_binary(host)
    if binary is None:
        return K3sVersion(None, None, NOT_FOUND)
    try:
        st = host.stat(binary)
    except OSError as exc:
        return K3sVersion(None, binary, f"{NOT_FOUND} ({binary}: {exc.strerror})")
    refusal = _untrusted(binary, st)
    if refusal:
        return K3sVersion(None, binary, refusal)
    key = (binary, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    found = _run(host, binary)
    with _lock:
        _cache.clear()  # one binary per node: keep only the newest answer
        _cache[key] = found
    return found


def _untrusted(binary: str, st: os.stat_result) -> str:
    """Why we will not run it (as root it would run with our rights), or ""."""
    if not stat.S_ISREG(st.st_mode):
        return f"K3s version unknown ({binary}: not a regular file)"
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        return f"K3s version unknown ({binary}: writable by others than root; not run)"
    return ""


def _run(host: Host, binary: str) -> K3sVersion:
    try:
        code, raw = host.run_capped([host.path(binary), "--version"], timeout=TIMEOUT, limit=OUTPUT_LIMIT)
    except HostError as exc:
        return K3sVersion(None, binary, f"K3s version unknown ({exc})")
    text = raw.decode("utf-8", errors="replace")
    version = parse(text) if code == 0 else None
    if version is None:
        shown = text.strip().splitlines()[0][:80] if text.strip() else "no output"
        return K3sVersion(None, binary, f"K3s version unknown ({binary} --version: exit {code}, {shown!r})")
    return K3sVersion(version, binary)
