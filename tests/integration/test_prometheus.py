"""The metrics, alert rules and dashboard against the real Prometheus tools.

promtool (Debian's `prometheus` package, scripts/apt-test.txt) checks the
exposition and unit-tests every shipped rule; the real node_exporter reads our
textfile and serves it back. None of these tests skip: a missing tool fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from k3s_agent.metrics import render_prometheus
from tests.support.promdoc import HOSTILE_KEYS, NEEDS_HUMAN_TABLE, TODAY, cycle_document, hostile_document

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging/prometheus/k3s-agentd.rules.yml"
RULE_TESTS = Path(__file__).parent / "prometheus/k3s-agentd.rules.test.yml"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def promtool(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: apt-get install prometheus (scripts/apt-test.txt)"
    return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_every_status_and_hostile_labels() -> None:
    text = render_prometheus(hostile_document(), TODAY)
    proc = promtool("check", "metrics", stdin=text)
    # rc 0 and no lint remark (naming, _total, HELP), not only "it parsed"
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc


@pytest.mark.parametrize("case", NEEDS_HUMAN_TABLE)
def test_promtool_accepts_the_needs_human_table(case: str) -> None:
    """Declined and manual items, hostile control names: the whole output lints clean."""
    text = render_prometheus(cycle_document(*NEEDS_HUMAN_TABLE[case][0]), TODAY)
    proc = promtool("check", "metrics", stdin=text)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc


def test_promtool_rejects_what_it_should() -> None:
    """The check above can fail: an unescaped quote and a counter without _total are caught."""
    assert promtool("check", "metrics", stdin='k3s_agentd_x{item="a"b"} 1\n').returncode != 0
    lint = promtool(
        "check",
        "metrics",
        stdin="# HELP k3s_agentd_heals h\n# TYPE k3s_agentd_heals counter\nk3s_agentd_heals 1\n",
    )
    assert lint.returncode != 0 and "_total" in lint.stdout + lint.stderr


def test_hostile_label_values_round_trip() -> None:
    """A Prometheus parser gives back every item name exactly."""
    families = {
        f.name: f for f in text_string_to_metric_families(render_prometheus(hostile_document(), TODAY))
    }
    items = {
        s.labels["item"] for s in families["k3s_agentd_item_status"].samples if s.labels["control"] == "files"
    }
    assert items == set(HOSTILE_KEYS)
    assert {s.labels["cis"] for s in families["k3s_agentd_item_status"].samples} == {"1.2.3", '4.1"\\'}
    assert 'fi"les\\\n' in {s.labels["control"] for s in families["k3s_agentd_heals"].samples}
    assert [s.value for s in families["k3s_agentd_verdict"].samples] == [2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def node_exporter(textfile_dir: Path) -> Iterator[str]:
    """Debian's node_exporter with only the textfile collector, on loopback; its /metrics URL."""
    assert Path(NODE_EXPORTER).exists(), "apt-get install prometheus-node-exporter (scripts/apt-test.txt)"
    port = _free_port()
    argv = [
        NODE_EXPORTER,
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=1).close()
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_node_exporter_serves_the_textfile(tmp_path: Path) -> None:
    """What node_exporter reads from our file comes out unchanged (labels and values)."""
    (tmp_path / "k3s_agentd.prom").write_text(render_prometheus(hostile_document(), TODAY))
    with node_exporter(tmp_path) as url:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["node_textfile_scrape_error"].samples] == [0]
    items = {s.labels["item"] for s in families["k3s_agentd_item_status"].samples}
    assert set(HOSTILE_KEYS) <= items
    info = families["k3s_agentd"].samples if "k3s_agentd" in families else families["k3s_agentd_info"].samples
    assert info[0].labels["firewall_backend"] == "nft"


def test_node_exporter_reports_a_broken_textfile(tmp_path: Path) -> None:
    """The check above can fail: node_exporter flags a file it cannot parse."""
    (tmp_path / "k3s_agentd.prom").write_text('k3s_agentd_x{item="a"b"} 1\n')
    with node_exporter(tmp_path) as url:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert re.search(r"^node_textfile_scrape_error 1$", text, re.M)


def test_rules_are_valid_and_every_rule_is_unit_tested() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    run = promtool("test", "rules", str(RULE_TESTS))
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    quiet = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if not a["exp_alerts"]}
    assert alerts == fired, "every rule must have a test where it fires"
    # and one where it must not (the waiver and rollback tests' second series stay quiet in the same eval)
    assert alerts - quiet <= {"K3sAgentdWaiverExpiring", "K3sAgentdRolledBack"}


def test_rules_only_use_exported_metrics() -> None:
    exported = exported_metric_names()
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bk3s_agentd_[a-z0-9_]+", expr)}
    assert used and used <= exported, used - exported


def exported_metric_names() -> set[str]:
    """Every sample name the renderer produces for the fullest document."""
    text = render_prometheus(hostile_document(), TODAY)
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


@pytest.mark.parametrize("rule_file", [RULES])
def test_promtool_test_fails_a_wrong_expectation(tmp_path: Path, rule_file: Path) -> None:
    """The rule tests can fail: the drift rule's test with the wrong instance is red."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rule_file)]
    tests["tests"] = tests["tests"][:1]
    tests["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["instance"] = "n2"
    broken = tmp_path / "broken.test.yml"
    broken.write_text(json.dumps(tests))
    assert promtool("test", "rules", str(broken)).returncode != 0


DASHBOARD = REPO / "packaging/prometheus/k3s-agentd.dashboard.json"


def dashboard_exprs() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {f"{p['title']}/{t['refId']}": t["expr"] for p in panels for t in p.get("targets", [])}


def test_dashboard_has_the_fleet_views() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Fleet", "Drifted or failed items over time", "Heals per control"} <= titles
    assert {"Need a human (apply will not heal)", "Manual checks to review"} <= titles
    fleet = next(p for p in dashboard["panels"] if p["title"] == "Fleet")
    refs = {t["refId"] for t in fleet["targets"]}
    assert refs >= {"verdict", "drifted", "needs_you", "manual", "last_heal"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_queries_are_promql_over_exported_metrics(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    exported = exported_metric_names()
    for where, expr in exprs.items():
        used = set(re.findall(r"\bk3s_agentd_[a-z0-9_]+", expr))
        assert used and used <= exported, (where, used - exported)
    # promtool parses every query (as a recording rule; Grafana's $__rate_interval made concrete)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(exprs.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    path.write_text(json.dumps(rules).replace("sum by", "sum by by", 1))
    assert promtool("check", "rules", str(path)).returncode != 0  # the check can fail
