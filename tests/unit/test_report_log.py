"""The status document, its renderings, exit codes and the journald fields."""

from __future__ import annotations

import time
from typing import Any

import pytest
import structlog

from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.log import MESSAGE_IDS, JournaldRenderer, finding_fields
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, Policy
from k3s_agent.report import build_document, exit_code, render_prometheus, render_table

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


def test_prometheus_text_is_well_formed() -> None:
    text = render_prometheus(document(Status.DRIFT, Status.OK))
    assert 'k3s_agentd_items{control="sysctl",status="drift"} 1' in text
    assert 'k3s_agentd_item_compliant{control="sysctl",item="k0",status="drift",cis="4.2.6"} 0' in text
    assert "k3s_agentd_verdict 1" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.count(" ") == 1 or "{" in line


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
