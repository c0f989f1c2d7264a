"""Write real journal files for tests, without a running journald.

systemd-journal-remote (Debian package systemd-journal-remote) turns the
journal export format (systemd.io/JOURNAL_EXPORT_FORMATS) read from stdin
into a .journal file that systemd.journal.Reader(files=[...]) opens like any
other; trusted fields such as _SYSTEMD_UNIT and _SYSTEMD_INVOCATION_ID are
kept as given.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

JOURNAL_REMOTE = next(
    (
        p
        for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
        if Path(p).exists()
    ),
    shutil.which("systemd-journal-remote") or "",
)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


def invocation() -> str:
    return uuid.uuid4().hex


def export_entry(fields: Mapping[str, object]) -> bytes:
    out = b""
    for key, value in fields.items():
        data = str(value).encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return out + b"\n"


def unit_entries(
    unit: str, invocation_id: str, lines: Iterable[str], start_usec: int, pid: int = 4242
) -> list[dict[str, object]]:
    """One start of a unit: its stdout lines as journald stores them (_COMM is the
    process's: k3s-agent for k3s-agent.service, else k3s-server)."""
    boot = boot_id()
    comm = "k3s-agent" if unit.startswith("k3s-agent") else "k3s-server"
    return [
        {
            "__REALTIME_TIMESTAMP": start_usec + i * 1000,
            "__MONOTONIC_TIMESTAMP": 1_000_000 + (start_usec // 1000) % 10**9 + i,
            "_BOOT_ID": boot,
            "_TRANSPORT": "stdout",
            "PRIORITY": 6,
            "SYSLOG_IDENTIFIER": "k3s",
            "_PID": pid,
            "_COMM": comm,
            "_SYSTEMD_UNIT": unit,
            "_SYSTEMD_INVOCATION_ID": invocation_id,
            "MESSAGE": line,
        }
        for i, line in enumerate(lines)
    ]


def write_journal(path: Path, entries: Iterable[Mapping[str, object]]) -> Path:
    """Write entries (in time order) to a new journal file; path must end in .journal."""
    if not JOURNAL_REMOTE:
        raise RuntimeError("systemd-journal-remote is not installed (apt install systemd-journal-remote)")
    data = b"".join(export_entry(e) for e in entries)
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=data, check=True, capture_output=True)
    return path
