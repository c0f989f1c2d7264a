"""The one contract between the engine and a subsystem: a Control.

Modelled on mgmt's CheckApply + Watch and tuned's verify/apply plugins:
check() observes and compares with no side effect; apply() heals the drift it
is given and says what it did per item; the engine then calls check() again
to verify. A control knows nothing of timers, sockets or systemd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from k3s_agent.host import Host
from k3s_agent.model import Finding, Status
from k3s_agent.policy.schema import Field, setting

if TYPE_CHECKING:
    from k3s_agent.policy.model import ControlPolicy, Policy


@dataclasses.dataclass(frozen=True)
class Watch:
    """Something whose change means "check me now".

    kind "path": an inotify watch on a file or directory (host path, not rooted).
    kind "netlink": a netlink group name (e.g. "nftables", "ipv4_addr").
    """

    kind: str
    target: str


class Control(Protocol):
    name: str

    def check(self) -> list[Finding]:
        """Observe, no side effect; a drift apply will not act on carries `declined` (why)."""
        ...

    def apply(self, drift: Sequence[Finding]) -> list[Finding]: ...

    def watches(self) -> list[Watch]: ...

    def describe(self) -> dict[str, object]:
        """Facts for status (e.g. which firewall backend was chosen and why)."""
        ...


class Fingerprinted(Protocol):
    """An optional capability of a Control, for state no event announces.

    `fingerprint()` returns a cheap sample of what check() looks at and no
    watch covers (runtime sysctl values: the kernel sends no event for a
    `sysctl -w`). It must have no side effect and cost well under a
    millisecond: the daemon calls it every half second and runs a targeted
    check of the control when it differs from the sample taken after its last
    check (scheduler.py). A control without the method is checked on its
    watches and the sweep only.
    """

    def fingerprint(self) -> Hashable: ...


@dataclasses.dataclass(frozen=True)
class Lint:
    """A cross-item problem in a merged policy: refused unless the item accepts the risk.

    overridable=False: refused even with accept_risk (a contradiction, not a risk).
    because: (control, item key) that makes the problem, named when the item
      the problem is about is in no file (a required item that is missing).
    """

    key: str  # item key the problem is about ("" = the section)
    reason: str
    overridable: bool = True
    because: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ControlSpec:
    """How the policy loader validates a control's section, and how to build it.

    options: section-level keys besides the common mode/enabled/disable/items.
    item_fields: per-item keys besides the common cis/accept_risk/description.
    item_key: returns why an item key is impossible (e.g. not a dotted sysctl name).
    canonical_key: maps every spelling of an item key to one form (sysctl:
      net/ipv4/ip_forward and net.ipv4.ip_forward are one key); the loader
      refuses two spellings of one key and matches `disable` by it.
    lint: problems in the merged section that break a node; each is refused
      unless the item it names carries `accept_risk = "<reason>"`.
    verify_only: apply never changes anything: the engine marks every drift of
      the control declined (VERIFY_ONLY), so `diff` lists none of it as a change.
    """

    name: str
    build: Callable[[ControlPolicy, Host], Control]
    options: Mapping[str, Field] = dataclasses.field(default_factory=dict)
    item_fields: Mapping[str, Field] = dataclasses.field(default_factory=dict)
    item_key: Optional[Callable[[str], Optional[str]]] = None
    canonical_key: Optional[Callable[[str], str]] = None
    lint: Optional[Callable[[ControlPolicy, Policy, Host], list[Lint]]] = None
    verify_only: bool = False
    doc: str = ""  # one line: what the control keeps right (docs/policy.md is generated from it)

    def option(self, policy: ControlPolicy, key: str) -> Any:
        """policy's value of option key, else the default its Field declares.

        The one place an option's default lives is its Field; a control reads
        every option through here (KeyError for a key its spec does not declare).
        """
        return setting(policy.options, self.options, key)


VERIFY_ONLY = "verify-only: the agent never changes it"


def split_declined(drift: Sequence[Finding]) -> tuple[list[Finding], list[Finding]]:
    """(apply's answers for the drift check() declined, the drift left to heal).

    The engine never passes a declined finding to apply; an apply that is
    handed one anyway (a test, a direct caller) answers it the same way:
    still drift, its message plus why.
    """
    answers = [f.with_status(Status.DRIFT, f"{f.message}; {f.declined}") for f in drift if f.declined]
    return answers, [f for f in drift if not f.declined]
