"""The engine against small fake controls: isolation, timeouts, verify, waivers, contest."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from k3s_agent.controls.base import VERIFY_ONLY, ControlSpec, Watch
from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy, Waiver


class Knob:
    """A fake subsystem: a dict of values the control heals toward `want`."""

    name = "knob"

    def __init__(self, world: dict[str, Any], want: dict[str, Any], stick: bool = True):
        self.world, self.want, self.stick = world, want, stick
        self.applied: list[str] = []

    def check(self) -> list[Finding]:
        return [
            Finding(self.name, k, Status.OK if self.world.get(k) == v else Status.DRIFT, v, self.world.get(k))
            for k, v in self.want.items()
        ]

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        out = []
        for f in drift:
            self.applied.append(f.key)
            if f.key.startswith("verify-only"):
                out.append(f.with_status(Status.DRIFT, "verify-only"))
                continue
            if self.stick:
                self.world[f.key] = f.desired
            out.append(f.with_status(Status.HEALED, "set"))
        return out

    def watches(self) -> list[Watch]:
        return []

    def describe(self) -> dict[str, object]:
        return {"backend": "fake"}


class Broken(Knob):
    name = "broken"

    def check(self) -> list[Finding]:
        raise RuntimeError("boom")


class Hangs(Knob):
    name = "hangs"
    release = threading.Event()

    def check(self) -> list[Finding]:
        self.release.wait(30)
        return []


def make_engine(controls: dict[str, Any], items: dict[str, list[str]], **overrides: Any) -> Engine:
    registry = {
        name: ControlSpec(name=name, build=lambda _p, _h, c=control: c) for name, control in controls.items()
    }
    policy = Policy(
        profile="test",
        mode=overrides.pop("mode", Mode.ENFORCE),
        interval=60,
        control_timeout=overrides.pop("timeout", 2.0),
        contest=ContestSettings(threshold=3, window=600, backoff_max=3600),
        controls={
            name: ControlPolicy(
                name, overrides.get(f"{name}_mode", Mode.ENFORCE), True, {}, {k: {} for k in keys}
            )
            for name, keys in items.items()
        },
        waivers=tuple(overrides.pop("waivers", ())),
        sources=(),
    )
    return Engine(policy, Host(), registry=registry, clock=overrides.pop("clock", time.time))


def statuses(report: Any, control: str) -> dict[str, Status]:
    return {f.key: f.status for c in report.controls if c.name == control for f in c.findings}


def test_drift_is_healed_and_verified() -> None:
    knob = Knob({"a": 1, "b": 0}, {"a": 1, "b": 1})
    report = make_engine({"knob": knob}, {"knob": ["a", "b"]}).run_cycle()
    assert statuses(report, "knob") == {"a": Status.OK, "b": Status.HEALED}
    assert knob.world["b"] == 1


def test_check_only_changes_nothing() -> None:
    knob = Knob({"b": 0}, {"b": 1})
    report = make_engine({"knob": knob}, {"knob": ["b"]}).run_cycle(enforce=False)
    assert statuses(report, "knob") == {"b": Status.DRIFT}
    assert knob.applied == [] and knob.world["b"] == 0


def test_audit_mode_per_control_is_respected() -> None:
    knob = Knob({"b": 0}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b"]}, knob_mode=Mode.AUDIT)
    assert statuses(engine.run_cycle(), "knob") == {"b": Status.DRIFT}
    assert knob.applied == []


def test_heal_that_does_not_stick_is_failed() -> None:
    knob = Knob({"b": 0}, {"b": 1}, stick=False)
    report = make_engine({"knob": knob}, {"knob": ["b"]}).run_cycle()
    finding = report.controls[0].findings[0]
    assert finding.status is Status.FAILED
    assert "did not stick" in finding.message


def test_declined_item_stays_drift() -> None:
    knob = Knob({}, {"verify-only-x": 1})
    report = make_engine({"knob": knob}, {"knob": ["verify-only-x"]}).run_cycle()
    assert statuses(report, "knob") == {"verify-only-x": Status.DRIFT}


def test_exception_in_one_control_does_not_stop_the_others() -> None:
    knob = Knob({"b": 0}, {"b": 1})
    engine = make_engine({"broken": Broken({}, {}), "knob": knob}, {"broken": ["x", "y"], "knob": ["b"]})
    report = engine.run_cycle()
    broken = next(c for c in report.controls if c.name == "broken")
    assert broken.error == "RuntimeError: boom"
    assert [(f.key, f.status) for f in broken.findings] == [("x", Status.FAILED), ("y", Status.FAILED)]
    assert statuses(report, "knob") == {"b": Status.HEALED}


def test_hung_control_times_out_and_the_loop_goes_on() -> None:
    Hangs.release.clear()
    knob = Knob({"b": 0}, {"b": 1})
    engine = make_engine({"hangs": Hangs({}, {}), "knob": knob}, {"hangs": ["h"], "knob": ["b"]}, timeout=0.3)
    started = time.monotonic()
    first = engine.run_cycle()
    second = engine.run_cycle()
    Hangs.release.set()
    assert time.monotonic() - started < 3
    assert "did not finish within 0.3s" in first.controls[0].error
    assert "still stuck" in second.controls[0].error
    assert statuses(first, "knob") == {"b": Status.HEALED}


def test_a_hung_call_that_returns_frees_the_control_again() -> None:
    Hangs.release.clear()
    engine = make_engine({"hangs": Hangs({}, {})}, {"hangs": ["h"]}, timeout=0.3)
    assert "did not finish" in (engine.run_cycle().controls[0].error or "")
    Hangs.release.set()
    time.sleep(0.1)
    assert "still stuck" not in (engine.run_cycle().controls[0].error or "")


def test_calls_reuse_one_worker_thread_per_control() -> None:
    """A thread per call made RSS creep up (bench/daemon_rss.py --soak): one worker per control."""
    knob = Knob({"b": 0}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b"]})
    engine.run_cycle()  # check, apply, re-check
    worker = engine.guards["knob"].worker
    assert worker is not None and worker.thread.is_alive()
    for _ in range(20):
        knob.world["b"] = 0
        assert statuses(engine.run_cycle(), "knob")["b"] in (Status.HEALED, Status.CONTESTED)
    assert engine.guards["knob"].worker is worker


def test_an_idle_worker_exits_and_a_new_one_takes_over(monkeypatch: pytest.MonkeyPatch) -> None:
    from k3s_agent import engine as engine_module

    monkeypatch.setattr(engine_module._Worker, "IDLE", 0.05)
    knob = Knob({"b": 1}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b"]})
    engine.run_cycle()
    first = engine.guards["knob"].worker
    assert first is not None
    first.thread.join(2.0)
    assert not first.thread.is_alive()  # the workers of a reload's old engine go away
    assert statuses(engine.run_cycle(), "knob") == {"b": Status.OK}
    assert engine.guards["knob"].worker is not first


def test_waived_item_is_reported_waived_never_ok_and_not_healed() -> None:
    knob = Knob({"a": 1, "b": 0}, {"a": 1, "b": 1})
    waivers = [
        Waiver("knob", "a", "r", "alice", datetime.date(2999, 1, 1)),
        Waiver("knob", "b", "r", "bob", datetime.date(2999, 1, 1)),
    ]
    report = make_engine({"knob": knob}, {"knob": ["a", "b"]}, waivers=waivers).run_cycle()
    assert statuses(report, "knob") == {"a": Status.WAIVED, "b": Status.WAIVED}
    assert knob.world["b"] == 0
    assert "waived by bob until 2999-01-01" in report.controls[0].findings[1].message


def test_expired_waiver_turns_back_into_a_normal_item() -> None:
    knob = Knob({"b": 0}, {"b": 1})
    waivers = [Waiver("knob", "b", "r", "bob", datetime.date(2000, 1, 1))]
    report = make_engine({"knob": knob}, {"knob": ["b"]}, waivers=waivers).run_cycle()
    assert statuses(report, "knob") == {"b": Status.HEALED}


H, C, F, OK = Status.HEALED, Status.CONTESTED, Status.FAILED, Status.OK

# Steps: S sweep / E event cycle (each 10 s after the last), u someone undoes item b,
# w<v> we want b = v from now on, a we add item z (our plan changes; b moves and
# drifts with it), f the next heal does not stick, t<n> n more seconds pass.
# threshold 3, window 600.
CONTEST_CASES = [
    ("first convergence + two undos in a minute", "bad", "S u S u S", [H, H, H], 3),
    ("three undos are contested", "bad", "S u S u S u S", [H, H, H, C], 4),
    ("ok at start, three undos", "ok", "S u S u S u S", [OK, H, H, C], 3),
    ("our own desired changes do not count", "bad", "S u S w2 S w3 S u S", [H, H, H, H, H], 5),
    ("our plan change moves b: not an undo", "bad", "S u S u S a S", [H, H, H, H], 4),
    ("heal that did not stick: not seen right", "bad", "f S S u S u S", [F, H, H, H], 4),
    ("contested: still healed every sweep", "bad", "S u S u S u S u S u S", [H, H, H, C, C, C], 6),
    ("contested: the event heal is dropped", "bad", "S u S u S u S u E S", [H, H, H, C, C, C], 5),
    ("not contested: the event heal runs", "bad", "S u E u E", [H, H, H], 3),
    ("contested while ok inside the window", "bad", "S u S u S u S t570 S", [H, H, H, C, C], 4),
    ("forgiven after a whole clean window", "bad", "S u S u S u S t600 S", [H, H, H, C, OK], 4),
    ("undos further apart than the window", "bad", "S u S u S t600 u S", [H, H, H, H], 4),
]


@pytest.mark.parametrize(
    ("start", "steps", "seen", "heals"), [c[1:] for c in CONTEST_CASES], ids=[c[0] for c in CONTEST_CASES]
)
def test_contest(start: str, steps: str, seen: list[Status], heals: int) -> None:
    now = [1000.0]
    knob = Knob({"b": 1 if start == "ok" else 0}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b", "z"]}, clock=lambda: now[0])
    got = []
    for step in steps.split():
        if step == "u":
            knob.world["b"] = -1
        elif step.startswith("w"):
            knob.want["b"] = int(step[1:])  # b now drifts from what we want
        elif step == "a":
            knob.want["z"] = knob.world["z"] = 1
            knob.world["b"] = -1
        elif step == "f":
            knob.stick = False
        elif step.startswith("t"):
            now[0] += float(step[1:])
        else:
            now[0] += 10
            report = engine.run_cycle(trigger="sweep" if step == "S" else "event")
            got.append(statuses(report, "knob")["b"])
            knob.stick = True
    assert got == seen
    assert knob.applied.count("b") == heals


def test_contested_item_says_why_and_until_when() -> None:
    now = [1000.0]
    knob = Knob({"b": 1}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b"]}, clock=lambda: now[0])
    events: list[tuple[str, Status]] = []
    engine.on_event = lambda event, finding: events.append((event, finding.status))
    engine.run_cycle()  # seen right once
    for _ in range(3):
        knob.world["b"] = 0
        now[0] += 10
        finding = engine.run_cycle().controls[0].findings[0]
    assert finding.status is Status.CONTESTED
    assert "healed (set); undone 3 time(s) within 600s by something on the host" in finding.message
    assert "contested until" in finding.message
    assert knob.world["b"] == 1
    # every heal is reported as one, a contested item's too
    assert events == [("healed", Status.HEALED)] * 2 + [("healed", Status.CONTESTED)]


def test_whole_table_rewrite_does_not_count_unchanged_items() -> None:
    """A control that rewrites every item on any heal: only the drifted one is healed or counted."""

    class Table(Knob):
        def apply(self, drift: Sequence[Finding]) -> list[Finding]:
            self.world.update(self.want)  # rewrites a and c too
            self.applied += [f.key for f in drift]
            return [f.with_status(Status.HEALED, "table rewritten") for f in drift]

    now = [1000.0]
    table = Table({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 1})
    engine = make_engine({"knob": table}, {"knob": ["a", "b", "c"]}, clock=lambda: now[0])
    for _ in range(4):
        table.world["b"] = 0
        now[0] += 10
        report = engine.run_cycle()
        now[0] += 1
        engine.run_cycle(trigger="event")  # our own rewrite woke the loop once more
    assert statuses(report, "knob") == {"a": OK, "b": C, "c": OK}
    assert table.applied == ["b"] * 4


def test_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="trigger"):
        make_engine({"knob": Knob({}, {})}, {"knob": []}).run_cycle(trigger="timer")


def test_facts_come_from_describe() -> None:
    knob = Knob({}, {})
    report = make_engine({"knob": knob}, {"knob": []}).run_cycle()
    assert report.controls[0].facts == {"backend": "fake"}


def test_policy_objects_are_immutable() -> None:
    engine = make_engine({"knob": Knob({}, {})}, {"knob": []})
    assert dataclasses.is_dataclass(engine.policy)


def test_a_broken_control_fails_its_items_with_their_cis_ids() -> None:
    """Reports (kube-bench JSON) count a crashed control's checks as FAIL, not missing."""
    engine = make_engine({"broken": Broken({}, {})}, {"broken": ["x", "y"]})
    section = engine.policy.controls["broken"]
    items = {"x": {"cis": "1.1.1"}, "y": {}}
    engine.policy.controls["broken"] = dataclasses.replace(section, items=items)
    findings = engine.run_cycle().controls[0].findings
    assert {f.key: (f.status, f.cis) for f in findings} == {
        "x": (Status.FAILED, "1.1.1"),
        "y": (Status.FAILED, None),
    }


