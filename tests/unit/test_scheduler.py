"""The scheduler on a fake clock: debounce, per-control budget, own-write suppression, fingerprints."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Optional

import pytest

from k3s_agent.engine import ControlReport, CycleReport, merge_reports
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.scheduler import Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Plain:
    """A control without a fingerprint."""


class Sampled:
    """A control whose fingerprint the test moves."""

    def __init__(self) -> None:
        self.value: Hashable = "a"
        self.samples = 0

    def fingerprint(self) -> Hashable:
        self.samples += 1
        return self.value


def findings(*statuses: Status) -> list[Finding]:
    return [Finding("c", f"k{i}", s) for i, s in enumerate(statuses)]


OK = findings(Status.OK)
HEALED = findings(Status.OK, Status.HEALED)


def make(clock: Clock, **controls: Any) -> Scheduler:
    sched = Scheduler(clock=clock, debounce=0.2, poll_every=0.5, settle=0.5, share=0.01, burst=0.1)
    sched.reset(controls)
    return sched


def run(
    sched: Scheduler,
    name: str,
    result: list[Finding] = OK,
    cpu: float = 0.001,
    control: Optional[Sampled] = None,
) -> None:
    """One targeted check of `name`, as the daemon runs it; the control may heal its fingerprint."""
    before = sched.before([name])[name]
    if control is not None and any(f.status is Status.HEALED for f in result):
        control.value = "a"  # the heal puts the sampled state back
    sched.ran(name, before, result, cpu, targeted=True)


def test_a_burst_of_events_is_one_check_after_the_debounce() -> None:
    clock = Clock()
    sched = make(clock, sshd=Plain(), files=Plain())
    assert sched.fired(["sshd"]) is True  # the loop must look again
    for _ in range(5):
        clock.advance(0.03)
        assert sched.fired(["sshd"]) is False  # already pending: no new wake-up
    assert sched.due() == []
    assert sched.next_wake() == pytest.approx(1000.2)
    clock.advance(0.06)
    assert sched.due() == ["sshd"]  # only the control the watch belongs to
    run(sched, "sshd")
    assert sched.due() == []
    assert sched.next_wake() == float("inf")  # idle: nothing to poll, nothing pending


# (what the check found, seconds after it when the echo arrives, whether the echo makes it due)
ECHO_CASES = [
    ("our heal's own write, echo at once", HEALED, 0.01, False),
    ("our heal's own write, echo just inside the settle time", HEALED, 0.49, False),
    ("an edit after the settle time", HEALED, 0.6, True),
    ("nothing written: every event is someone else's", OK, 0.01, True),
]


@pytest.mark.parametrize(
    ("result", "after", "due"), [c[1:] for c in ECHO_CASES], ids=[c[0] for c in ECHO_CASES]
)
def test_events_of_our_own_write_do_not_wake_us(result: list[Finding], after: float, due: bool) -> None:
    clock = Clock()
    sched = make(clock, sysctl=Plain())
    sched.fired(["sysctl"])
    clock.advance(0.2)
    assert sched.due() == ["sysctl"]
    run(sched, "sysctl", result)
    clock.advance(after)
    sched.fired(["sysctl"])
    clock.advance(0.2)
    assert (sched.due() == ["sysctl"]) is due
    assert sched.stats()["sysctl"]["suppressed"] == (0 if due else 1)


def test_the_budget_is_per_control_and_bounds_a_storm() -> None:
    """A file touched 50x/s for 20 s: checks of 10 ms CPU each, 1 % of a core per control."""
    clock = Clock()
    sched = make(clock, firewall=Plain(), sshd=Plain())
    cpu = 0.0
    checks = 0
    for _ in range(20 * 50):
        clock.advance(0.02)
        sched.fired(["firewall"])
        if "firewall" in sched.due():
            run(sched, "firewall", OK, cpu=0.010)
            cpu += 0.010
            checks += 1
    # the saved-up burst (0.1 s) plus 1 % of 20 s, one check of slack
    assert cpu <= 0.1 + 0.01 * 20 + 0.010, (checks, cpu)
    assert checks >= 20  # still checked about every second, never starved
    # the storm on the firewall has not spent the sshd control's budget
    sched.fired(["sshd"])
    clock.advance(0.2)
    assert "sshd" in sched.due()


def test_an_overspent_control_waits_until_its_budget_is_positive() -> None:
    clock = Clock()
    sched = make(clock, firewall=Plain())
    sched.fired(["firewall"])
    clock.advance(0.2)
    assert sched.due() == ["firewall"]
    run(sched, "firewall", OK, cpu=0.6)  # an expensive first check: 0.5 s in debt
    sched.fired(["firewall"])
    clock.advance(0.2)
    assert sched.due() == []
    assert sched.next_wake() == pytest.approx(clock.now - 0.2 + 50.0, abs=0.3)  # 0.5 s / 1 %
    clock.advance(50.0)
    assert sched.due() == ["firewall"]


def test_a_moved_fingerprint_triggers_a_targeted_check_without_debounce() -> None:
    clock = Clock()
    sysctl = Sampled()
    sched = make(clock, sysctl=sysctl, sshd=Plain())
    sched.ran("sysctl", "a", OK, 0.0, targeted=False)  # the first sweep sets the baseline
    assert sched.due() == []  # sampled, unchanged
    assert sched.next_wake() == pytest.approx(clock.now + 0.5)  # polled every half second
    sysctl.value = "b"  # `sysctl -w`: no event
    clock.advance(0.5)
    assert sched.due() == ["sysctl"]
    run(sched, "sysctl", HEALED, control=sysctl)
    clock.advance(0.5)
    assert sched.due() == []  # the healed value is the new baseline: no second check


def test_a_drift_left_in_place_is_not_checked_again_and_again() -> None:
    """Audit mode, a contested item in an event cycle, a value the kernel refuses."""
    clock = Clock()
    sysctl = Sampled()
    sched = make(clock, sysctl=sysctl)
    sched.ran("sysctl", "a", OK, 0.0, targeted=False)
    sysctl.value = "b"
    clock.advance(0.5)
    assert sched.due() == ["sysctl"]
    run(sched, "sysctl", findings(Status.DRIFT))
    for _ in range(10):
        clock.advance(0.5)
        assert sched.due() == []


def test_a_change_during_a_check_that_wrote_nothing_is_checked_again() -> None:
    clock = Clock()
    sysctl = Sampled()
    sched = make(clock, sysctl=sysctl)
    before = sched.before(["sysctl"])["sysctl"]
    sysctl.value = "b"  # lands while check() runs: it may have read the old value
    sched.ran("sysctl", before, OK, 0.001, targeted=True)
    clock.advance(0.2)
    assert sched.due() == ["sysctl"]


def test_a_broken_fingerprint_never_raises() -> None:
    class Broken:
        def fingerprint(self) -> Hashable:
            raise OSError("gone")

    clock = Clock()
    sched = make(clock, sysctl=Broken())
    sched.ran("sysctl", sched.before(["sysctl"])["sysctl"], OK, 0.0, targeted=False)
    clock.advance(0.5)
    assert sched.due() == []  # the same error each time is no change


def test_unknown_controls_and_a_reset_forget_old_state() -> None:
    clock = Clock()
    sched = make(clock, sysctl=Plain())
    assert sched.fired(["gone"]) is False
    sched.fired(["sysctl"])
    sched.reset({"sshd": Plain()})  # a reload
    clock.advance(1.0)
    assert sched.due() == []


def test_a_targeted_report_is_merged_into_the_last_full_one() -> None:
    def control(name: str, status: Status) -> ControlReport:
        return ControlReport(name, Mode.ENFORCE, [Finding(name, "k", status)], 0.01)

    full = CycleReport(1, 10.0, 0.5, [control("sysctl", Status.OK), control("sshd", Status.OK)])
    partial = CycleReport(2, 20.0, 0.01, [control("sshd", Status.HEALED)])
    merged = merge_reports(full, partial)
    assert [c.name for c in merged.controls] == ["sysctl", "sshd"]
    assert [f.status for f in merged.findings()] == [Status.OK, Status.HEALED]
    assert (merged.number, merged.started) == (2, 20.0)
    assert merge_reports(None, partial) is partial
