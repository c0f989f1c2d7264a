"""A node-compliance document with every status, every optional section and
hostile label values, for the metrics tests (unit and promtool)."""

from __future__ import annotations

import datetime
import time
from typing import Any, Optional

from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, Policy, Waiver
from k3s_agent.report import build_document

# What a policy key may hold: quotes, backslashes, a newline, a tab, non-ASCII,
# something that looks like a second sample, a lone backslash at the end.
HOSTILE_KEYS = (
    'net.ipv4."quoted"',
    "C:\\path\\n-not-a-newline",
    "line\nbreak",
    "tab\there",
    "Grüße/日本語/🙂",
    '} 1\nk3s_agentd_verdict{x="y"} 0',
    "trailing\\",
)
TODAY = datetime.date(2026, 11, 30)


def hostile_document() -> dict[str, Any]:
    """Every status in sysctl, hostile keys in files (two declined), a firewall with a backend,
    daemon counters, waivers (one soon, one later) and a confirmation section."""
    sysctl = [Finding("sysctl", f"k.{s.value}", s, "1", "0", "m", cis="1.2.3") for s in Status]
    files = [
        Finding("files", key, Status.DRIFT, "0600", "0644", 'say "no"\\', cis='4.1"\\', declined=why)
        for key, why in zip(HOSTILE_KEYS, ('not ours: "x"\n', "verify-only", *[None] * len(HOSTILE_KEYS)))
    ]
    firewall = ControlReport("firewall", Mode.ENFORCE, [], 0.01, facts={"backend": "nft"})
    controls = [
        ControlReport("sysctl", Mode.ENFORCE, sysctl, 0.001),
        ControlReport("files", Mode.AUDIT, files, 0.002, error='boom "x"\nsecond line'),
        firewall,
    ]
    waivers = (
        Waiver("files", HOSTILE_KEYS[0], "r", "ops", TODAY + datetime.timedelta(days=3)),
        Waiver("sysctl", "k.*", "r", "ops", TODAY + datetime.timedelta(days=200)),
    )
    policy = Policy("k3s-cis-server", Mode.ENFORCE, 60, 30, ContestSettings(), {}, waivers, ("profile:x",))
    daemon = {
        "running": True,
        "policy_error": 'policy.toml: sysctl: "x" is bad\nand more',
        "heals_total": 5,
        "heal_failures_total": 1,
        "policy_reload_failures_total": 2,
        "heals_by_control": {"sysctl": 4, 'fi"les\\\n': 1},
        "last_heal_at": time.time() - 30,
    }
    document = build_document(CycleReport(7, time.time() - 1, 0.25, controls), policy, daemon)
    document["waivers"] = [
        {"control": w.control, "key": w.key, "owner": w.owner, "expires": w.expires.isoformat()}
        for w in waivers
    ]
    document["confirmation"] = {
        "message": "awaiting confirmation",
        "controls": {
            "sshd": {"state": "awaiting confirmation", "rollback_at": "2026-11-30T10:00:00+00:00"},
            "firewall": {"state": "rolled back", "at": "2026-11-30T09:00:00+00:00", "note": "n"},
        },
        "problem": None,
    }
    return document


def cycle_document(*controls: ControlReport) -> dict[str, Any]:
    """A one-shot document (no daemon facts, no waivers) of these controls."""
    policy = Policy("k3s-cis-server", Mode.ENFORCE, 60, 30, ContestSettings(), {}, (), ())
    return build_document(CycleReport(1, time.time(), 0.1, list(controls)), policy)


def _control(name: str, *rows: tuple[Status, Optional[str]]) -> ControlReport:
    """A control whose findings have these (status, declined) in order."""
    findings = [Finding(name, f"{name}.{i}", status, declined=why) for i, (status, why) in enumerate(rows)]
    return ControlReport(name, Mode.ENFORCE, findings, 0.001)


NOT_OURS = "not ours to edit: /etc/sysctl.d/99-x.conf wins at boot"
HOSTILE_CONTROL = 'fi"les\\\n} 1'
# name -> (controls, drifted items apply will not heal per control, manual checks per control)
NEEDS_HUMAN_TABLE: dict[str, tuple[tuple[ControlReport, ...], dict[str, int], dict[str, int]]] = {
    "none declined": (
        (
            _control("sysctl", (Status.OK, None), (Status.DRIFT, None)),  # a drift apply heals
            _control("sshd", (Status.HEALED, None)),
        ),
        {"sysctl": 0, "sshd": 0},
        {"sysctl": 0, "sshd": 0},
    ),
    "declined in two controls": (
        (
            # a waived or healed item keeps its `declined` but needs nobody
            _control(
                "sysctl",
                (Status.DRIFT, NOT_OURS),
                (Status.DRIFT, NOT_OURS),
                (Status.DRIFT, None),
                (Status.WAIVED, NOT_OURS),
                (Status.OK, None),
            ),
            _control("files", (Status.DRIFT, "verify-only"), (Status.FAILED, None)),
            _control("sshd", (Status.OK, None)),
        ),
        {"sysctl": 2, "files": 1, "sshd": 0},
        {"sysctl": 0, "files": 0, "sshd": 0},
    ),
    "manual items": (
        (
            _control("k3s_args", (Status.MANUAL, None), (Status.MANUAL, None), (Status.OK, None)),
            _control("files", (Status.MANUAL, None), (Status.DRIFT, "needs an operator")),
        ),
        {"k3s_args": 0, "files": 1},
        {"k3s_args": 2, "files": 1},
    ),
    "hostile control names": (
        (
            _control(HOSTILE_CONTROL, (Status.DRIFT, 'say "no"\n'), (Status.MANUAL, None)),
            _control("Grüße 🙂", (Status.DRIFT, "x"), (Status.DRIFT, "y"), (Status.MANUAL, None)),
        ),
        {HOSTILE_CONTROL: 1, "Grüße 🙂": 2},
        {HOSTILE_CONTROL: 1, "Grüße 🙂": 1},
    ),
}
