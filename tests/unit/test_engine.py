"""The engine against small fake controls: isolation, timeouts, verify, waivers, contest."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Sequence
from typing import Any

from k3s_agent.controls.base import ControlSpec, Watch
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


def test_fight_is_contested_then_backs_off() -> None:
    now = [1000.0]
    knob = Knob({"b": 0}, {"b": 1})
    engine = make_engine({"knob": knob}, {"knob": ["b"]}, clock=lambda: now[0])
    seen = []
    for _ in range(5):
        knob.world["b"] = 0  # something on the host undoes us every cycle
        seen.append(statuses(engine.run_cycle(), "knob")["b"])
        now[0] += 60
    assert seen[:3] == [Status.HEALED, Status.HEALED, Status.CONTESTED]
    # cycle 4 is inside the backoff: not even tried; cycle 5 tries once, is undone
    # again and backs off twice as long
    assert seen[3:] == [Status.CONTESTED, Status.CONTESTED]
    assert knob.applied == ["b", "b", "b", "b"]
    assert engine.contest.strikes[("knob", "b")] == 2
    now[0] += 3600
    knob.world["b"] = 0
    assert statuses(engine.run_cycle(), "knob")["b"] is Status.HEALED


def test_facts_come_from_describe() -> None:
    knob = Knob({}, {})
    report = make_engine({"knob": knob}, {"knob": []}).run_cycle()
    assert report.controls[0].facts == {"backend": "fake"}


def test_policy_objects_are_immutable() -> None:
    engine = make_engine({"knob": Knob({}, {})}, {"knob": []})
    assert dataclasses.is_dataclass(engine.policy)