# -- declined drift (Finding.declined): apply will not act, a human must ---------------------


class Declining(Knob):
    """A Knob whose check() declines the keys in `declined` (e.g. another tool's file)."""

    def __init__(self, world: dict[str, Any], want: dict[str, Any], declined: dict[str, str]):
        super().__init__(world, want)
        self.declined = declined

    def check(self) -> list[Finding]:
        return [
            dataclasses.replace(f, declined=self.declined[f.key])
            if f.status is Status.DRIFT and f.key in self.declined
            else f
            for f in super().check()
        ]


def test_declined_drift_never_reaches_apply_and_stays_drift_with_its_reason() -> None:
    knob = Declining({"a": 0, "b": 0}, {"a": 1, "b": 1}, {"a": "not ours to edit"})
    events: list[tuple[str, str]] = []
    engine = make_engine({"knob": knob}, {"knob": ["a", "b"]})
    engine.on_event = lambda event, finding: events.append((event, finding.key))
    findings = {f.key: f for f in engine.run_cycle().controls[0].findings}
    assert knob.applied == ["b"]
    assert (findings["a"].status, findings["a"].declined) == (Status.DRIFT, "not ours to edit")
    assert (findings["b"].status, findings["b"].declined) == (Status.HEALED, None)
    assert sorted(events) == [("drift", "a"), ("healed", "b")]  # never a failed heal


