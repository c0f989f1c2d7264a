"""Commit-confirmed enforcement: apply, then roll back unless someone confirms in time.

The idea of Juniper's `commit confirmed` and `firewall-cmd --timeout`: a
change that could cut the operator off (the firewall, sshd) is applied with a
deadline. `k3s-agentctl confirm`, run from a NEW ssh session (which proves the
path still works), keeps it; otherwise the exact previous state comes back.

This module owns the record of that promise, on disk so that a daemon crash
or a reboot before the deadline still rolls back:
/var/lib/k3s-agentd/confirm.json (0600, written atomically through the host
layer, every read-modify-write under a flock). One entry per control:

- pending: the control's snapshot from before the change, and the deadline;
- rolled_back: restored, not confirmed: the daemon does not heal the control
  again (that would re-apply the very change that was rolled back) until the
  operator acts: a policy reload, or `apply --confirm` + `confirm`;
- established: confirmed; later heals (drift repairs) are not gated again
  until the control leaves enforce mode.

The engine knows no subsystem: controls that can be rolled back offer
`snapshot()` and `restore(snapshot)`; `Gate` is what the engine asks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from k3s_agent.host import STATE_DIR, Host, HostError, read_head, systemd_booted

RECORD = f"{STATE_DIR}/confirm.json"
LOCK = f"{STATE_DIR}/confirm.lock"
MAX_RECORD = 8 << 20  # bytes; a snapshot is a few KB, anything near this is not ours
PENDING, ROLLED_BACK, ESTABLISHED = "pending", "rolled_back", "established"
STATES = (PENDING, ROLLED_BACK, ESTABLISHED)
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 86400.0
TIMER_PREFIX = "k3s-agentd-rollback-"
# Changes armed together (one cycle arms the firewall and sshd a few ms apart)
# come back together: a pending entry this close to its deadline joins a rollback.
TOGETHER = 2.0


# -- clocks ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clock:
    """Wall clock, monotonic clock and boot id: which of them a deadline trusts.

    Within one boot the monotonic clock decides (CLOCK_MONOTONIC is system wide
    and does not jump when NTP or an admin sets the time). After a reboot it
    restarts from zero, so only the wall clock is left; a wall clock that now
    reads earlier than when the change was armed cannot be trusted, and the
    rollback happens (restoring is the safe side).
    """

    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    boot_id: Callable[[], str] = lambda: ""


def boot_id_reader(host: Host) -> Callable[[], str]:
    def read() -> str:
        try:
            return host.proc_read("sys/kernel/random/boot_id", 64).decode(errors="replace").strip()
        except (OSError, HostError):  # a 37-byte UUID: anything longer is no boot id
            return ""

    return read


# -- the record -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    state: str
    at: float  # wall clock when the entry entered this state
    deadline: float = 0.0  # pending: wall clock
    timeout: float = 0.0
    boot_id: str = ""
    deadline_mono: float = 0.0  # pending: CLOCK_MONOTONIC of boot_id
    snapshot: Any = None
    by: str = ""  # who armed it: "k3s-agentd" or "k3s-agentctl apply --confirm"
    session: str = ""  # SSH_CONNECTION of the session that armed it
    note: str = ""  # rolled_back: what was restored and why

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Entry:
        if not isinstance(data, dict):
            raise ValueError("an entry is not a table")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        entry = cls(**data)
        if entry.state not in STATES:
            raise ValueError(f"unknown state {entry.state!r}")
        for name in ("at", "deadline", "timeout", "deadline_mono"):
            if not isinstance(getattr(entry, name), (int, float)) or isinstance(getattr(entry, name), bool):
                raise ValueError(f"{name} is not a number")
        return entry


@dataclasses.dataclass
class Record:
    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    problem: str = ""  # why the file on disk could not be used ("" = fine or missing)

    def pending(self) -> dict[str, Entry]:
        return {n: e for n, e in self.entries.items() if e.state == PENDING}


def parse(data: Optional[bytes], where: str = RECORD) -> Record:
    """The record in a file's bytes; missing = empty; unusable = empty with the reason."""
    if data is None:
        return Record()
    try:
        if len(data) > MAX_RECORD:
            raise ValueError(f"{len(data)} bytes, more than {MAX_RECORD}")
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("controls"), dict):
            raise ValueError("not a version 1 record")
        return Record({str(n): Entry.from_dict(e) for n, e in raw["controls"].items()})
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return Record(problem=f"{where}: unusable, ignored ({exc})")


def _copy(record: Record) -> Record:
    """A record the caller may change (entries are frozen; the table is not)."""
    return Record(dict(record.entries), record.problem)


