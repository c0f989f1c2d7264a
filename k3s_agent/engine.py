"""The reconcile loop: check -> (apply -> verify) -> record.

The engine knows nothing of sysctl or iptables. Each control runs in a worker
thread with a deadline, so an exception or a hang in one control is recorded
against that control's items and never stops the others or the loop.
"""

from __future__ import annotations

import dataclasses
import datetime
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Protocol

from k3s_agent.controls import default_registry
from k3s_agent.controls.base import VERIFY_ONLY, Control, ControlSpec
from k3s_agent.host import Host
from k3s_agent.model import COMPLIANT, Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy

EventSink = Callable[[str, Finding], None]


class Gate(Protocol):
    """Commit-confirmed heals (k3s_agent.confirm.Gate): asked only about controls
    that offer snapshot() and restore(); the engine knows no subsystem."""

    def held(self, name: str) -> Optional[str]: ...  # why this control must not be healed now

    def wants_snapshot(self, name: str) -> bool: ...  # this heal must be confirmable

    def armed(self, name: str, snapshot: Any) -> None: ...  # the heal changed it: start the clock

    def settled(self, name: str) -> None: ...  # compliant in enforce mode, nothing changed


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


def merge_reports(full: Optional[CycleReport], partial: CycleReport) -> CycleReport:
    """The latest full view: `full` with the controls `partial` checked replaced
    (an event cycle checks a few controls; status still shows them all)."""
    if full is None:
        return partial
    fresh = {c.name: c for c in partial.controls}
    controls = [fresh.pop(c.name, c) for c in full.controls] + list(fresh.values())
    return CycleReport(partial.number, partial.started, partial.duration, controls)


class ControlTimeout(Exception):
    pass


class _Worker:
    """One long-lived daemon thread that runs a guard's calls one at a time.

    A thread per call cost the daemon ~0.5 MB of RSS per 1,000 cycles
    (glibc keeps what every short-lived thread's arena and stack touched;
    bench/daemon_rss.py --soak); one worker per control keeps RSS flat. An
    idle worker exits after IDLE seconds, so the workers of an engine dropped
    by a policy reload do not pile up; a worker whose call overran exits when
    that call returns.
    """

    IDLE = 300.0

    def __init__(self, name: str):
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.open = True
        self.abandoned = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[], None]) -> Optional[threading.Event]:
        """Queue a job; its done event, or None when the worker already exited."""
        with self.lock:
            if not self.open:
                return None
            done = threading.Event()
            self.jobs.put((job, done))
            return done

    def _run(self) -> None:
        while True:
            try:
                job, done = self.jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self.lock:
                    if self.jobs.empty():
                        self.open = False
                        return
                continue
            job()
            done.set()
            if self.abandoned:
                return


