"""k3s_agent/metrics.py: exact samples, escaping, the textfile's place, heal counts."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from k3s_agent.metrics import HealTally, _esc_label, render_prometheus, textfile_path
from k3s_agent.model import Status
from tests.support.promdoc import HOSTILE_KEYS, NEEDS_HUMAN_TABLE, TODAY, cycle_document, hostile_document

DEBIAN = "/var/lib/prometheus/node-exporter"
EL = "/var/lib/node_exporter/textfile_collector"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "dirs", "expected"),
    [
        ("auto", {DEBIAN}, f"{DEBIAN}/k3s_agentd.prom"),
        ("auto", {EL}, f"{EL}/k3s_agentd.prom"),
        ("auto", {DEBIAN, EL}, f"{DEBIAN}/k3s_agentd.prom"),  # Debian's first: both is odd, one file
        ("auto", set(), None),  # no node_exporter: nothing written, no folder made
        ("/srv/x/k.prom", set(), "/srv/x/k.prom"),  # an explicit path is used as given
        ("/srv/x/k.prom", {DEBIAN}, "/srv/x/k.prom"),
        (None, {DEBIAN}, None),  # textfile = "" (off)
        ("", {DEBIAN}, None),
    ],
)
def test_textfile_path(setting: Any, dirs: set[str], expected: Any) -> None:
    assert textfile_path(setting, lambda d: d in dirs) == expected


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ("\\n", "\\\\n"),  # a literal backslash-n is not a newline
        ("trailing\\", "trailing\\\\"),
        ("Grüße 🙂", "Grüße 🙂"),
        ("tab\t", "tab\t"),
    ],
)
def test_label_escaping(raw: str, escaped: str) -> None:
    assert _esc_label(raw) == escaped


EXPECTED_LINES = [
    'k3s_agentd_info{version="0.1.0",profile="k3s-cis-server",benchmark="k3s-cis-1.8",mode="enforce",'
    'firewall_backend="nft"} 1',
    'k3s_agentd_item_status{control="sysctl",item="k.drift",cis="1.2.3",status="drift"} 1',
    'k3s_agentd_item_status{control="files",item="line\\nbreak",cis="4.1\\"\\\\",status="drift"} 1',
    'k3s_agentd_findings{control="files",status="drift"} 7',
    'k3s_agentd_findings{control="firewall",status="ok"} 0',
    "k3s_agentd_contested_items 1",
    "k3s_agentd_k3s_restart_pending_items 1",
    'k3s_agentd_declined_items{control="files"} 2',
    'k3s_agentd_declined_items{control="sysctl"} 0',
    'k3s_agentd_declined_items{control="firewall"} 0',
    'k3s_agentd_findings{control="sysctl",status="manual"} 1',
    'k3s_agentd_item_status{control="sysctl",item="k.manual",cis="1.2.3",status="manual"} 1',
    'k3s_agentd_control_error{control="files"} 1',
    "k3s_agentd_verdict 2",
    "k3s_agentd_cycle_duration_seconds 0.25",
    "k3s_agentd_interval_seconds 60",
    "k3s_agentd_policy_refused 1",
    'k3s_agentd_heals_total{control="sysctl"} 4',
    "k3s_agentd_heal_failures_total 1",
    "k3s_agentd_policy_reload_failures_total 2",
    "k3s_agentd_waivers_expiring 1",
    'k3s_agentd_waiver_expiry_timestamp_seconds{control="files",item="net.ipv4.\\"quoted\\""} 1796342400.0',
    'k3s_agentd_confirmation_state{control="firewall",state="rolled_back"} 1',
    'k3s_agentd_confirmation_state{control="sshd",state="awaiting_confirmation"} 1',
    'k3s_agentd_confirmation_deadline_timestamp_seconds{control="sshd"} 1796032800.0',
]


@pytest.mark.parametrize("line", EXPECTED_LINES)
def test_sample(line: str) -> None:
    assert line in render_prometheus(hostile_document(), TODAY).splitlines()


def test_every_line_is_one_sample_and_families_are_declared_once() -> None:
    text = render_prometheus(hostile_document(), TODAY)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(types) == len({name for name, _ in types})
    for name, kind in types:
        assert name.startswith("k3s_agentd_")
        assert name.endswith("_total") == (kind == "counter")
    sample = re.compile(r'^k3s_agentd_[a-z0-9_]+(\{([a-z_]+="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+]+$')
    bad = [line for line in text.splitlines() if not line.startswith("# ") and not sample.match(line)]
    assert not bad
    # one sample per item: the per-item gauge never multiplies by the statuses
    assert text.count("k3s_agentd_item_status{") == len(Status) + len(HOSTILE_KEYS)


def test_a_key_reported_twice_is_one_series() -> None:
    document = hostile_document()
    files = next(c for c in document["controls"] if c["name"] == "files")
    files["findings"].append({**files["findings"][0], "status": "ok"})
    text = render_prometheus(document, TODAY)
    assert text.count('item="net.ipv4.\\"quoted\\""') == 2  # its item_status and its waiver, once each


def test_one_shot_document_leaves_out_daemon_families() -> None:
    document = hostile_document()
    document["daemon"], document["confirmation"], document["waivers"] = {}, None, []
    text = render_prometheus(document, TODAY)
    for absent in ("heals_total", "policy_refused", "heal_failures_total", "confirmation_deadline"):
        assert f"k3s_agentd_{absent}" not in text
    assert "k3s_agentd_waivers_expiring 0" in text.splitlines()


@pytest.mark.parametrize(("days", "soon"), [(0, 1), (1, 1), (14, 1), (15, 0), (400, 0)])
def test_waivers_expiring_within_14_days(days: int, soon: int) -> None:
    document = hostile_document()
    expires = (TODAY + datetime.timedelta(days=days)).isoformat()
    document["waivers"] = [{"control": "sysctl", "key": "k", "owner": "o", "expires": expires}]
    assert f"k3s_agentd_waivers_expiring {soon}" in render_prometheus(document, TODAY).splitlines()


def test_heal_tally_counts_heals_and_contested_heals_only() -> None:
    def doc(at: str, *findings: tuple[str, str]) -> dict[str, Any]:
        rows = [{"status": s, "message": m} for s, m in findings]
        return {
            "generated_at": at,
            "controls": [{"name": "sysctl", "findings": rows}, {"name": "sshd", "findings": []}],
        }

    tally = HealTally()
    first = tally.record(
        doc("2026-11-30T00:00:00+00:00", ("healed", "set"), ("contested", "healed (set); 3 undos"))
    )
    assert first["heals_by_control"] == {"sysctl": 2, "sshd": 0}
    healed_at = first["last_heal_at"]
    assert healed_at == datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc).timestamp()
    later = tally.record(
        doc("2026-11-30T01:00:00+00:00", ("contested", "ok now; 3 undos"), ("drift", "x"), ("ok", ""))
    )
    assert later == {"heals_by_control": {"sysctl": 2, "sshd": 0}, "last_heal_at": healed_at}


def _samples(text: str, family: str) -> dict[str, dict[str, float]]:
    """{sample name: {control: value}} of one family, read back by Prometheus's own parser."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    out: dict[str, dict[str, float]] = {}
    for sample in families[family].samples:
        out.setdefault(sample.labels.get("status", ""), {})[sample.labels["control"]] = sample.value
    return out