def dump(record: Record) -> bytes:
    body = {"version": 1, "controls": {n: e.to_dict() for n, e in sorted(record.entries.items())}}
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def due(entry: Entry, clock: Clock) -> Optional[str]:
    """Why a pending entry must be rolled back now, or None while it may still wait."""
    if entry.state != PENDING:
        return None
    boot = clock.boot_id()
    if boot and boot == entry.boot_id:
        if clock.mono() >= entry.deadline_mono:
            return f"not confirmed within {entry.timeout:g}s"
        return None
    now = clock.wall()
    if now < entry.at:
        return "the wall clock now reads earlier than when the change was armed (after a reboot): cannot wait"
    if now >= entry.deadline:
        return f"not confirmed within {entry.timeout:g}s (deadline passed, across a reboot or restart)"
    return None


def seconds_left(entry: Entry, clock: Clock) -> float:
    if due(entry, clock) is not None:
        return 0.0
    boot = clock.boot_id()
    if boot and boot == entry.boot_id:
        return max(entry.deadline_mono - clock.mono(), 0.0)
    return max(entry.deadline - clock.wall(), 0.0)


def stamp(epoch: float) -> str:
    """A time for people: local time with its zone, e.g. 2026-11-30 01:12:09 UTC."""
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


# -- restoring --------------------------------------------------------------------------------

Restorer = Callable[[str, Any], str]


def control_restorer(
    host: Host, controls: Optional[Mapping[str, Any]] = None, registry: Optional[Mapping[str, Any]] = None
) -> Restorer:
    """restore(name, snapshot) through the control (a bare one from registry when none is running).

    Restoring must not depend on the policy in force (it may have changed or be
    refused): a control's restore() needs only the host and its snapshot.
    """
    from k3s_agent.controls import default_registry
    from k3s_agent.model import Mode
    from k3s_agent.policy.model import ControlPolicy

    def restore(name: str, snapshot: Any) -> str:
        control = (controls or {}).get(name)
        if control is None:
            spec = (default_registry() if registry is None else registry).get(name)
            if spec is None:
                raise HostError(f"no control named {name!r} in this build")
            control = spec.build(ControlPolicy(name, Mode.ENFORCE, True, {}, {}), host)
        return str(control.restore(snapshot))

    return restore


# -- the ledger: every read-modify-write of the record -----------------------------------------


