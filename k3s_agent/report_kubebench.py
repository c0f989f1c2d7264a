"""The node-compliance document as the JSON `kube-bench --json` writes.

The shape follows kube-bench's Go structs and their json tags
(github.com/aquasecurity/kube-bench):
- check/controls.go: `OverallControls{Controls []*Controls; Totals Summary}` (no
  json tags, so the keys are "Controls" and "Totals"); `Controls{id, version,
  detected_version (omitempty, later releases), text, node_type, tests[]}` with
  the embedded `Summary{total_pass, total_fail, total_warn, total_info}` flattened
  into it; `Group{section, type, pass, fail, warn, info, desc, results[]}`.
- check/check.go: `Check{test_number, test_desc, audit, AuditEnv, AuditConfig,
  type, remediation, test_info, status, actual_value, scored, IsMultiple,
  expected_result, reason (omitempty)}`; AuditEnv, AuditConfig and IsMultiple
  carry only yaml tags, so Go's encoder writes them under their field names.
  RunChecks appends the remediation to test_info, so it is never null.
Statuses are kube-bench's PASS / FAIL / WARN / INFO; the mapping from ours is
STATE below and docs/reports.md.

Only findings that carry a CIS id are checks here (kube-bench's readers key on
test_number as a benchmark id); a finding naming several ids ("1.2.6/1.2.7")
counts for each, and several findings of one id make one check with the worst
state. Hardening beyond the benchmark is in the JUnit and JSON reports.

A check the benchmark in force lists (k3s_agent/policy/cis_catalog.py) gets its
title as test_desc, with kube-bench's "(Automated)"/"(Manual)", and its scoring:
a manual (unscored) check that fails is WARN, as kube-bench's check.go has it
("if finalOutput.TestResult ... PASS, else if c.Scored FAIL, else WARN").
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from k3s_agent.policy import cis_catalog

# Benchmark in force when the document names none: the built-in profiles
# reference K3s's CIS 1.8 self-assessment guide (kube-bench's cfg/k3s-cis-1.8).
DEFAULT_BENCHMARK = "k3s-cis-1.8"

PASS, FAIL, WARN, INFO = "PASS", "FAIL", "WARN", "INFO"

# Our finding status -> kube-bench state (documented in docs/reports.md).
STATE = {
    "ok": PASS,
    "healed": PASS,  # was drift, fixed and re-checked in this cycle
    "absent": PASS,  # like kube-bench's "if the file exists ..." checks
    "drift": FAIL,
    "failed": FAIL,
    "contested": FAIL,  # something on the host keeps undoing it
    "pending": FAIL,  # written, not running until K3s restarts
    "waived": WARN,  # accepted risk, never a pass
    "manual": WARN,  # kube-bench: "Test marked as a manual test"
    "unsupported": INFO,  # cannot apply on this host: not applicable here
}
# A state we do not know (a newer agent's status) must not read as a pass.
UNKNOWN_STATE = WARN
# Several findings for one id: the check takes the worst.
_RANK = {FAIL: 3, WARN: 2, PASS: 1, INFO: 0}

# kube-bench's k3s-cis-* controls files: id -> (text, node_type).
CONTROLS = {
    "1": ("Control Plane Security Configuration", "master"),
    "2": ("Etcd Node Configuration", "etcd"),
    "3": ("Control Plane Configuration", "controlplane"),
    "4": ("Worker Node Security Configuration", "node"),
    "5": ("Kubernetes Policies", "policies"),
}
GROUPS = {
    "1.1": "Control Plane Node Configuration Files",
    "1.2": "API Server",
    "1.3": "Controller Manager",
    "1.4": "Scheduler",
    "2": "Etcd Node Configuration",
    "3.1": "Authentication and Authorization",
    "3.2": "Logging",
    "4.1": "Worker Node Configuration Files",
    "4.2": "Kubelet",
    "4.3": "kube-proxy",
    "5.1": "RBAC and Service Accounts",
    "5.2": "Pod Security Standards",
    "5.3": "Network Policies and CNI",
    "5.4": "Secrets Management",
    "5.5": "Extensible Admission Control",
    "5.7": "General Policies",
}

_CIS_ID = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){1,4}$")
_LIST_LIMIT = 20  # items named in one check's actual_value / expected_result


def cis_ids(value: Optional[str]) -> list[str]:
    """The benchmark ids a finding's `cis` names ("1.2.6/1.2.7/1.2.8"); none unless
    every part is an id (free text that mentions a number is no benchmark check)."""
    parts = [p for p in re.split(r"[/,\s]+", value or "") if p]
    return parts if parts and all(_CIS_ID.match(p) for p in parts) else []


def section_of(cis: str) -> str:
    """Its group: 1.2.9 -> 1.2; etcd's 2.1 -> 2 (kube-bench has one group there)."""
    parts = cis.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 else parts[0]


def benchmark(document: dict[str, Any]) -> str:
    """The benchmark the document says is in force, else the profiles' (DEFAULT_BENCHMARK)."""
    policy = document.get("policy") or {}
    for value in (policy.get("benchmark"), document.get("benchmark")):
        if isinstance(value, str) and value and value != "auto":
            return value
    return DEFAULT_BENCHMARK