@pytest.mark.parametrize("case", NEEDS_HUMAN_TABLE)
def test_needs_human_and_manual_per_control(case: str) -> None:
    controls, declined, manual = NEEDS_HUMAN_TABLE[case]
    text = render_prometheus(cycle_document(*controls), TODAY)
    # every control has its sample, zeros too (a `for:` over it holds while nothing changes)
    assert _samples(text, "k3s_agentd_declined_items") == {"": declined}
    assert _samples(text, "k3s_agentd_findings")["manual"] == manual
    families = {f.name: f for f in text_string_to_metric_families(text)}
    item_status = families["k3s_agentd_item_status"].samples
    per_item = Counter(s.labels["control"] for s in item_status if s.labels["status"] == "manual")
    assert per_item == {c: n for c, n in manual.items() if n}


def test_needs_human_hostile_control_is_escaped() -> None:
    controls, _, _ = NEEDS_HUMAN_TABLE["hostile control names"]
    lines = render_prometheus(cycle_document(*controls), TODAY).splitlines()
    assert 'k3s_agentd_declined_items{control="fi\\"les\\\\\\n} 1"} 1' in lines
    assert 'k3s_agentd_declined_items{control="Grüße 🙂"} 2' in lines


def test_a_status_file_without_declined_counts_none() -> None:
    """A status file of an agent from before `declined` renders with zeros."""
    document = hostile_document()
    for control in document["controls"]:
        for finding in control["findings"]:
            finding.pop("declined")
    assert 'k3s_agentd_declined_items{control="files"} 0' in render_prometheus(document, TODAY).splitlines()


@pytest.mark.parametrize("fmt", [("--format", "prometheus"), ("--prometheus",)])
def test_status_shows_the_same_metrics_as_the_textfile(root: Path, fmt: tuple[str, ...]) -> None:
    """`k3s-agentctl status` renders the last status file with the textfile's renderer."""
    document = cycle_document(*NEEDS_HUMAN_TABLE["declined in two controls"][0])
    (root / "run/k3s-agentd/status.json").write_text(json.dumps(document))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "k3s_agent.cli", "status", "--root", str(root), *fmt]
    shown = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert 'k3s_agentd_declined_items{control="sysctl"} 2' in shown.stdout.splitlines(), shown.stderr
    assert shown.stdout == render_prometheus(document)


def test_docs_list_every_family_and_alert() -> None:
    """docs/metrics.md stays true: each exported family and each shipped alert has its row."""
    doc = (REPO / "docs/metrics.md").read_text()
    families = set(re.findall(r"^# TYPE (\S+) ", render_prometheus(hostile_document(), TODAY), re.M))
    rows = set(re.findall(r"^\| `(k3s_agentd_[a-z0-9_]+)` \|", doc, re.M))
    assert families and families == rows  # the fullest document has every family
    rules = (REPO / "packaging/prometheus/k3s-agentd.rules.yml").read_text()
    alerts = set(re.findall(r"^\s+- alert: (\S+)$", rules, re.M))
    assert alerts and alerts == set(re.findall(r"^\| `(K3sAgentd[A-Za-z0-9]+)` \|", doc, re.M))
