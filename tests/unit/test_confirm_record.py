"""The confirm record: deadlines and clocks, bad files, the ledger, the engine's gate."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from test_engine import Knob, make_engine, statuses

from k3s_agent import confirm
from k3s_agent.confirm import Clock, Entry, Gate, Ledger, due, parse, seconds_left, ssh_session
from k3s_agent.host import Host
from k3s_agent.model import Status


def clock(wall: float, mono: float, boot: str = "boot-a") -> Clock:
    return Clock(wall=lambda: wall, mono=lambda: mono, boot_id=lambda: boot)


# armed at wall 1000 / mono 50 in boot-a, timeout 300
ARMED = Entry("pending", at=1000.0, deadline=1300.0, timeout=300.0, boot_id="boot-a", deadline_mono=350.0)

# (case, clock now, due?, seconds left)
DUE_CASES = [
    ("same boot, just armed", clock(1000, 50), False, 300),
    ("same boot, one second before", clock(1299, 349), False, 1),
    ("same boot, at the deadline", clock(1300, 350), True, 0),
    ("same boot, long after", clock(9999, 9000), True, 0),
    # NTP steps the wall clock: the monotonic clock decides within one boot
    ("same boot, wall clock jumped forward an hour", clock(4600, 100), False, 250),
    ("same boot, wall clock jumped back an hour", clock(-2600, 351), True, 0),
    ("same boot, wall clock jumped back, not due", clock(-2600, 200), False, 150),
    # a reboot: monotonic restarts near 0, only the wall clock is left
    ("rebooted before the deadline", clock(1200, 5, "boot-b"), False, 100),
    ("rebooted, deadline passed", clock(1300, 5, "boot-b"), True, 0),
    ("rebooted, wall clock now before the arming (bad RTC)", clock(900, 5, "boot-b"), True, 0),
    ("boot id unreadable: wall clock", clock(1100, 5, ""), False, 200),
    ("boot id unreadable, deadline passed", clock(1301, 5, ""), True, 0),
]


@pytest.mark.parametrize("case,now,expect_due,left", DUE_CASES, ids=[c[0] for c in DUE_CASES])
def test_due_and_seconds_left(case: str, now: Clock, expect_due: bool, left: float) -> None:
    assert (due(ARMED, now) is not None) is expect_due
    assert seconds_left(ARMED, now) == pytest.approx(left)


def test_only_pending_entries_are_ever_due() -> None:
    for state in ("rolled_back", "established"):
        assert due(Entry(state, at=0.0), clock(10**9, 10**9)) is None


def test_reboot_reason_names_the_reboot() -> None:
    assert "reboot" in str(due(ARMED, clock(1300, 5, "boot-b")))
    assert "earlier than when the change was armed" in str(due(ARMED, clock(900, 5, "boot-b")))


BAD_FILES = [
    ("not json", b"{nope"),
    ("not utf-8", b"\xff\xfe"),
    ("a list", b"[]"),
    ("wrong version", json.dumps({"version": 2, "controls": {}}).encode()),
    ("controls not a table", json.dumps({"version": 1, "controls": []}).encode()),
    ("entry not a table", json.dumps({"version": 1, "controls": {"sshd": 3}}).encode()),
    ("unknown state", json.dumps({"version": 1, "controls": {"sshd": {"state": "maybe", "at": 1}}}).encode()),
    (
        "unknown field",
        json.dumps({"version": 1, "controls": {"sshd": {"state": "pending", "at": 1, "x": 1}}}).encode(),
    ),
    (
        "deadline a string",
        json.dumps(
            {"version": 1, "controls": {"sshd": {"state": "pending", "at": 1, "deadline": "soon"}}}
        ).encode(),
    ),
    ("missing state", json.dumps({"version": 1, "controls": {"sshd": {"at": 1}}}).encode()),
    ("too big", b" " * (confirm.MAX_RECORD + 1)),
]


@pytest.mark.parametrize("case,data", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_an_unusable_record_is_empty_with_the_reason(case: str, data: bytes) -> None:
    record = parse(data)
    assert record.entries == {}
    assert record.problem.startswith(f"{confirm.RECORD}: unusable, ignored (")


def test_missing_record_is_empty_and_fine() -> None:
    record = parse(None)
    assert record.entries == {} and record.problem == ""


def test_record_round_trips() -> None:
    record = confirm.Record({"firewall": ARMED, "sshd": Entry("established", at=5.0)})
    assert parse(confirm.dump(record)).entries == record.entries


# -- the ledger on a temporary root ----------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda message, **_fields: self.lines.append((level, message))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    now = {"wall": 1000.0, "mono": 50.0}
    ticking = Clock(wall=lambda: now["wall"], mono=lambda: now["mono"], boot_id=lambda: "boot-a")
    one = Ledger(Host(root=str(tmp_path)), clock=ticking, log=Log())
    one.now = now  # type: ignore[attr-defined]
    return one


def advance(ledger: Ledger, seconds: float) -> None:
    ledger.now["wall"] += seconds  # type: ignore[attr-defined]
    ledger.now["mono"] += seconds  # type: ignore[attr-defined]


def test_record_file_is_root_only_and_written_whole(ledger: Ledger, tmp_path: Path) -> None:
    ledger.arm("firewall", {"nftables": None}, 300, by="k3s-agentd")
    path = tmp_path / confirm.RECORD.lstrip("/")
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["controls"]["firewall"]["snapshot"] == {"nftables": None}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_lifecycle_arm_rollback_hold_release(ledger: Ledger) -> None:
    restored: list[tuple[str, Any]] = []

    def restore(name: str, snapshot: Any) -> str:
        restored.append((name, snapshot))
        return f"{name} as before"

    ledger.arm("sshd", {"dropin": None}, 300, by="k3s-agentd")
    again = ledger.arm("sshd", {"dropin": "newer"}, 300, by="k3s-agentd")
    assert again.snapshot == {"dropin": None}  # the older snapshot is the state to go back to
    summary = ledger.summary()
    assert summary is not None and summary["message"].startswith("awaiting confirmation (rollback at ")
    advance(ledger, 299)
    assert ledger.rollback(restore) == [] and ledger.next_due_in() == pytest.approx(1)
    advance(ledger, 1)
    lines = ledger.rollback(restore)
    assert restored == [("sshd", {"dropin": None})]
    assert "rolled back the change k3s-agentd applied at" in lines[0]
    assert "not confirmed within 300s; restored sshd as before" in lines[0]
    assert ("warning", lines[0]) in ledger.log.lines  # type: ignore[attr-defined]
    held = ledger.held("sshd")
    assert held is not None and "ROLLED BACK, NOT CONFIRMED" in held and "apply --confirm" in held
    assert ledger.rollback(restore) == []  # nothing pending any more
    assert ledger.release_held() == ["sshd"]
    assert ledger.held("sshd") is None and ledger.summary() is None


def test_changes_armed_together_come_back_together(ledger: Ledger) -> None:
    ledger.arm("firewall", {}, 10, by="k3s-agentd")
    advance(ledger, 0.5)  # the same cycle arms sshd a moment later
    ledger.arm("sshd", {}, 10, by="k3s-agentd")
    advance(ledger, 9.6)
    lines = ledger.rollback(lambda name, snapshot: "it")
    assert [line.split(":")[0] for line in lines] == ["firewall", "sshd"]
    assert "armed together with firewall" in lines[1]
    ledger.arm("sshd", {}, 10, by="k3s-agentd")  # a later change waits for its own deadline
    ledger.arm("firewall", {}, 60, by="k3s-agentd")
    advance(ledger, 10)
    assert [line.split(":")[0] for line in ledger.rollback(lambda name, snapshot: "it")] == ["sshd"]


def test_a_failed_restore_stays_pending_and_is_said(ledger: Ledger) -> None:
    def broken(name: str, snapshot: Any) -> str:
        raise OSError("disk gone")

    ledger.arm("firewall", {}, 10, by="k3s-agentd")
    advance(ledger, 11)
    lines = ledger.rollback(broken)
    assert "ROLLBACK FAILED" in lines[0] and "disk gone" in lines[0]
    assert ledger.read().entries["firewall"].state == "pending"


def test_confirm_keeps_and_established_is_forgotten_outside_enforce(ledger: Ledger) -> None:
    ledger.arm("firewall", {}, 10, by="k3s-agentd")
    assert ledger.confirm("192.0.2.1 5 192.0.2.2 22") == ["firewall"]
    advance(ledger, 100)
    assert ledger.rollback(lambda n, s: "x") == []
    assert ledger.read().entries["firewall"].state == "established"
    ledger.forget_established(["firewall"])
    assert ledger.read().entries == {}


def test_corrupt_record_on_disk_is_reported_once_and_replaced(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / confirm.RECORD.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{garbage")
    assert ledger.read().entries == {}
    ledger.read()
    errors = [m for level, m in ledger.log.lines if level == "error"]  # type: ignore[attr-defined]
    assert len(errors) == 1 and "unusable" in errors[0]
    summary = ledger.summary()
    assert summary is not None and "unusable" in summary["problem"]
    ledger.arm("sshd", {}, 10, by="k3s-agentd")
    assert parse(path.read_bytes()).entries["sshd"].state == "pending"


# -- the parse is reused while the file is unchanged (the daemon asks every 0.5 s) ---------------------

LATER = Entry("pending", at=1000.0, deadline=1400.0, timeout=400.0, boot_id="boot-a", deadline_mono=450.0)
LONG_AGO = 1_500_000_000 * 10**9  # ns: well outside the racy window


def _record_file(tmp_path: Path, aged: bool) -> Path:
    """The record with ARMED for the firewall; `aged`: last written long ago."""
    path = tmp_path / confirm.RECORD.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(confirm.dump(confirm.Record({"firewall": ARMED})))
    if aged:
        os.utime(path, ns=(LONG_AGO, LONG_AGO))
    return path


def _replace(path: Path, entry: Entry) -> None:
    """As write_atomic does: a new file renamed over the old one (a new inode)."""
    new = path.with_name("new.tmp")
    new.write_bytes(confirm.dump(confirm.Record({"firewall": entry})))
    os.utime(new, ns=(LONG_AGO, LONG_AGO))
    os.replace(new, path)


def _edit_in_place(path: Path, entry: Entry) -> None:
    """Same inode, same size, the old mtime put back: only ctime tells."""
    time.sleep(0.05)  # past the coarse clock's tick, so ctime moves
    with open(path, "r+b") as out:
        out.write(confirm.dump(confirm.Record({"firewall": entry})))
    os.utime(path, ns=(LONG_AGO, LONG_AGO))


# (case, what happens between two calls, file aged after writing?, parses, seconds left at the second call)
CACHE_CASES = [
    ("unchanged", lambda path: None, True, 1, 300.0),
    ("replaced atomically", lambda path: _replace(path, LATER), True, 2, 400.0),
    ("edited in place, mtime put back", lambda path: _edit_in_place(path, LATER), True, 2, 400.0),
    ("removed", lambda path: path.unlink(), True, 2, None),
    ("just written: within the racy window", lambda path: None, False, 2, 300.0),
]


@pytest.mark.parametrize("case,change,aged,parses,left", CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_next_due_in_parses_again_only_when_the_file_changed(
    ledger: Ledger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    change: Any,
    aged: bool,
    parses: int,
    left: Optional[float],
) -> None:
    assert len(confirm.dump(confirm.Record({"firewall": ARMED}))) == len(
        confirm.dump(confirm.Record({"firewall": LATER}))
    )  # same size: the size alone cannot tell the cases apart
    path = _record_file(tmp_path, aged)
    calls: list[Optional[bytes]] = []
    real_parse = confirm.parse
    monkeypatch.setattr(confirm, "parse", lambda data, *a: calls.append(data) or real_parse(data, *a))
    assert ledger.next_due_in() == pytest.approx(300.0)
    change(path)
    assert ledger.next_due_in() == (None if left is None else pytest.approx(left))
    assert len(calls) == parses


def test_a_cached_record_is_not_shared_with_callers(ledger: Ledger, tmp_path: Path) -> None:
    """A caller that edits the record it got (read-modify-write) cannot change the cache."""
    _record_file(tmp_path, aged=True)
    ledger.read().entries.clear()
    ledger.read().entries.clear()  # the second comes from the cache
    assert list(ledger.read().entries) == ["firewall"]


def test_a_change_after_a_cached_read_starts_from_the_file(ledger: Ledger, tmp_path: Path) -> None:
    path = _record_file(tmp_path, aged=True)
    assert ledger.next_due_in() == pytest.approx(300.0)
    ledger.arm("sshd", {}, 100, by="k3s-agentd")  # written by the ledger itself: seen at once
    assert ledger.next_due_in() == pytest.approx(100.0)
    assert set(parse(path.read_bytes()).entries) == {"firewall", "sshd"}


# -- the gate in the engine -------------------------------------------------------------------------


class Reversible(Knob):
    def snapshot(self) -> dict[str, Any]:
        return dict(self.world)

    def restore(self, snapshot: dict[str, Any]) -> str:
        self.world.clear()
        self.world.update(snapshot)
        return "knob as before"


def test_engine_arms_the_first_change_only(ledger: Ledger) -> None:
    knob = Reversible({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    assert statuses(engine.run_cycle(), "knob") == {"a": Status.HEALED}
    entry = ledger.read().entries["knob"]
    assert entry.state == "pending" and entry.snapshot == {"a": 0}
    ledger.confirm("s")
    knob.world["a"] = 5  # later drift: healed, not armed again
    engine.run_cycle()
    assert ledger.read().entries["knob"].state == "established"


def test_compliant_when_first_enforced_is_established_and_a_later_repair_not_armed(ledger: Ledger) -> None:
    """An upgraded node that already enforced: its next drift repair is not rolled back
    (that would restore the drift)."""
    knob = Reversible({"a": 1}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    assert statuses(engine.run_cycle(), "knob") == {"a": Status.OK}
    assert ledger.read().entries["knob"].state == "established"
    knob.world["a"] = 5  # someone undoes it
    assert statuses(engine.run_cycle(), "knob") == {"a": Status.HEALED}
    assert ledger.read().entries["knob"].state == "established"


def test_a_pending_change_is_not_established_by_a_compliant_cycle(ledger: Ledger) -> None:
    knob = Reversible({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    engine.run_cycle()  # heals, arms
    engine.run_cycle()  # compliant now: still awaiting confirmation
    assert ledger.read().entries["knob"].state == "pending"


def test_engine_does_not_arm_when_nothing_changed(ledger: Ledger) -> None:
    knob = Reversible({"a": 0}, {"a": 1}, stick=False)
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    engine.run_cycle()
    assert ledger.read().entries == {}


def test_engine_holds_a_rolled_back_control(ledger: Ledger) -> None:
    knob = Reversible({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    engine.run_cycle()
    advance(ledger, 31)
    ledger.rollback(lambda name, snap: knob.restore(snap))
    assert knob.world == {"a": 0}
    report = engine.run_cycle()
    finding = report.controls[0].findings[0]
    assert finding.status is Status.DRIFT and "ROLLED BACK, NOT CONFIRMED" in finding.message
    assert knob.world == {"a": 0}
    # `apply --confirm` is a new try: it heals and arms again
    engine.gate = Gate(ledger, 30, by="k3s-agentctl apply --confirm", every_change=True)
    assert statuses(engine.run_cycle(), "knob") == {"a": Status.HEALED}
    assert ledger.read().entries["knob"].state == "pending"


def test_no_snapshot_no_heal(ledger: Ledger) -> None:
    class Blind(Reversible):
        def snapshot(self) -> dict[str, Any]:
            raise OSError("cannot read")

    knob = Blind({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    finding = engine.run_cycle().controls[0].findings[0]
    assert finding.status is Status.FAILED and "cannot record the state to roll back to" in finding.message
    assert knob.applied == []


def test_a_change_that_cannot_be_recorded_is_undone_at_once(ledger: Ledger) -> None:
    class Unwritable(Gate):
        def armed(self, name: str, snapshot: Any) -> None:
            raise OSError("read-only file system")

    knob = Reversible({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Unwritable(ledger, 30, by="k3s-agentd")
    finding = engine.run_cycle().controls[0].findings[0]
    assert finding.status is Status.FAILED and "cannot record the rollback" in finding.message
    assert knob.world == {"a": 0}


def test_timeout_zero_arms_nothing(ledger: Ledger) -> None:
    knob = Reversible({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 0, by="k3s-agentd")
    engine.run_cycle()
    assert knob.world == {"a": 1} and ledger.read().entries == {}


def test_controls_without_the_capability_are_never_gated(ledger: Ledger) -> None:
    knob = Knob({"a": 0}, {"a": 1})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    engine.gate = Gate(ledger, 30, by="k3s-agentd")
    engine.run_cycle()
    assert ledger.read().entries == {}


# -- who runs `confirm` -----------------------------------------------------------------------------


def fake_proc(tmp_path: Path, chain: list[tuple[int, int, Optional[str]]]) -> str:
    """(pid, ppid, SSH_CONNECTION or None) per process."""
    for pid, ppid, ssh in chain:
        folder = tmp_path / "proc" / str(pid)
        folder.mkdir(parents=True)
        env = b"PATH=/bin\0" + (f"SSH_CONNECTION={ssh}\0".encode() if ssh else b"")
        (folder / "environ").write_bytes(env)
        (folder / "stat").write_text(f"{pid} (a (weird) name) S {ppid} 1 1 0")
    return str(tmp_path / "proc")


def test_ssh_session_from_the_environment_or_an_ancestor(tmp_path: Path) -> None:
    assert ssh_session({"SSH_CONNECTION": "a 1 b 22"}) == "a 1 b 22"
    # sudo reset the environment: the login shell two levels up still has it
    proc = fake_proc(tmp_path, [(30, 20, None), (20, 10, "192.0.2.9 4444 192.0.2.1 22"), (10, 1, None)])
    assert ssh_session({}, proc, pid=30) == "192.0.2.9 4444 192.0.2.1 22"


def test_no_ssh_session_on_a_console(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, [(30, 20, None), (20, 1, None)])
    assert ssh_session({}, proc, pid=30) == ""
    assert ssh_session({}, str(tmp_path / "nowhere"), pid=30) == ""