def k3s_version(document: dict[str, Any]) -> Optional[str]:
    """The K3s version, when the document knows it (a top-level, policy or control fact)."""
    candidates = [document.get("k3s_version"), (document.get("policy") or {}).get("k3s_version")]
    for control in document.get("controls") or []:
        facts = control.get("facts") or {}
        candidates.append(facts.get("k3s_version"))
        if control.get("name") == "k3s_args":
            candidates.append(facts.get("version"))
    return next((v for v in candidates if isinstance(v, str) and v), None)


def build(document: dict[str, Any]) -> dict[str, Any]:
    """The kube-bench document: {"Controls": [...], "Totals": {...}}."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for control in document.get("controls") or []:
        for finding in control.get("findings") or []:
            for cis in cis_ids(finding.get("cis")):
                by_id.setdefault(cis, []).append(finding)
    version, detected = benchmark(document), k3s_version(document)
    known = cis_catalog.by_id(version) if version in cis_catalog.VERSIONS else {}
    controls: dict[str, dict[str, Any]] = {}
    for cis in sorted(by_id, key=_order):
        top = cis.split(".")[0]
        if top not in controls:
            controls[top] = _controls(top, version, detected)
        groups = controls[top]["tests"]
        section = section_of(cis)
        if not groups or groups[-1]["section"] != section:
            groups.append(_group(section))
        _add(controls[top], groups[-1], _check(cis, by_id[cis], known.get(cis)))
    totals = {key: sum(c[key] for c in controls.values()) for key in _TOTALS}
    return {"Controls": list(controls.values()), "Totals": totals}


def render(document: dict[str, Any]) -> str:
    return json.dumps(build(document), indent=2) + "\n"


_TOTALS = ("total_pass", "total_fail", "total_warn", "total_info")


def _order(cis: str) -> tuple[int, ...]:
    return tuple(int(p) for p in cis.split("."))


def _controls(top: str, version: str, detected: Optional[str]) -> dict[str, Any]:
    text, node_type = CONTROLS.get(top, (f"CIS section {top}", "node"))
    out: dict[str, Any] = {"id": top, "version": version}
    if detected:
        out["detected_version"] = detected
    out.update(text=text, node_type=node_type, tests=[])
    out.update(dict.fromkeys(_TOTALS, 0))
    return out


def _group(section: str) -> dict[str, Any]:
    return {
        "section": section,
        "type": "",
        "pass": 0,
        "fail": 0,
        "warn": 0,
        "info": 0,
        "desc": GROUPS.get(section, f"CIS {section}"),
        "results": [],
    }


def _add(controls: dict[str, Any], group: dict[str, Any], check: dict[str, Any]) -> None:
    state = check["status"].lower()
    group["results"].append(check)
    group[state] += 1
    controls[f"total_{state}"] += 1


def _check(
    cis: str, findings: list[dict[str, Any]], listed: Optional[cis_catalog.Check] = None
) -> dict[str, Any]:
    states = [STATE.get(str(f.get("status")), UNKNOWN_STATE) for f in findings]
    state = max(states, key=_RANK.__getitem__)
    worst = [f for f, s in zip(findings, states) if s == state]
    unscored = listed is not None and not listed.automated
    if unscored and state == FAIL:
        state = WARN  # kube-bench: a failing check that is not scored warns
    controls = sorted({str(f.get("control")) for f in findings})
    remediation = _remediation(state, worst)
    ours = f"k3s-agentd {', '.join(controls)}: {_names(findings)}"
    kind = "Automated" if listed is not None and listed.automated else "Manual"
    check: dict[str, Any] = {
        "test_number": cis,
        "test_desc": f"{listed.title} ({kind}) [{ours}]" if listed is not None else ours,
        "audit": " ".join(f"k3s-agentctl check --control {c}" for c in controls),
        "AuditEnv": "",
        "AuditConfig": "",
        "type": "manual" if any(f.get("status") == "manual" for f in worst) else "",
        "remediation": remediation,
        "test_info": [remediation],
        "status": state,
        "actual_value": _listing(findings, "observed"),
        "scored": state != INFO and not unscored and not any(f.get("status") == "manual" for f in findings),
        "IsMultiple": len(findings) > 1,
        "expected_result": _listing(findings, "desired"),
    }
    # each finding's message, with why apply leaves it when it does (`declined`)
    said = {"; ".join(str(f[k]) for k in ("message", "declined") if f.get(k)) for f in worst}
    reason = "; ".join(sorted(said - {""}))
    if reason and state != PASS:
        check["reason"] = reason  # omitempty in kube-bench
    return check


def _remediation(state: str, worst: list[dict[str, Any]]) -> str:
    if state == PASS:
        return "None: compliant."
    names = _names(worst)
    if state == FAIL:
        return (
            f"{names}: `k3s-agentctl diff` shows the change; `k3s-agentctl apply` (or the daemon "
            "in enforce mode) heals it; pending K3s arguments need a K3s restart."
        )
    return f"{names}: review; a waiver, manual or not-applicable check is not a pass."


def _names(findings: list[dict[str, Any]]) -> str:
    keys = [str(f.get("key")) for f in findings]
    more = f" and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


def _listing(findings: list[dict[str, Any]], field: str) -> str:
    """ "value" for one finding; "key=value; ..." (bounded) for several."""
    if len(findings) == 1:
        return _text(findings[0].get(field))
    rows = [f"{f.get('key')}={_text(f.get(field))}" for f in findings[:_LIST_LIMIT]]
    if len(findings) > _LIST_LIMIT:
        rows.append(f"... and {len(findings) - _LIST_LIMIT} more")
    return "; ".join(rows)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
