"""The arguments K3s's components really run with: the `Running <component> ...`
lines K3s logs at start, read from journald for the unit's current start only.

The current start is the unit's InvocationID (journald stamps every line of
the unit's processes with _SYSTEMD_INVOCATION_ID; systemd.exec(5) $INVOCATION_ID),
else the start time of the main process. The CIS self-assessment checks read the
same lines (`journalctl -D /var/log/journal -u k3s | grep 'Running kube-apiserver' | tail -n1`).

What was found is remembered per invocation (in memory and in the state dir),
so a journal that rotated the start lines away does not turn a verified node
into an unverifiable one, and later cycles read only new entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any, Optional

from k3s_agent.host import STATE_DIR, Host, HostError
from k3s_agent.k3s.args import Args, parse_running_line

CACHE_FILE = f"{STATE_DIR}/k3s-running-args.json"
JOURNAL_DIR = "/var/log/journal"
# journald splits stdout lines at LineMax (48K by default, journald.conf(5)), so a
# Running line never reaches this; a longer MESSAGE (native protocol) is skipped,
# never parsed in part. The threshold is a hint to libsystemd to stop copying
# there (sd_journal_set_data_threshold(3)): it may return more, so we check too.
MESSAGE_LIMIT = 64 << 10


@dataclasses.dataclass(frozen=True)
class JournalSource:
    """Which journal to open: the system's (default), a directory, or given files."""

    path: Optional[str] = None
    files: Sequence[str] = ()

    def open(self) -> Any:
        from systemd import journal  # python3-systemd; imported late: optional at import time

        if self.files:
            return journal.Reader(files=list(self.files))
        if self.path:
            return journal.Reader(path=self.path)
        return journal.Reader()


@dataclasses.dataclass(frozen=True)
class RunningArgs:
    components: dict[str, Args]  # component -> args of its last Running line
    since: str  # how "the current start" was pinned (for status)
    error: str = ""  # why the journal could not be read ("" when it could)

    def get(self, component: str) -> Optional[Args]:
        return self.components.get(component)


@dataclasses.dataclass
class _Progress:
    key: str
    cursor: Optional[str]
    components: dict[str, Args]


class RunningArgsReader:
    def __init__(self, host: Host, source: Optional[JournalSource] = None, persist: bool = True):
        self.host = host
        # The system journal; under another root (a copied tree, a test) that root's journal dir.
        self.source = source or (
            JournalSource() if host.root == "/" else JournalSource(path=host.path(JOURNAL_DIR))
        )
        self.persist = persist
        self._progress: Optional[_Progress] = None

    def read(self, unit: str, invocation_id: Optional[str], started_at: Optional[float]) -> RunningArgs:
        """Running lines of `unit` since its current start (invocation, else start time)."""
        key = f"{unit}/{invocation_id or ''}/{int(started_at or 0)}"
        since = (
            f"invocation {invocation_id}"
            if invocation_id
            else (f"process start {_iso(started_at)}" if started_at else "unknown start (all runs)")
        )
        progress = self._progress if self._progress and self._progress.key == key else self._load(key)
        try:
            progress = self._scan(unit, invocation_id, started_at, progress)
        except Exception as exc:  # noqa: BLE001 - any journal failure is reported, never fatal
            components = progress.components if progress else {}
            return RunningArgs(dict(components), since, f"cannot read the journal: {exc}")
        self._remember(progress)
        return RunningArgs(dict(progress.components), since)

    def _scan(
        self,
        unit: str,
        invocation_id: Optional[str],
        started_at: Optional[float],
        progress: Optional[_Progress],
    ) -> _Progress:
        key = f"{unit}/{invocation_id or ''}/{int(started_at or 0)}"
        components = dict(progress.components) if progress else {}
        reader = self.source.open()
        try:
            reader.data_threshold = MESSAGE_LIMIT + 64
            reader.add_match(_SYSTEMD_UNIT=unit)
            if invocation_id:
                reader.add_match(_SYSTEMD_INVOCATION_ID=invocation_id)
            cursor = progress.cursor if progress else None
            if cursor:
                reader.seek_cursor(cursor)
                # Past the cursor's own entry, unless it was rotated away (then this one is new).
                if reader._next() and not reader.test_cursor(cursor):
                    self._take(_message(reader), components)
            elif started_at and not invocation_id:
                reader.seek_realtime(datetime.datetime.fromtimestamp(started_at, tz=datetime.timezone.utc))
            last = cursor
            # The low-level calls read MESSAGE alone: converting every field of every
            # entry (Reader.get_next) is ~10x slower on a chatty K3s run.
            while reader._next():
                self._take(_message(reader), components)
                last = reader._get_cursor()
            return _Progress(key, last, components)
        finally:
            reader.close()

    @staticmethod
    def _take(message: Optional[str], components: dict[str, Args]) -> None:
        if not message or "Running " not in message:
            return
        parsed = parse_running_line(message)
        if parsed:
            components[parsed[0]] = parsed[1]

    # -- memory across cycles and restarts of the agent ------------------------------

    def _load(self, key: str) -> Optional[_Progress]:
        if not self.persist:
            return None
        try:
            text = self.host.read_text(CACHE_FILE)
            data = json.loads(text) if text else None
        except (HostError, OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        return _Progress(key, data.get("cursor"), dict(data.get("components") or {}))

    def _remember(self, progress: _Progress) -> None:
        changed = self._progress is None or (
            (self._progress.key, self._progress.components) != (progress.key, progress.components)
        )
        self._progress = progress
        if not (self.persist and changed):
            return
        data = {"key": progress.key, "cursor": progress.cursor, "components": progress.components}
        # A cache, not a record: when it cannot be written the next cycle reads the journal again.
        with contextlib.suppress(HostError, OSError):
            self.host.write_atomic(CACHE_FILE, json.dumps(data).encode(), mode=0o600, backup=False)


def _message(reader: Any) -> Optional[str]:
    try:
        raw = reader._get("MESSAGE")
    except KeyError:  # an entry without MESSAGE (binary-only or a stray field set)
        return None
    if len(raw) > MESSAGE_LIMIT:  # too long to be a Running line, or cut short by the threshold
        return None
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def _iso(timestamp: Optional[float]) -> str:
    if not timestamp:
        return "?"
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).isoformat(timespec="seconds")