# A file changed this recently may change again within the file system's
# timestamp granularity without a new (mtime, ctime): its parse is not reused
# (git's "racy git" rule, Documentation/technical/racy-git.txt).
RACY_SECONDS = 2.0
StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    """What changes when the record file is replaced (write_atomic: a new inode) or edited in place."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Ledger:
    def __init__(self, host: Host, clock: Optional[Clock] = None, log: Any = None):
        self.host = host
        self.clock = clock or Clock(boot_id=boot_id_reader(host))
        self.log = log
        self._reported = ""
        self._cached: Optional[tuple[StatKey, Record]] = None

    def read(self) -> Record:
        """The record on disk. The daemon asks every 0.5 s (next_due_in): while
        the file's stat is what it was at the last parse, that parse is reused,
        so an unchanged file costs one lstat(2)."""
        if self._cached is not None:
            try:
                same = stat_key(self.host.lstat(RECORD)) == self._cached[0]
            except OSError:
                same = False  # gone or unreadable: the read below says which
            if same:
                return _copy(self._cached[1])
        return self._read_file()

    def _read_file(self) -> Record:
        self._cached = None
        try:
            got = self.host.read_stat(RECORD)
        except (OSError, HostError) as exc:
            return Record(problem=f"{RECORD}: cannot read ({exc})")
        record = parse(None if got is None else got[0])
        if record.problem and record.problem != self._reported and self.log is not None:
            self._reported = record.problem
            self.log.error(f"confirm record {record.problem}: no rollback can be done from it")
        if got is not None and time.time() - got[1].st_mtime >= RACY_SECONDS:
            self._cached = (stat_key(got[1]), _copy(record))
        return record

    def _write(self, record: Record) -> None:
        self.host.write_atomic(RECORD, dump(record), mode=0o600, backup=False)

    def _change(self, fn: Callable[[Record], Any]) -> Any:
        with self.host.lock(LOCK):
            record = self._read_file()  # read-modify-write: from the file itself, never a cache
            before = dump(record)
            result = fn(record)
            if dump(record) != before:
                self._write(record)
            return result

    # -- arming and confirming ----------------------------------------------------------------

    def arm(self, name: str, snapshot: Any, timeout: float, by: str, session: str = "") -> Entry:
        now = self.clock.wall()
        entry = Entry(
            PENDING,
            at=now,
            deadline=now + timeout,
            timeout=timeout,
            boot_id=self.clock.boot_id(),
            deadline_mono=self.clock.mono() + timeout,
            snapshot=snapshot,
            by=by,
            session=session,
        )

        def put(record: Record) -> Entry:
            old = record.entries.get(name)
            if old is not None and old.state == PENDING:
                return old  # the older snapshot is the state to go back to
            record.entries[name] = entry
            return entry

        armed: Entry = self._change(put)
        if armed is entry and self.log is not None:
            self.log.warning(
                f"{name}: change applied, awaiting confirmation: it is rolled back at "
                f"{stamp(armed.deadline)} unless `k3s-agentctl confirm` runs from a new SSH session",
                control=name,
                rollback_at=stamp(armed.deadline),
            )
        return armed

    def establish(self, name: str, by: str) -> bool:
        """A control found compliant in enforce mode with no entry: nothing to confirm.

        An upgraded node that already enforced (or one hardened by hand) is not
        gated on its next drift repair: there was no first change to prove, and
        rolling a repair back would restore the drift. True when it was recorded.
        """

        def put(record: Record) -> bool:
            if name in record.entries:
                return False
            record.entries[name] = Entry(
                ESTABLISHED, at=self.clock.wall(), by=by, note="compliant when first enforced"
            )
            return True

        if name in self.read().entries:
            return False  # the common case, without taking the lock
        return bool(self._change(put))

    def confirm(self, session: str) -> list[str]:
        """Keep every pending change; return the controls confirmed."""

        def keep(record: Record) -> list[str]:
            done = []
            for name, entry in sorted(record.pending().items()):
                record.entries[name] = Entry(ESTABLISHED, at=self.clock.wall(), by=entry.by, session=session)
                done.append(name)
            return done

        return list(self._change(keep))

    # -- rolling back -----------------------------------------------------------------------------

    def rollback(self, restore: Restorer, only_due: bool = True, why: str = "") -> list[str]:
        """Restore pending controls (only the due ones unless told); return the journal lines."""

        def run(record: Record) -> list[str]:
            lines: list[str] = []
            pending = record.pending()
            reasons = {
                n: due(e, self.clock) if only_due else (why or "on request") for n, e in pending.items()
            }
            if not any(reasons.values()):
                return lines
            for name, entry in sorted(pending.items()):
                reason = reasons[name]
                if reason is None and seconds_left(entry, self.clock) <= TOGETHER:
                    reason = f"armed together with {', '.join(n for n, r in sorted(reasons.items()) if r)}"
                if reason is not None:
                    lines.append(self._restore_one(record, name, entry, reason, restore))
            return lines

        return list(self._change(run))

    def _restore_one(self, record: Record, name: str, entry: Entry, reason: str, restore: Restorer) -> str:
        armed = f"the change {entry.by} applied at {stamp(entry.at)}"
        try:
            what = restore(name, entry.snapshot)
        except Exception as exc:  # noqa: BLE001 - stays pending: retried, and said loudly
            line = f"{name}: ROLLBACK FAILED ({reason}): {type(exc).__name__}: {exc}; will retry"
            if self.log is not None:
                self.log.error(line, control=name)
            return line
        note = f"{armed}: {reason}; restored {what}"
        record.entries[name] = Entry(ROLLED_BACK, at=self.clock.wall(), by=entry.by, note=note)
        line = f"{name}: rolled back {note}"
        if self.log is not None:
            self.log.warning(line, control=name)
        return line

    def next_due_in(self) -> Optional[float]:
        """Seconds until the earliest pending deadline (0 = due now), None when nothing is pending."""
        pending = self.read().pending().values()
        return min((seconds_left(e, self.clock) for e in pending), default=None)

    # -- the daemon's view ------------------------------------------------------------------------

    def held(self, name: str, record: Optional[Record] = None) -> Optional[str]:
        entry = (record or self.read()).entries.get(name)
        if entry is None or entry.state != ROLLED_BACK:
            return None
        return (
            f"ROLLED BACK, NOT CONFIRMED ({entry.note}); not healed until you act: "
            "`k3s-agentctl apply --confirm SECONDS` then `k3s-agentctl confirm` from a new SSH "
            "session, or a policy reload"
        )

    def release_held(self) -> list[str]:
        """A policy reload: rolled-back controls may be healed (and gated) again."""

        def run(record: Record) -> list[str]:
            names = [n for n, e in record.entries.items() if e.state == ROLLED_BACK]
            for name in names:
                del record.entries[name]
            return names

        return list(self._change(run))

    def forget_established(self, names: list[str]) -> None:
        """Controls no longer enforced: their next enforcing change is gated again."""

        def run(record: Record) -> None:
            for name in names:
                if name in record.entries and record.entries[name].state == ESTABLISHED:
                    del record.entries[name]

        entries = self.read().entries
        if any(n in entries and entries[n].state == ESTABLISHED for n in names):
            self._change(run)

    def summary(self) -> Optional[dict[str, Any]]:
        """The document's `confirmation` section; None when nothing is pending or held."""
        record = self.read()
        controls: dict[str, Any] = {}
        for name, entry in sorted(record.entries.items()):
            if entry.state == PENDING:
                controls[name] = {"state": "awaiting confirmation", "rollback_at": _iso(entry.deadline)}
            elif entry.state == ROLLED_BACK:
                controls[name] = {"state": "rolled back", "at": _iso(entry.at), "note": entry.note}
        if not controls and not record.problem:
            return None
        pending = record.pending()
        message = ""
        if pending:
            first = min(pending.values(), key=lambda e: e.deadline)
            message = f"awaiting confirmation (rollback at {stamp(first.deadline)})"
        elif controls:
            message = "rolled back, not confirmed: " + ", ".join(controls)
        return {"message": message or record.problem, "controls": controls, "problem": record.problem or None}


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


