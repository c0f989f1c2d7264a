"""The node-compliance document as JUnit XML, for CI test views.

The shape is the common one CI tools read (Ant's junit task, Jenkins'
junit-10.xsd): <testsuites> of <testsuite name tests failures errors skipped
time timestamp hostname>, each of <testcase classname name time> with at most
one <failure message type>, <error message type> or <skipped message>.
One testsuite per control, one testcase per finding (all findings, CIS id or
not): classname = the control, name = "<cis> <key>" (the key alone without one).
The mapping of statuses is RESULT below and docs/reports.md.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

# Our finding status -> JUnit outcome; a failed item of a control that raised
# (the control's `error`) is an <error>, not a <failure>.
RESULT = {
    "ok": "pass",
    "healed": "pass",
    "absent": "pass",
    "drift": "failure",
    "failed": "failure",
    "contested": "failure",
    "pending": "failure",
    "waived": "skipped",
    "manual": "skipped",
    "unsupported": "skipped",
}
UNKNOWN_RESULT = "failure"  # a status this agent does not know must not pass

# Characters XML 1.0 does not allow at all, escaped or not (its Char production):
# C0 controls but tab/LF/CR, lone surrogates, U+FFFE/U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MESSAGE_LIMIT = 4096


def clean(text: Any) -> str:
    """Text XML 1.0 can carry: forbidden characters become a visible \\xNN / \\uNNNN."""
    value = "" if text is None else str(text)
    return _NOT_XML.sub(lambda m: _visible(m.group()), value)


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def render(document: dict[str, Any]) -> str:
    root = ET.Element("testsuites", name=clean(f"k3s-agentd {_policy(document)}"))
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for control in document.get("controls") or []:
        suite = _suite(document, control)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", _seconds((document.get("cycle") or {}).get("duration_seconds")))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _policy(document: dict[str, Any]) -> str:
    return str((document.get("policy") or {}).get("profile") or "")


def _suite(document: dict[str, Any], control: dict[str, Any]) -> ET.Element:
    name = clean(control.get("name"))
    suite = ET.Element("testsuite", name=name)
    counts = dict.fromkeys(("failure", "error", "skipped"), 0)
    findings = control.get("findings") or []
    for finding in findings:
        outcome = _outcome(control, finding)
        if outcome != "pass":
            counts[outcome] += 1
        suite.append(_case(name, finding, outcome))
    suite.set("tests", str(len(findings)))
    suite.set("failures", str(counts["failure"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", _seconds(control.get("duration_seconds")))
    suite.set("timestamp", _timestamp(document))
    suite.set("hostname", clean(document.get("node") or "localhost") or "localhost")
    return suite


def _outcome(control: dict[str, Any], finding: dict[str, Any]) -> str:
    outcome = RESULT.get(str(finding.get("status")), UNKNOWN_RESULT)
    if outcome == "failure" and finding.get("status") == "failed" and control.get("error"):
        return "error"
    return outcome


def _case(classname: str, finding: dict[str, Any], outcome: str) -> ET.Element:
    cis = finding.get("cis")
    name = f"{cis} {finding.get('key')}" if cis else str(finding.get("key"))
    case = ET.Element("testcase", classname=classname, name=clean(name), time="0")
    if outcome == "pass":
        return case
    status = str(finding.get("status"))
    # with why apply leaves it, when it does (`declined`)
    said = "; ".join(str(finding[k]) for k in ("message", "declined") if finding.get(k))
    message = clean(_bounded(said or status))
    if outcome == "skipped":
        # a waiver's message names its owner and expiry ("waived by ... until ...")
        ET.SubElement(case, "skipped", message=f"{status}: {message}")
        return case
    detail = ET.SubElement(case, outcome, message=message, type=status)
    want, have = _bounded(finding.get("desired")), _bounded(finding.get("observed"))
    detail.text = clean(f"want: {want}\nhave: {have}")
    return case


def _bounded(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "... [cut]"


def _seconds(value: Any) -> str:
    try:
        return f"{max(float(value), 0.0):.6f}"
    except (TypeError, ValueError):
        return "0"


def _timestamp(document: dict[str, Any]) -> str:
    """ISO 8601 without a zone, as junit-10.xsd's xs:dateTime pattern wants (UTC)."""
    stamp = str(document.get("generated_at") or "1970-01-01T00:00:00")
    return re.sub(r"(\+00:00|Z)$", "", stamp)[:19]
