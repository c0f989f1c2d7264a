"""Backend-neutral comparison: what we want in our chain/table vs what is there.

A backend renders the desired Ruleset into Entries (one per kernel rule, with
a canonical text that the kernel gives back unchanged) and reads the real
chain into Entries the same way; this module turns the two into Findings:
one per rule of ours, plus "foreign-rules" and the backend's structural items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

from k3s_agent.controls.firewall.model import Ruleset
from k3s_agent.model import Finding, Status

NAME = "firewall"


@dataclasses.dataclass(frozen=True)
class Entry:
    name: Optional[str]  # the rule of ours it belongs to (from its comment), None if unnamed
    canon: str  # canonical form, compared for equality
    text: str  # for humans


@dataclasses.dataclass(frozen=True)
class Structure:
    key: str  # "table", "chain", "jump", "policy"
    desired: str
    observed: str
    ok: bool
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Observed:
    structure: tuple[Structure, ...]
    entries: tuple[Entry, ...]


def findings(ruleset: Ruleset, desired: Sequence[Entry], observed: Observed) -> list[Finding]:
    result = [
        Finding(NAME, s.key, Status.OK if s.ok else Status.DRIFT, s.desired, s.observed, s.message)
        for s in observed.structure
    ]
    misplaced = _out_of_order(desired, observed.entries)
    for rule in ruleset.rules:
        want = [e.canon for e in desired if e.name == rule.name]
        have = [e for e in observed.entries if e.name == rule.name]
        seen = [e.text for e in have] or None
        wanted = f"(not rendered) {rule.inactive}" if rule.inactive else rule.describe()
        base = Finding(NAME, rule.name, Status.OK, wanted, seen, rule.inactive)
        if [e.canon for e in have] != want:
            what = "missing" if not have else ("present but not wanted" if not want else "changed")
            result.append(base.with_status(Status.DRIFT, f"rule {what}"))
        elif rule.name in misplaced:
            result.append(base.with_status(Status.DRIFT, "rule out of order"))
        else:
            result.append(base)
    ours = set(ruleset.names())
    foreign = [e.text for e in observed.entries if e.name not in ours]
    status = Status.DRIFT if foreign else Status.OK
    message = f"{len(foreign)} rule(s) in our chain that we did not write" if foreign else ""
    result.append(Finding(NAME, "foreign-rules", status, [], foreign, message))
    return result


def _out_of_order(desired: Sequence[Entry], observed: Sequence[Entry]) -> set[str]:
    """Rules whose entries sit in another order relative to the other rules of ours."""
    wanted = [e.name for e in desired]
    names = set(wanted)
    seen = [e.name for e in observed if e.name in names]
    if sorted(map(str, seen)) != sorted(map(str, wanted)) or seen == wanted:
        return set()  # missing/extra entries are reported as such, not as order
    return {str(w) for w, s in zip(wanted, seen) if w != s}