# -- the engine's gate ------------------------------------------------------------------------------


class Gate:
    """What the engine asks before and after healing a control that can be rolled back.

    timeout 0: nothing is armed, only rolled-back controls are held.
    every_change: arm on any change (`apply --confirm`), not only on the first
    one after a control becomes enforced (the daemon).
    """

    def __init__(
        self, ledger: Ledger, timeout: float, by: str, every_change: bool = False, session: str = ""
    ):
        self.ledger = ledger
        self.timeout = timeout
        self.by = by
        self.every_change = every_change
        self.session = session
        self.armed_now: list[str] = []

    def held(self, name: str) -> Optional[str]:
        if self.every_change and self.timeout > 0:
            return None  # `apply --confirm` is the operator's new, confirmable try
        return self.ledger.held(name)

    def wants_snapshot(self, name: str) -> bool:
        if self.timeout <= 0:
            return False
        entry = self.ledger.read().entries.get(name)
        if entry is None:
            return True
        return self.every_change and entry.state != PENDING

    def settled(self, name: str) -> None:
        """The control is compliant in enforce mode: see Ledger.establish."""
        if self.timeout > 0 and not self.every_change:
            self.ledger.establish(name, self.by)

    def armed(self, name: str, snapshot: Any) -> None:
        self.ledger.arm(name, snapshot, self.timeout, self.by, self.session)
        self.armed_now.append(name)


# -- who runs `confirm` -----------------------------------------------------------------------------


def ssh_session(environ: Mapping[str, str], proc: str = "/proc", pid: Optional[int] = None) -> str:
    """SSH_CONNECTION of the session we run in ("" when none).

    Our own environment first; `sudo` resets the environment (env_reset, on by
    default), so then the nearest ancestor's (the login shell sshd started).
    """
    if environ.get("SSH_CONNECTION"):
        return environ["SSH_CONNECTION"]
    current = os.getppid() if pid is None else pid
    for _ in range(32):
        if current <= 1:
            return ""
        value = _environ_value(f"{proc}/{current}/environ", "SSH_CONNECTION")
        if value:
            return value
        current = _parent(f"{proc}/{current}/stat")
    return ""


def _environ_value(path: str, key: str) -> str:
    try:
        data = read_head(path, 1 << 20)
    except OSError:
        return ""
    prefix = key.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", errors="replace")
    return ""


def _parent(path: str) -> int:
    try:
        data = read_head(path, 4096)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        return int(data[data.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


# -- a rollback that does not depend on the session that asked for it -------------------------------


def arrange_rollback(host: Host, timeout: float) -> str:
    """Make sure a CLI-armed change is rolled back even if this process and its SSH
    session die: a transient systemd timer when systemd runs the host, else a
    detached process in its own session. The daemon, when running, also watches
    the record; whichever comes first restores, under the record's lock."""
    argv = [sys.executable, "-m", "k3s_agent.cli", "rollback", "--due", "--wait"]
    if host.root != "/" or host.proc != "/proc":
        argv += ["--root", host.root, "--proc", host.proc]
    systemd_run = host.which("systemd-run")
    if host.root == "/" and systemd_booted() and systemd_run:
        unit = f"{TIMER_PREFIX}{int(time.time())}"
        proc = host.run(
            [
                systemd_run,
                f"--unit={unit}",
                f"--on-active={max(int(timeout), 1)}s",
                "--timer-property=AccuracySec=1s",
                "--description=k3s-agentd: roll back an unconfirmed change",
                *argv,
            ]
        )
        if proc.returncode == 0:
            return f"transient timer {unit}.timer"
        detail = (proc.stderr or proc.stdout).strip()[:200]
        fallback = f" (systemd-run failed: {detail})"
    else:
        fallback = ""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG")}
    pid = host.spawn(argv, env=env)
    return f"detached process {pid}{fallback}"
