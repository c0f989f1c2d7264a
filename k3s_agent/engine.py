"""The reconcile loop: check -> (apply -> verify) -> record.

The engine knows nothing of sysctl or iptables. Each control runs in a worker
thread with a deadline, so an exception or a hang in one control is recorded
against that control's items and never stops the others or the loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Protocol

from k3s_agent.controls import specs
from k3s_agent.controls.base import Control, ControlSpec
from k3s_agent.host import Host
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy

EventSink = Callable[[str, Finding], None]


class Gate(Protocol):
    """Commit-confirmed heals (k3s_agent.confirm.Gate): asked only about controls
    that offer snapshot() and restore(); the engine knows no subsystem."""

    def held(self, name: str) -> Optional[str]: ...  # why this control must not be healed now

    def wants_snapshot(self, name: str) -> bool: ...  # this heal must be confirmable

    def armed(self, name: str, snapshot: Any) -> None: ...  # the heal changed it: start the clock


@dataclasses.dataclass
class ControlReport:
    name: str
    mode: Mode
    findings: list[Finding]
    duration: float
    error: Optional[str] = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CycleReport:
    number: int
    started: float
    duration: float
    controls: list[ControlReport]

    def findings(self) -> list[Finding]:
        return [f for c in self.controls for f in c.findings]


class ControlTimeout(Exception):
    pass


class _Guard:
    """Runs one control's calls in a daemon thread with a deadline.

    A call that overruns is abandoned, not killed (Python cannot kill a
    thread); while it is still stuck the control is skipped, so one hung
    control costs one thread, never one per cycle.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.stuck: Optional[threading.Thread] = None
        self.stuck_since = 0.0

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.stuck is not None and self.stuck.is_alive():
            waited = time.monotonic() - self.stuck_since
            raise ControlTimeout(f"still stuck in an earlier call ({waited:.0f}s)")
        self.stuck = None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported, never raised in the loop
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"control-{what}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self.stuck, self.stuck_since = worker, time.monotonic()
            raise ControlTimeout(f"{what} did not finish within {self.timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["value"]


class ContestTracker:
    """Notices an item healed again and again: something on the host undoes our work."""

    def __init__(self, settings: ContestSettings, interval: float, clock: Callable[[], float]):
        self.settings = settings
        self.interval = interval
        self.clock = clock
        self.heals: dict[tuple[str, str], deque[float]] = {}
        self.backoff_until: dict[tuple[str, str], float] = {}
        self.strikes: dict[tuple[str, str], int] = {}

    def in_backoff(self, item: tuple[str, str]) -> Optional[float]:
        until = self.backoff_until.get(item)
        return until if until is not None and self.clock() < until else None

    def record_heal(self, item: tuple[str, str]) -> bool:
        """Note a heal; True when the item is now contested (and backs off).

        Heals stay counted for the whole window, so after a backoff one more
        undo is enough to back off again, twice as long.
        """
        now = self.clock()
        times = self._recent(item, now)
        times.append(now)
        if len(times) < self.settings.threshold:
            return False
        strikes = self.strikes.get(item, 0) + 1
        self.strikes[item] = strikes
        delay = min(self.interval * (2**strikes), self.settings.backoff_max)
        self.backoff_until[item] = now + delay
        return True

    def record_ok(self, item: tuple[str, str]) -> None:
        """An item with no heal for a whole window is forgiven its strikes."""
        if item in self.strikes and not self._recent(item, self.clock()):
            self.strikes.pop(item, None)
            self.backoff_until.pop(item, None)

    def _recent(self, item: tuple[str, str], now: float) -> deque[float]:
        times = self.heals.setdefault(item, deque())
        while times and now - times[0] > self.settings.window:
            times.popleft()
        return times


class Engine:
    def __init__(
        self,
        policy: Policy,
        host: Host,
        on_event: Optional[EventSink] = None,
        clock: Callable[[], float] = time.time,
        today: Callable[[], datetime.date] = datetime.date.today,
        registry: Optional[Mapping[str, ControlSpec]] = None,
        on_progress: Optional[Callable[[str], None]] = None,
        gate: Optional[Gate] = None,
    ):
        self.gate = gate
        self.on_progress = on_progress or (lambda name: None)
        self.registry = specs() if registry is None else registry
        self.policy = policy
        self.host = host
        self.on_event = on_event or (lambda event, finding: None)
        self.clock = clock
        self.today = today
        self.cycles = 0
        self.controls: dict[str, Control] = {}
        self.build_errors: dict[str, str] = {}
        self.guards: dict[str, _Guard] = {}
        self.contest = ContestTracker(policy.contest, policy.interval, clock)
        self._build()

    def _build(self) -> None:
        for name, spec in self.registry.items():
            section = self.policy.controls.get(name)
            if section is None or not section.enabled:
                continue
            self.guards[name] = _Guard(self.policy.control_timeout)
            try:
                self.controls[name] = spec.build(section, self.host)
            except Exception as exc:  # noqa: BLE001 - a broken control must not stop the others
                self.build_errors[name] = f"cannot start control: {exc}"

    # -- one cycle -------------------------------------------------------------------

    def run_cycle(self, enforce: bool = True, only: Optional[Sequence[str]] = None) -> CycleReport:
        self.cycles += 1
        started = self.clock()
        t0 = time.monotonic()
        reports = []
        for name in self.guards:
            if only and name not in only:
                continue
            reports.append(self._run_control(name, enforce))
            self.on_progress(name)  # the daemon's watchdog heartbeat
        return CycleReport(self.cycles, started, time.monotonic() - t0, reports)

    def _run_control(self, name: str, enforce: bool) -> ControlReport:
        section = self.policy.controls[name]
        t0 = time.monotonic()
        if name in self.build_errors:
            findings = self._failed_items(section, self.build_errors[name])
            return ControlReport(name, section.mode, findings, 0.0, self.build_errors[name])
        control, guard = self.controls[name], self.guards[name]
        error = None
        try:
            findings = list(guard.call("check", control.check))
            findings = self._apply_waivers(findings)
            if enforce and section.mode is Mode.ENFORCE:
                findings = self._heal(name, control, guard, findings)
        except Exception as exc:  # noqa: BLE001 - recorded against the control's items
            error = _describe(exc)
            findings = self._failed_items(section, error)
        self._emit(findings)
        facts = self._facts(control)
        return ControlReport(name, section.mode, findings, time.monotonic() - t0, error, facts)

    def _heal(self, name: str, control: Control, guard: _Guard, findings: list[Finding]) -> list[Finding]:
        drift, held = [], {}
        for f in findings:
            if f.status is not Status.DRIFT:
                if f.status is Status.OK:
                    self.contest.record_ok((name, f.key))
                continue
            until = self.contest.in_backoff((name, f.key))
            if until is None:
                drift.append(f)
            else:
                held[f.key] = f.with_status(
                    Status.CONTESTED,
                    f"{f.message}; something keeps undoing this, next heal after "
                    + time.strftime("%H:%M:%S", time.localtime(until)),
                )
        if not drift:
            return [held.get(f.key, f) for f in findings]
        reversible = self.gate is not None and callable(getattr(control, "snapshot", None))
        if reversible and self.gate is not None:
            reason = self.gate.held(name)
            if reason:
                return [
                    f.with_status(Status.DRIFT, f"{f.message}; {reason}") if f in drift else f
                    for f in findings
                ]
        try:
            before = self._snapshot(name, control, guard) if reversible else None
        except Exception as exc:  # noqa: BLE001 - no way back: the heal must not happen
            refused = f"not healed: cannot record the state to roll back to ({_describe(exc)})"
            return [f.with_status(Status.FAILED, refused) if f in drift else f for f in findings]
        try:
            results = {r.key: r for r in guard.call("apply", control.apply, drift)}
        finally:
            if before is not None:
                self._arm(name, control, guard, before)
        after = {f.key: f for f in guard.call("check", control.check)}
        verified = {f.key: self._verify(name, f, results.get(f.key), after.get(f.key)) for f in drift}
        return [verified.get(f.key) or held.get(f.key) or f for f in findings]

    def _snapshot(self, name: str, control: Control, guard: _Guard) -> Any:
        """The control's state before a heal the gate wants confirmable, else None."""
        if self.gate is None or not self.gate.wants_snapshot(name):
            return None
        return guard.call("snapshot", control.snapshot)  # type: ignore[attr-defined]

    def _arm(self, name: str, control: Control, guard: _Guard, before: Any) -> None:
        # Armed only when the heal really changed something: a refused or
        # failed heal leaves nothing to confirm. Compared after a failed apply
        # too, since a partial change must still be rolled back.
        # A snapshot that fails now counts as changed: rolling back is the safe side.
        try:
            changed = guard.call("snapshot", control.snapshot) != before  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            changed = True
        if not changed or self.gate is None:
            return
        try:
            self.gate.armed(name, before)
        except Exception as exc:  # no record, no way back: undo at once
            guard.call("restore", control.restore, before)  # type: ignore[attr-defined]
            raise RuntimeError(
                f"cannot record the rollback ({_describe(exc)}): the change was undone"
            ) from exc

    def _verify(
        self, name: str, before: Finding, result: Optional[Finding], after: Optional[Finding]
    ) -> Finding:
        claimed = result.status if result is not None else Status.HEALED
        message = result.message if result is not None else ""
        if claimed is not Status.HEALED:
            # The control declined (DRIFT), could not (FAILED/UNSUPPORTED) or
            # waits for an outside action (PENDING): its word stands.
            return before.with_status(claimed, message or before.message)
        if after is None or after.status not in (Status.OK, Status.ABSENT):
            seen = "gone" if after is None else f"{after.status}: {after.message}"
            return before.with_status(Status.FAILED, f"heal did not stick (re-check: {seen})")
        healed = dataclasses.replace(after, status=Status.HEALED, message=message or "healed")
        if self.contest.record_heal((name, before.key)):
            return healed.with_status(
                Status.CONTESTED,
                f"healed {self.policy.contest.threshold} times within "
                f"{self.policy.contest.window:g}s: something on the host keeps undoing it",
            )
        return healed

    def _apply_waivers(self, findings: list[Finding]) -> list[Finding]:
        today = self.today()
        out = []
        for f in findings:
            waiver = self.policy.waiver_for(f.control, f.key, today)
            out.append(f.with_status(Status.WAIVED, waiver.describe()) if waiver else f)
        return out

    def _failed_items(self, section: ControlPolicy, error: str) -> list[Finding]:
        keys = list(section.items) or ["*"]
        return [Finding(section.name, key, Status.FAILED, message=error) for key in keys]

    def _facts(self, control: Control) -> dict[str, Any]:
        try:
            return dict(control.describe())
        except Exception as exc:  # noqa: BLE001 - facts are informational
            return {"error": _describe(exc)}

    def _emit(self, findings: list[Finding]) -> None:
        for f in findings:
            if f.status is not Status.OK:
                self.on_event(f.status.value, f)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ControlTimeout):
        return f"timeout: {exc}"
    return f"{type(exc).__name__}: {exc}"