def test_a_control_whose_drift_is_all_declined_is_not_applied_at_all() -> None:
    knob = Declining({"a": 0}, {"a": 1}, {"a": "needs an operator"})
    engine = make_engine({"knob": knob}, {"knob": ["a"]})
    for _ in range(3):
        assert statuses(engine.run_cycle(), "knob") == {"a": Status.DRIFT}
    assert knob.applied == []


def test_declined_drift_that_comes_and_goes_is_never_contested() -> None:
    """Someone else's file appearing is not an undo of our heal: the contest tracker does not count it."""
    now = [1000.0]
    knob = Declining({"a": 1}, {"a": 1}, {"a": "not ours to edit"})
    engine = make_engine({"knob": knob}, {"knob": ["a"]}, clock=lambda: now[0])
    seen = []
    for _ in range(5):
        knob.world["a"] = 1
        now[0] += 10
        engine.run_cycle()
        knob.world["a"] = 0
        now[0] += 10
        seen.append(statuses(engine.run_cycle(), "knob")["a"])
    assert seen == [Status.DRIFT] * 5
    assert engine.contest.contest(("knob", "a")) is None


def test_check_only_carries_the_reason_for_diff() -> None:
    knob = Declining({"a": 0}, {"a": 1}, {"a": "not ours to edit"})
    finding = make_engine({"knob": knob}, {"knob": ["a"]}).run_cycle(enforce=False).controls[0].findings[0]
    assert finding.declined == "not ours to edit"
    assert finding.to_dict()["declined"] == "not ours to edit"
    assert Finding.from_dict(finding.to_dict()) == finding


