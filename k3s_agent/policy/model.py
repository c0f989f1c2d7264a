"""The validated, merged policy that the engine and the controls read."""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
from collections.abc import Mapping
from typing import Any, Optional

from k3s_agent.model import Mode
from k3s_agent.policy.benchmark import PROFILE_BENCHMARK, BenchmarkChoice
from k3s_agent.policy.keys import CONTEST_FIELDS, TOP_FIELDS
from k3s_agent.policy.keys import PROFILES as PROFILES  # re-exported: the CLI's parser reads it here

# Seconds the daemon's first enforcing firewall/sshd change waits for
# `k3s-agentctl confirm` before it is rolled back (k3s_agent/confirm.py).
DEFAULT_CONFIRM_TIMEOUT: float = TOP_FIELDS["confirm_timeout"].default


@dataclasses.dataclass(frozen=True)
class Waiver:
    control: str
    key: str  # exact key or fnmatch pattern
    reason: str
    owner: str
    expires: datetime.date
    source: str = ""

    def covers(self, control: str, key: str) -> bool:
        return self.control == control and (self.key == key or fnmatch.fnmatchcase(key, self.key))

    def active(self, today: datetime.date) -> bool:
        return today <= self.expires

    def describe(self) -> str:
        return f"waived by {self.owner} until {self.expires.isoformat()}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ControlPolicy:
    """One control's section after merging every layer and dropping disabled items."""

    name: str
    mode: Mode
    enabled: bool
    options: Mapping[str, Any]
    items: Mapping[str, Mapping[str, Any]]
    disabled: tuple[str, ...] = ()
    # The benchmark in force ("k3s-cis-1.10"), for controls that word messages with it.
    benchmark: str = PROFILE_BENCHMARK

    def option(self, key: str, default: Any = None) -> Any:
        """The option as the layers set it; controls read it with its schema default
        through ControlSpec.option (the default lives on the Field only)."""
        return self.options.get(key, default)


@dataclasses.dataclass(frozen=True)
class ContestSettings:
    threshold: int = CONTEST_FIELDS["threshold"].default  # undos of one item by someone else ...
    window: float = CONTEST_FIELDS["window"].default  # ... within this many seconds = contested
    # accepted, no longer used: a contested item is still healed every sweep
    backoff_max: float = CONTEST_FIELDS["backoff_max"].default


@dataclasses.dataclass(frozen=True)
class Policy:
    profile: str
    mode: Mode
    interval: float
    control_timeout: float
    contest: ContestSettings
    controls: Mapping[str, ControlPolicy]
    waivers: tuple[Waiver, ...]
    sources: tuple[str, ...]
    metrics_textfile: Optional[str] = None
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT
    benchmark: BenchmarkChoice = dataclasses.field(default_factory=BenchmarkChoice)
    # False for a read-only report (`k3s-agentctl check`, `diff`): lints that only
    # guard a write (the sshd lock-out probe) report through the run-time guard
    # instead of refusing the whole policy, so the check still says where the node
    # stands. validate, apply and the daemon keep them.
    preflight: bool = True

    def with_mode(self, mode: Mode) -> Policy:
        """This policy with every control (and the default) in one mode."""
        controls = {n: dataclasses.replace(c, mode=mode) for n, c in self.controls.items()}
        return dataclasses.replace(self, controls=controls, mode=mode)

    def waiver_for(self, control: str, key: str, today: datetime.date) -> Optional[Waiver]:
        for waiver in self.waivers:
            if waiver.covers(control, key) and waiver.active(today):
                return waiver
        return None
