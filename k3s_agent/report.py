"""The node-compliance document, and its renderings: table, JSON, Prometheus text
(kube-bench JSON and JUnit XML in report_kubebench.py / report_junit.py).

The JSON schema is versioned (SCHEMA, SCHEMA_VERSION) and documented in
docs/status-schema.md; fields are only ever added within a version.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

from k3s_agent import __version__
from k3s_agent.metrics import render_prometheus
from k3s_agent.model import BROKEN, COMPLIANT, Status

if TYPE_CHECKING:
    from k3s_agent.engine import CycleReport
    from k3s_agent.policy.model import Policy

SCHEMA = "k3s-agentd/node-compliance"
SCHEMA_VERSION = 1

__all__ = ["build_document", "exit_code", "render_prometheus", "render_table", "to_json"]

EXIT_COMPLIANT, EXIT_DRIFT, EXIT_FAILED, EXIT_UNKNOWN = 0, 1, 2, 3


def build_document(
    cycle: CycleReport, policy: Policy, daemon: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    findings = cycle.findings()
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "agent_version": __version__,
        "node": socket.gethostname(),
        "generated_at": _iso(cycle.started + cycle.duration),
        "policy": {
            "profile": policy.profile,
            "mode": policy.mode.value,
            "interval_seconds": policy.interval,
            "sources": list(policy.sources),
            # The benchmark in force (kube-bench's Controls.version) and why; the K3s
            # version it was picked for (kube-bench's detected_version).
            "benchmark": policy.benchmark.name,
            "benchmark_requested": policy.benchmark.requested,
            "benchmark_reason": policy.benchmark.reason,
            "k3s_version": policy.benchmark.k3s_version,
        },
        "cycle": {
            "number": cycle.number,
            "started_at": _iso(cycle.started),
            "duration_seconds": round(cycle.duration, 6),
        },
        "summary": summarize(findings),
        "controls": [
            {
                "name": c.name,
                "mode": c.mode.value,
                "duration_seconds": round(c.duration, 6),
                "error": c.error,
                "facts": c.facts,
                "summary": summarize(c.findings),
                "findings": [f.to_dict() for f in c.findings],
            }
            for c in cycle.controls
        ],
        "daemon": daemon or {},
        # active waivers (expired ones waive nothing): for the expiry metrics/alerts
        "waivers": [
            {"control": w.control, "key": w.key, "owner": w.owner, "expires": w.expires.isoformat()}
            for w in policy.waivers
            if w.active(datetime.date.today())
        ],
        # commit-confirmed state (k3s_agent/confirm.py): None, or what awaits
        # confirmation / was rolled back; filled in by whoever knows the record.
        "confirmation": None,
    }


def summarize(findings: list[Any]) -> dict[str, Any]:
    counts = Counter(f.status for f in findings)
    return {
        "verdict": verdict(counts),
        "items": len(findings),
        "by_status": {s.value: counts.get(s, 0) for s in Status},
    }


def verdict(counts: Counter) -> str:
    if any(counts.get(s) for s in BROKEN):
        return "failed"
    if any(n for s, n in counts.items() if s not in COMPLIANT):
        return "drift"
    return "compliant"


def exit_code(document: dict[str, Any]) -> int:
    """The verdict's code; at least 2 while the daemon refuses the policy on disk
    (it runs an older one, or the built-in profile in audit mode: not what was asked)."""
    code = {"compliant": EXIT_COMPLIANT, "drift": EXIT_DRIFT, "failed": EXIT_FAILED}.get(
        document.get("summary", {}).get("verdict"), EXIT_UNKNOWN
    )
    if (document.get("daemon") or {}).get("policy_error"):
        return max(code, EXIT_FAILED)
    return code


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


FORMATS = ("table", "json", "prometheus", "kube-bench-json", "junit")


def render(document: dict[str, Any], fmt: str, verbose: bool = False) -> str:
    """The document in one of FORMATS (docs/reports.md), always encodable as UTF-8:
    a file name that is not UTF-8 comes back from os as lone surrogates
    (surrogateescape), which would make printing the report raise."""
    return utf8(_render(document, fmt, verbose))


def utf8(text: str) -> str:
    """Lone surrogates as a visible backslash escape; everything else unchanged."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _render(document: dict[str, Any], fmt: str, verbose: bool) -> str:
    if fmt == "json":
        return to_json(document)
    if fmt == "prometheus":
        return render_prometheus(document)
    if fmt == "kube-bench-json":
        from k3s_agent import report_kubebench

        return report_kubebench.render(document)
    if fmt == "junit":
        from k3s_agent import report_junit

        return report_junit.render(document)
    return render_table(document, verbose)