@pytest.mark.parametrize(
    ("verify_only", "own_reason", "applied", "declined"),
    [
        (True, None, [], {"a": VERIFY_ONLY, "b": None}),  # every drift declined; ok untouched
        (True, "its own reason", [], {"a": "its own reason", "b": None}),  # the control's word stands
        (False, None, ["a"], {"a": None, "b": None}),
    ],
)
def test_verify_only_spec_declines_all_drift(
    verify_only: bool, own_reason: Any, applied: list[str], declined: dict[str, Any]
) -> None:
    knob = Declining({"a": 0, "b": 1}, {"a": 1, "b": 1}, {"a": own_reason} if own_reason else {})
    engine = make_engine({"knob": knob}, {"knob": ["a", "b"]})
    engine.registry = {"knob": dataclasses.replace(engine.registry["knob"], verify_only=verify_only)}
    report = engine.run_cycle()
    assert knob.applied == applied
    assert {f.key: f.declined for f in report.controls[0].findings} == declined


# -- the gate's "settled": every finding compliant by model.COMPLIANT -------------------------


class Fixed(Knob):
    """A reversible control (snapshot/restore) whose check() reports fixed statuses."""

    def __init__(self, seen: dict[str, Status]):
        super().__init__({}, {})
        self.seen = seen

    def check(self) -> list[Finding]:
        return [Finding(self.name, key, status) for key, status in self.seen.items()]

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, taken: dict[str, Any]) -> str:
        return "restored"


