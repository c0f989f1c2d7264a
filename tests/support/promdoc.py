"""A node-compliance document with every status, every optional section and
hostile label values, for the metrics tests (unit and promtool)."""

from __future__ import annotations

import datetime
import time
from typing import Any

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
    """Every status in sysctl, hostile keys in files, a firewall with a backend,
    daemon counters, waivers (one soon, one later) and a confirmation section."""
    sysctl = [Finding("sysctl", f"k.{s.value}", s, "1", "0", "m", cis="1.2.3") for s in Status]
    files = [
        Finding("files", key, Status.DRIFT, "0600", "0644", 'say "no"\\', cis='4.1"\\')
        for key in HOSTILE_KEYS
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