# -- human table -------------------------------------------------------------------

_MARK = {
    "ok": "ok",
    "healed": "HEALED",
    "drift": "DRIFT",
    "failed": "FAILED",
    "waived": "waived",
    "contested": "CONTESTED",
    "pending": "PENDING",
    "absent": "absent",
    "unsupported": "n/a",
    "manual": "manual",
}


def render_table(document: dict[str, Any], verbose: bool = False) -> str:
    """Per control, per item: status, CIS id, desired vs observed. Only problems unless verbose."""
    out = []
    summary = document["summary"]
    head = f"node {document['node']}  profile {document['policy']['profile']}  "
    head += f"mode {document['policy']['mode']}  verdict {summary['verdict'].upper()}"
    out.append(head)
    if document["policy"].get("benchmark"):
        reason = document["policy"].get("benchmark_reason")
        out.append(f"benchmark {document['policy']['benchmark']}" + (f"  ({reason})" if reason else ""))
    counts = ", ".join(f"{n} {s}" for s, n in summary["by_status"].items() if n)
    out.append(f"{summary['items']} items: {counts}")
    out += _confirmation_lines(document.get("confirmation") or {})
    for control in document["controls"]:
        csum = control["summary"]
        facts = control.get("facts") or {}
        fact_text = "  ".join(f"{k}={v}" for k, v in facts.items() if v not in (None, "", []))
        out.append("")
        out.append(f"== {control['name']} ({control['mode']}) {csum['verdict']}  {fact_text}".rstrip())
        if control.get("error"):
            out.append(f"   error: {control['error']}")
        # ok and absent items only with -v: a node should read as its problems
        rows = [f for f in control["findings"] if verbose or f["status"] not in ("ok", "absent")]
        if not rows:
            absent = csum["by_status"].get("absent", 0)
            out.append(f"   all {csum['items'] - absent} items ok" + (f", {absent} absent" if absent else ""))
            continue
        width = min(max(len(f["key"]) for f in rows), 60)
        for f in rows:
            cis = f"[{f['cis']}]" if f.get("cis") else ""
            line = f"   {_MARK.get(f['status'], f['status']):9} {f['key']:<{width}} {cis:8}"
            if f["status"] not in ("ok", "absent") or verbose:
                line += f" want={_short(f['desired'])} have={_short(f['observed'])}"
            out.append(line.rstrip())
            if f.get("message") and f["status"] != "ok":
                out.append(f"             {f['message']}")
            if f.get("declined"):
                out.append(f"             needs you: {f['declined']}")
    daemon = document.get("daemon") or {}
    if daemon.get("policy_error"):
        running = daemon.get("policy_fallback") or "the policy loaded before"
        out += ["", f"POLICY REFUSED (running {running}):"]
        out += [f"  {line}" for line in str(daemon["policy_error"]).splitlines()]
    if daemon.get("note"):
        out.append("")
        out.append(daemon["note"])
    return "\n".join(out) + "\n"


def _confirmation_lines(confirmation: dict[str, Any]) -> list[str]:
    """`awaiting confirmation (rollback at ...)` or what was rolled back, per control."""
    if not confirmation.get("message"):
        return []
    lines = [f"!! {confirmation['message']}"]
    states = confirmation.get("controls") or {}
    for name, state in states.items():
        detail = state.get("rollback_at") or state.get("note") or ""
        lines.append(f"   {name}: {state.get('state')} {detail}".rstrip())
    if any(state.get("state") == "awaiting confirmation" for state in states.values()):
        lines.append(
            "   keep it: `k3s-agentctl confirm` from a NEW ssh session (proves you can still log in)"
        )
    return lines


def _short(value: Any) -> str:
    text = "-" if value is None else (value if isinstance(value, str) else json.dumps(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


def node_name() -> str:
    return os.uname().nodename