class SettledGate:
    def __init__(self) -> None:
        self.settled_names: list[str] = []

    def held(self, name: str) -> None:
        return None

    def wants_snapshot(self, name: str) -> bool:
        return False

    def armed(self, name: str, snapshot: Any) -> None:
        raise AssertionError("nothing was healed")

    def settled(self, name: str) -> None:
        self.settled_names.append(name)


@pytest.mark.parametrize(
    ("seen", "settled"),
    [
        ({"a": Status.OK}, True),
        ({"a": Status.OK, "b": Status.MANUAL}, True),  # a manual check is compliant (model.COMPLIANT)
        ({"a": Status.ABSENT, "b": Status.UNSUPPORTED}, True),
        ({"a": Status.OK, "b": Status.WAIVED}, False),
        ({"a": Status.OK, "b": Status.FAILED}, False),
        ({"a": Status.OK, "b": Status.PENDING}, False),
    ],
)
def test_gate_is_told_settled_exactly_when_every_finding_is_compliant(
    seen: dict[str, Status], settled: bool
) -> None:
    gate = SettledGate()
    engine = make_engine({"knob": Fixed(seen)}, {"knob": list(seen)})
    engine.gate = gate
    engine.run_cycle()
    assert gate.settled_names == (["knob"] if settled else [])