class _Guard:
    """Runs one control's calls in a worker thread with a deadline.

    A call that overruns is abandoned, not killed (Python cannot kill a
    thread); while it is still stuck the control is skipped, so one hung
    control costs one thread, never one per cycle.
    """

    def __init__(self, timeout: float, name: str = ""):
        self.timeout = timeout
        self.name = name
        self.stuck: Optional[threading.Event] = None  # the overrun call's done event
        self.stuck_since = 0.0
        self.worker: Optional[_Worker] = None

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.stuck is not None and not self.stuck.is_set():
            waited = time.monotonic() - self.stuck_since
            raise ControlTimeout(f"still stuck in an earlier call ({waited:.0f}s)")
        self.stuck = None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported, never raised in the loop
                box["error"] = exc

        done = self.worker.submit(run) if self.worker is not None else None
        if done is None:  # no worker yet, or it exited idle
            self.worker = _Worker(f"control-{self.name or what}")
            done = self.worker.submit(run)
            assert done is not None
        if not done.wait(self.timeout):
            worker, self.worker = self.worker, None
            worker.abandoned = True  # exits once the call returns
            self.stuck, self.stuck_since = done, time.monotonic()
            raise ControlTimeout(f"{what} did not finish within {self.timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["value"]


Item = tuple[str, str]  # (control, item key)
TRIGGERS = ("sweep", "event")


@dataclasses.dataclass
class _Fight:
    """What the tracker knows about one item."""

    settled: Optional[tuple[Any, int]] = None  # (desired, plan) we last saw it right at; None: not since
    undos: deque[float] = dataclasses.field(default_factory=deque)
    contested: bool = False


@dataclasses.dataclass(frozen=True)
class Contest:
    """A contested item, for the report: how often, and until when it stays contested."""

    undos: int
    last: float
    until: float

    def describe(self, window: float) -> str:
        return (
            f"undone {self.undos} time(s) within {window:g}s by something on the host (last at "
            f"{_clock_time(self.last)}); contested until {_clock_time(self.until)} unless undone again"
        )


class ContestTracker:
    """Tells an undo by someone else from our own work, and keeps a fight visible.

    An undo is an item we last saw right (observed ok, or healed and re-checked)
    found drifted again while what we want is unchanged: the item's desired
    value and the control's whole plan (every item's desired value, so a rule
    that only moved because we added another is our change, not an undo). So
    the first convergence after start (never seen right), a change of our own
    desired state, an item we never touched (a whole-table rewrite re-writes
    items that were ok: they are not healed, they never drift) and a heal that
    did not stick (never seen right) do not count. `threshold` undos within
    `window` make the item contested; it stays contested until a whole window
    passes without an undo, even while every sweep heals it.
    """

    def __init__(self, settings: ContestSettings, clock: Callable[[], float]):
        self.settings = settings
        self.clock = clock
        self.items: dict[Item, _Fight] = {}

    def settled(self, item: Item, desired: Any, plan: int) -> None:
        """We see the item right (ok now, or healed and verified)."""
        self.items.setdefault(item, _Fight()).settled = (desired, plan)

    def unsettled(self, item: Item) -> None:
        """The item is in a state we do not hold right (failed, waived, declined ...)."""
        fight = self.items.get(item)
        if fight is not None:
            fight.settled = None

    def drifted(self, item: Item, desired: Any, plan: int) -> bool:
        """The item drifted; True when that is an undo (counted once per drift)."""
        fight = self.items.setdefault(item, _Fight())
        undo = fight.settled is not None and fight.settled == (desired, plan)
        fight.settled = None
        if undo:
            now = self.clock()
            self._expire(fight, now)
            fight.undos.append(now)
            fight.contested = fight.contested or len(fight.undos) >= self.settings.threshold
        return undo

    def adopt(self, earlier: ContestTracker) -> None:
        """Carry the fights of the engine a reload replaces: a SIGHUP must not
        forgive an item (what counts as settled holds the desired values, so a
        changed policy never turns our own change into an undo)."""
        self.items = earlier.items

    def contest(self, item: Item) -> Optional[Contest]:
        """The item's fight if it is contested; forgiven after a window with no undo."""
        fight = self.items.get(item)
        if fight is None or not fight.contested:
            return None
        self._expire(fight, self.clock())
        if not fight.undos:
            fight.contested = False  # a whole window without an undo: forgiven
            return None
        last = fight.undos[-1]
        return Contest(len(fight.undos), last, last + self.settings.window)

    def _expire(self, fight: _Fight, now: float) -> None:
        while fight.undos and now - fight.undos[0] > self.settings.window:
            fight.undos.popleft()


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
        self.registry = default_registry() if registry is None else registry
        self.policy = policy
        self.host = host
        self.on_event = on_event or (lambda event, finding: None)
        self.clock = clock
        self.today = today
        self.cycles = 0
        self.controls: dict[str, Control] = {}
        self.build_errors: dict[str, str] = {}
        self.guards: dict[str, _Guard] = {}
        self.contest = ContestTracker(policy.contest, clock)
        self._build()

    def _build(self) -> None:
        for name, spec in self.registry.items():
            section = self.policy.controls.get(name)
            if section is None or not section.enabled:
                continue
            self.guards[name] = _Guard(self.policy.control_timeout, name)
            try:
                self.controls[name] = spec.build(section, self.host)
            except Exception as exc:  # noqa: BLE001 - a broken control must not stop the others
                self.build_errors[name] = f"cannot start control: {exc}"

    # -- one cycle -------------------------------------------------------------------

    def run_cycle(
        self, enforce: bool = True, only: Optional[Sequence[str]] = None, trigger: str = "sweep"
    ) -> CycleReport:
        """One pass over the controls.

        `trigger` says why: "sweep" (the interval, a reload, a manual run) heals
        every drifted item; "event" (a watched file or netlink change) skips the
        heal of a contested item, which the next sweep heals anyway: a fight
        costs one heal per interval, never one per event.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, not {trigger!r}")
        self.cycles += 1
        started = self.clock()
        t0 = time.monotonic()
        reports = []
        for name in self.guards:
            if only and name not in only:
                continue
            reports.append(self._run_control(name, enforce, trigger == "sweep"))
            self.on_progress(name)  # the daemon's watchdog heartbeat
        return CycleReport(self.cycles, started, time.monotonic() - t0, reports)

    def _run_control(self, name: str, enforce: bool, sweep: bool) -> ControlReport:
        section = self.policy.controls[name]
        t0 = time.monotonic()
        if name in self.build_errors:
            findings = self._failed_items(section, self.build_errors[name])
            return ControlReport(name, section.mode, findings, 0.0, self.build_errors[name])
        control, guard = self.controls[name], self.guards[name]
        error, healed = None, set()
        try:
            findings = self._verify_only(name, list(guard.call("check", control.check)))
            findings = self._apply_waivers(findings)
            if enforce and section.mode is Mode.ENFORCE:
                findings, healed = self._heal(name, control, guard, findings, sweep)
        except Exception as exc:  # noqa: BLE001 - recorded against the control's items
            error = _describe(exc)
            findings = self._failed_items(section, error)
        self._emit(findings, healed)
        facts = self._facts(control)
        return ControlReport(name, section.mode, findings, time.monotonic() - t0, error, facts)

    def _heal(
        self, name: str, control: Control, guard: _Guard, findings: list[Finding], sweep: bool
    ) -> tuple[list[Finding], set[str]]:
        """Heal the drifted items, verify, track undos; returns the findings and the keys healed.

        A declined drift (Finding.declined: apply will not act on it) is neither
        healed nor counted as an undo: it waits for a human, and says so.
        """
        plan = _plan(findings)
        drift = []
        for f in findings:
            item = (name, f.key)
            if f.status is Status.OK:
                self.contest.settled(item, f.desired, plan)
            elif f.status is not Status.DRIFT or f.declined:
                self.contest.unsettled(item)
            else:
                self.contest.drifted(item, f.desired, plan)
                # The sweep heals every drifted item, contested or not: hardening
                # never lapses for longer than one interval.
                if sweep or self.contest.contest(item) is None:
                    drift.append(f)
        if not drift and self.gate is not None and _reversible(control) and _all_compliant(findings):
            self.gate.settled(name)  # nothing changed: no first change left to confirm
        verified = self._apply_and_verify(name, control, guard, drift) if drift else {}
        healed = {key for key, f in verified.items() if f.status is Status.HEALED}
        for key in healed:
            self.contest.settled((name, key), verified[key].desired, plan)
        out = [self._contested(name, verified.get(f.key) or f) for f in findings]
        return out, healed

    def _apply_and_verify(
        self, name: str, control: Control, guard: _Guard, drift: list[Finding]
    ) -> dict[str, Finding]:
        """apply -> (arm a rollback) -> check again; the verified finding per drifted key."""
        reversible = self.gate is not None and _reversible(control)
        if reversible and self.gate is not None:
            reason = self.gate.held(name)
            if reason:  # rolled back and not confirmed: healing it again would re-lock
                return {f.key: f.with_status(Status.DRIFT, f"{f.message}; {reason}") for f in drift}
        try:
            before = self._snapshot(name, control, guard) if reversible else None
        except Exception as exc:  # noqa: BLE001 - no way back: the heal must not happen
            refused = f"not healed: cannot record the state to roll back to ({_describe(exc)})"
            return {f.key: f.with_status(Status.FAILED, refused) for f in drift}
        try:
            results = {r.key: r for r in guard.call("apply", control.apply, drift)}
        finally:
            if before is not None:
                self._arm(name, control, guard, before)
        after = {f.key: f for f in guard.call("check", control.check)}
        return {f.key: self._verify(f, results.get(f.key), after.get(f.key)) for f in drift}

    def _contested(self, name: str, finding: Finding) -> Finding:
        """A contested item reads `contested` (ok, healed or waiting) until it is forgiven."""
        if finding.status not in (Status.OK, Status.HEALED, Status.DRIFT) or finding.declined:
            return finding  # failed, waived, declined ... say more than "contested"
        contest = self.contest.contest((name, finding.key))
        if contest is None:
            return finding
        fight = contest.describe(self.policy.contest.window)
        now = {
            Status.OK: "ok now",
            Status.HEALED: f"healed ({finding.message})",
            Status.DRIFT: f"{finding.message}; healed at the next sweep",
        }[finding.status]
        return finding.with_status(Status.CONTESTED, f"{now}; {fight}")

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

    def _verify(self, before: Finding, result: Optional[Finding], after: Optional[Finding]) -> Finding:
        claimed = result.status if result is not None else Status.HEALED
        message = result.message if result is not None else ""
        if claimed is not Status.HEALED:
            # The control declined (DRIFT), could not (FAILED/UNSUPPORTED) or
            # waits for an outside action (PENDING): its word stands.
            return before.with_status(claimed, message or before.message)
        if after is None or after.status not in (Status.OK, Status.ABSENT):
            seen = "gone" if after is None else f"{after.status}: {after.message}"
            return before.with_status(Status.FAILED, f"heal did not stick (re-check: {seen})")
        return dataclasses.replace(after, status=Status.HEALED, message=message or "healed")

    def _verify_only(self, name: str, findings: list[Finding]) -> list[Finding]:
        """A verify-only control's drift (ControlSpec.verify_only) is all declined."""
        spec = self.registry.get(name)
        if spec is None or not spec.verify_only:
            return findings
        return [
            dataclasses.replace(f, declined=VERIFY_ONLY) if f.status is Status.DRIFT and not f.declined else f
            for f in findings
        ]

    def _apply_waivers(self, findings: list[Finding]) -> list[Finding]:
        today = self.today()
        out = []
        for f in findings:
            waiver = self.policy.waiver_for(f.control, f.key, today)
            out.append(f.with_status(Status.WAIVED, waiver.describe()) if waiver else f)
        return out

    def _failed_items(self, section: ControlPolicy, error: str) -> list[Finding]:
        """Every item of a control that broke, failed, with its CIS id (reports count it)."""
        keys = list(section.items) or ["*"]
        return [
            Finding(section.name, key, Status.FAILED, message=error, cis=_cis(section.items.get(key)))
            for key in keys
        ]

    def _facts(self, control: Control) -> dict[str, Any]:
        try:
            return dict(control.describe())
        except Exception as exc:  # noqa: BLE001 - facts are informational
            return {"error": _describe(exc)}

    def _emit(self, findings: list[Finding], healed: set[str]) -> None:
        """One event per item not ok; "healed" for every heal, a contested item's too."""
        for f in findings:
            if f.key in healed:
                self.on_event(Status.HEALED.value, f)
            elif f.status is not Status.OK:
                self.on_event(f.status.value, f)


def _plan(findings: Sequence[Finding]) -> int:
    """A fingerprint of everything a control wants (each item's desired value)."""
    return hash(tuple(sorted((f.key, repr(f.desired)) for f in findings)))


def _clock_time(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ControlTimeout):
        return f"timeout: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _reversible(control: Control) -> bool:
    """The control can be rolled back (offers snapshot() and restore())."""
    return callable(getattr(control, "snapshot", None)) and callable(getattr(control, "restore", None))


def _all_compliant(findings: list[Finding]) -> bool:
    """Every finding counts as compliant by the node's verdict (model.COMPLIANT, a manual check too)."""
    return all(f.status in COMPLIANT for f in findings)


def _cis(item: Any) -> Optional[str]:
    cis = item.get("cis") if isinstance(item, Mapping) else None
    return str(cis) if cis else None
