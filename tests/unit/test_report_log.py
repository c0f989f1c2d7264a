"""The status document, its renderings, exit codes and the journald fields."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from k3s_agent.daemon import Daemon
from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.host import Host
from k3s_agent.log import (
    MESSAGE_IDS,
    MESSAGE_LIMIT,
    JournaldRenderer,
    finding_fields,
    finding_message,
    one_line,
)
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, Policy
from k3s_agent.report import build_document, exit_code, render_table

POLICY = Policy("k3s-cis-server", Mode.ENFORCE, 60, 30, ContestSettings(), {}, (), ("profile:x",))


def document(*statuses: Status) -> dict[str, Any]:
    findings = [
        Finding("sysctl", f"k{i}", s, "1", "0", "msg", cis="4.2.6" if i == 0 else None)
        for i, s in enumerate(statuses)
    ]
    cycle = CycleReport(1, time.time(), 0.002, [ControlReport("sysctl", Mode.ENFORCE, findings, 0.001)])
    return build_document(cycle, POLICY)


@pytest.mark.parametrize(
    ("statuses", "verdict", "code"),
    [
        ((Status.OK, Status.HEALED, Status.ABSENT, Status.UNSUPPORTED), "compliant", 0),
        ((Status.OK, Status.DRIFT), "drift", 1),
        ((Status.OK, Status.WAIVED), "drift", 1),
        ((Status.CONTESTED,), "drift", 1),
        ((Status.PENDING,), "drift", 1),
        ((Status.DRIFT, Status.FAILED), "failed", 2),
    ],
)
def test_verdict_and_exit_code(statuses: tuple[Status, ...], verdict: str, code: int) -> None:
    doc = document(*statuses)
    assert doc["summary"]["verdict"] == verdict
    assert exit_code(doc) == code
    assert exit_code({}) == 3


def test_table_shows_problems_with_cis_and_values() -> None:
    text = render_table(document(Status.DRIFT, Status.OK))
    assert "verdict DRIFT" in text
    assert "DRIFT     k0" in text and "[4.2.6]" in text and "want=1 have=0" in text
    assert "k1" not in text  # ok items only with -v
    assert "k1" in render_table(document(Status.DRIFT, Status.OK), verbose=True)


def test_journald_event_carries_message_id_and_fields() -> None:
    sent: list[tuple[str, dict[str, str]]] = []
    renderer = JournaldRenderer(lambda message, **fields: sent.append((message, fields)))
    finding = Finding(
        "files", "/var/lib/rancher/k3s/server/token", Status.HEALED, "0600", "0644", cis="1.1.21"
    )
    event = {"event": "files token: healed", **finding_fields(finding)}
    with pytest.raises(structlog.DropEvent):
        renderer(None, "info", event)
    message, fields = sent[0]
    assert message == "files token: healed"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["healed"]
    assert fields["CONTROL"] == "files" and fields["ITEM"].endswith("/token")
    assert (fields["CIS_ID"], fields["EXPECTED"], fields["ACTUAL"]) == ("1.1.21", "0600", "0644")
    assert fields["PRIORITY"] == "6" and fields["SYSLOG_IDENTIFIER"] == "k3s-agentd"


def test_message_ids_are_unique_and_journald_shaped() -> None:
    ids = list(MESSAGE_IDS.values())
    assert len(ids) == len(set(ids))
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("plain", "plain"),
        ("two\nlines", "two\\nlines"),
        ("cr\r tab\t nul\x00 esc\x1b[31m del\x7f", "cr\\r tab\\t nul\\x00 esc\\x1b[31m del\\x7f"),
        ("c1\x85 ls\u2028 ps\u2029 rtl\u202e", "c1\\x85 ls\\u2028 ps\\u2029 rtl\\u202e"),
        ("ünïcode ok", "ünïcode ok"),
    ],
)
def test_one_line_escapes_control_characters(text: str, line: str) -> None:
    assert one_line(text) == line


def test_one_line_is_bounded() -> None:
    line = one_line("x" * 5000 + "\n", limit=100)
    assert line.startswith("x" * 100 + "... [cut, 5001 characters in all]")
    assert len(one_line("\n" * 5000)) < MESSAGE_LIMIT + 50  # escaping cannot grow it past the cap


def capture_log() -> tuple[Any, list[tuple[str, dict[str, str]]]]:
    """A logger whose journald renderer hands each entry to a list, not to journald."""
    sent: list[tuple[str, dict[str, str]]] = []
    renderer = JournaldRenderer(lambda message, **fields: sent.append((message, fields)))
    processors = [structlog.processors.add_log_level, renderer]
    return structlog.wrap_logger(structlog.PrintLogger(), processors=processors), sent


GOOD = 'extends = "none"\n[controls.sysctl.items."kernel.panic"]\nvalue = 10\n'


@pytest.mark.root  # policy files must be root-owned
def test_refused_policy_message_names_file_key_and_reason(root: Path) -> None:
    policy = root / "etc/k3s-agentd/policy.toml"
    policy.write_text(GOOD)
    log, sent = capture_log()
    daemon = Daemon(Host(root=str(root)), None, log)
    # a key with a newline in it: it must not forge a second journal line
    policy.write_text(GOOD + '[controls.sysctl.items."net.ipv4.x\\nFAKE: ok"]\nvalue = 0\n')
    daemon.reload()
    message, fields = sent[-1]
    assert message.startswith(f"policy refused (1 problem), keeping the one in force: {policy}: ")
    assert 'controls.sysctl.items."net.ipv4.x\\nFAKE: ok"' in message  # the key, escaped
    assert "is not a dotted sysctl name" in message  # the reason
    assert "\n" not in message
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["policy_refused"] and fields["PRIORITY"] == "3"
    # the structured field keeps the loader's text (which escapes data itself)
    assert "is not a dotted sysctl name" in fields["PROBLEMS"] and str(policy) in fields["PROBLEMS"]


@pytest.mark.parametrize(
    ("event", "finding", "message"),
    [
        (
            "failed",
            Finding("files", "/etc/x", Status.FAILED, message="heal did not stick (re-check: drift: 0644)"),
            "files /etc/x: failed: heal did not stick (re-check: drift: 0644)",
        ),
        (
            "healed",
            Finding("sysctl", "kernel.panic", Status.CONTESTED, message="healed (set); undone 3 time(s)"),
            "sysctl kernel.panic: healed (contested): healed (set); undone 3 time(s)",
        ),
        ("drift", Finding("sshd", "permitrootlogin", Status.DRIFT), "sshd permitrootlogin: drift"),
    ],
)
def test_finding_message_says_what_and_why(event: str, finding: Finding, message: str) -> None:
    assert finding_message(event, finding) == message
