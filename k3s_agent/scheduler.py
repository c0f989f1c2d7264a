"""What is due between sweeps: which controls to check now, and which can wait.

The daemon runs a full sweep every interval. In between, this module decides
which single controls deserve a targeted ("event") cycle:

- a watch of the control fired (inotify, netlink): the control is due a short
  debounce later, so a burst of writes (an editor's temp file + rename) is
  one check;
- its fingerprint moved: a control that offers `fingerprint()` (a cheap,
  side-effect-free sample of state no event announces, such as runtime
  sysctl values) is sampled every `poll_every` seconds and compared with the
  sample taken after its last check;
- events our own heal caused do not wake it again: events that arrive within
  `settle` seconds after a cycle of the control that wrote something are
  dropped (a real edit landing in that window waits for the sweep, and a
  fingerprint still catches it);
- a storm stays bounded per control, not globally: each control has a token
  bucket of CPU seconds (`share` of one core, up to `burst` seconds saved
  up); a targeted cycle runs only while the bucket is positive and costs the
  CPU time it took, so a file touched 50 times a second costs at most `share`
  of a core while every other control keeps its own budget.

It knows no subsystem and no thread but its callers': `fired()` may be called
from watcher threads, everything else from the daemon's loop. The clock is
injected so tests run on a fake one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from k3s_agent.model import Status

DEBOUNCE = 0.2  # seconds from the first event of a burst to the check
POLL_EVERY = 0.5  # seconds between fingerprint samples
SETTLE = 0.5  # seconds after our own write during which its events are ours
SHARE = 0.01  # targeted cycles of one control may cost this fraction of one core
BURST = 0.25  # CPU seconds a quiet control saves up for a burst of drift

# Statuses after which the control may have written to the host (a heal, a heal
# that did not stick, a contested item healed, a K3s setting written).
_WROTE = (Status.HEALED, Status.FAILED, Status.CONTESTED, Status.PENDING)

Fingerprint = Callable[[], Hashable]


@dataclasses.dataclass
class _State:
    """What the scheduler knows of one control."""

    fingerprint: Optional[Fingerprint] = None
    baseline: Hashable = None  # fingerprint after the last check
    pending_since: Optional[float] = None  # first event of a burst not yet checked
    settle_until: float = 0.0  # events before this are our own writes
    tokens: float = BURST
    refilled: float = 0.0
    events: int = 0
    suppressed: int = 0
    runs: int = 0


class Scheduler:
    """Debounce, per-control CPU budget, own-write suppression and fingerprints."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        debounce: float = DEBOUNCE,
        poll_every: float = POLL_EVERY,
        settle: float = SETTLE,
        share: float = SHARE,
        burst: float = BURST,
    ):
        self.clock = clock
        self.debounce = debounce
        self.poll_every = poll_every
        self.settle = settle
        self.share = share
        self.burst = burst
        self.states: dict[str, _State] = {}
        self.next_poll = 0.0
        self.lock = threading.Lock()

    def reset(self, controls: Mapping[str, Any]) -> None:
        """Start afresh for a new set of controls (start, policy reload)."""
        now = self.clock()
        with self.lock:
            self.states = {
                name: _State(fingerprint=_fingerprint_of(control), tokens=self.burst, refilled=now)
                for name, control in controls.items()
            }
        self.next_poll = now

    # -- inputs ---------------------------------------------------------------------

    def fired(self, names: Iterable[str]) -> bool:
        """A watch of these controls fired; True when the loop should look again
        (a control became pending), False when nothing new is due."""
        now = self.clock()
        woke = False
        with self.lock:
            for name in names:
                state = self.states.get(name)
                if state is None:
                    continue
                state.events += 1
                if now < state.settle_until:
                    state.suppressed += 1  # the echo of our own write
                elif state.pending_since is None:
                    state.pending_since = now
                    woke = True
        return woke

    def before(self, names: Sequence[str]) -> dict[str, Hashable]:
        """Fingerprints just before a cycle of these controls (see `ran`)."""
        return {name: self._sample(name) for name in names}

    def ran(self, name: str, before: Hashable, findings: Sequence[Any], cpu: float, targeted: bool) -> None:
        """A cycle checked `name`: take the new baseline, open the settle window
        if it wrote, and charge a targeted cycle's CPU time to its budget."""
        after = self._sample(name)
        now = self.clock()
        wrote = any(f.status in _WROTE for f in findings)
        with self.lock:
            state = self.states.get(name)
            if state is None:
                return
            state.runs += 1
            state.baseline = after
            # An event that arrived while the check ran may be a change it did not see.
            state.pending_since = None
            if wrote:
                state.settle_until = now + self.settle
            elif after != before:
                state.pending_since = now  # moved during a check that wrote nothing: not ours
            if targeted:
                self._refill(state, now)
                state.tokens -= cpu

    def record(self, report: Any, before: Mapping[str, Hashable], cpu: float, targeted: bool) -> None:
        """`ran()` for every control of a cycle report; a targeted cycle's CPU time
        is shared out by each control's part of its wall time."""
        total = sum(c.duration for c in report.controls) or 1.0
        for c in report.controls:
            cost = cpu * c.duration / total if len(report.controls) > 1 else cpu
            self.ran(c.name, before.get(c.name), c.findings, cost, targeted)

    # -- decisions ------------------------------------------------------------------

    def due(self) -> list[str]:
        """Controls to check now (a targeted cycle); samples fingerprints when it is time."""
        now = self.clock()
        if now >= self.next_poll:
            self._poll(now)
        with self.lock:
            return [name for name, state in self.states.items() if self._ready(state, now)]

    def next_wake(self) -> float:
        """When `due()` may next return something (clock time)."""
        with self.lock:
            pending = [state for state in self.states.values() if state.pending_since is not None]
            times = [self._ready_at(state) for state in pending]
        if any(state.fingerprint is not None for state in self.states.values()):
            times.append(self.next_poll)
        return min(times, default=float("inf"))

    def stats(self) -> dict[str, dict[str, int]]:
        """Per control: events seen, events dropped as our own, checks run (for status)."""
        with self.lock:
            return {
                name: {"events": s.events, "suppressed": s.suppressed, "checks": s.runs}
                for name, s in self.states.items()
            }

    # -- internals ------------------------------------------------------------------

    def _poll(self, now: float) -> None:
        self.next_poll = now + self.poll_every
        for name, state in list(self.states.items()):
            if state.fingerprint is None or state.pending_since is not None:
                continue
            seen = self._sample(name)
            with self.lock:
                if seen != state.baseline and state.pending_since is None:
                    # Already sampled as changed: due at once, no debounce to wait for.
                    state.pending_since = now - self.debounce

    def _sample(self, name: str) -> Hashable:
        state = self.states.get(name)
        if state is None or state.fingerprint is None:
            return None
        try:
            return state.fingerprint()
        except Exception as exc:  # noqa: BLE001 - a broken sample must not stop the loop
            return ("error", type(exc).__name__)

    def _refill(self, state: _State, now: float) -> None:
        state.tokens = min(self.burst, state.tokens + (now - state.refilled) * self.share)
        state.refilled = now

    def _ready_at(self, state: _State) -> float:
        """When a pending control may run: after the debounce, and once its budget is positive."""
        assert state.pending_since is not None
        at = state.pending_since + self.debounce
        if state.tokens <= 0:
            at = max(at, state.refilled - state.tokens / self.share + 1e-3)
        return at

    def _ready(self, state: _State, now: float) -> bool:
        if state.pending_since is None:
            return False
        self._refill(state, now)
        return now >= self._ready_at(state)


def _fingerprint_of(control: Any) -> Optional[Fingerprint]:
    """The control's optional `fingerprint()` capability, if it has one."""
    fingerprint = getattr(control, "fingerprint", None)
    return fingerprint if callable(fingerprint) else None
