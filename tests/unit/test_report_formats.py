"""kube-bench JSON and JUnit XML reports: kube-bench's field names and types, a
JUnit schema, hostile names, and the CLI end to end on a temp root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import pytest

from k3s_agent import report_junit, report_kubebench
from k3s_agent.cli import main
from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ContestSettings, Policy
from k3s_agent.report import build_document, exit_code, render, render_prometheus

DATA = Path(__file__).resolve().parent.parent / "data" / "reports"
REPO = Path(__file__).resolve().parents[2]
POLICY = Policy("k3s-cis-server", Mode.ENFORCE, 60, 30, ContestSettings(), {}, (), ("profile:x",))
HOSTILE = "evil\x00\x01\x1b[31m<b>&amp;\"'\ud800\ufffe\n]]>"
WAIVER = "waived by alice@example.com until 2027-01-31: vendor agent needs it"


def findings(control: str = "files") -> list[Finding]:
    """One finding per status, plus a multi-id, a repeated id, a non-CIS and a hostile one."""
    cis = {
        Status.OK: "1.1.9",
        Status.DRIFT: "1.2.16",
        Status.HEALED: "4.2.6",
        Status.FAILED: "1.3.2",
        Status.UNSUPPORTED: "4.2.12",
        Status.ABSENT: "1.1.11",
        Status.WAIVED: "4.2.4",
        Status.CONTESTED: "1.4.1",
        Status.PENDING: "2.1",
        Status.MANUAL: "1.2.11",
    }
    out = [
        Finding(
            control, f"item-{s.value}", s, "0600", "0644", WAIVER if s is Status.WAIVED else f"m {s}", cis[s]
        )
        for s in Status
    ]
    out += [
        Finding(
            control, "authz", Status.DRIFT, ["Node", "RBAC"], ["AlwaysAllow"], "bad", "1.2.6/1.2.7/1.2.8"
        ),
        Finding(control, "second-1.1.9", Status.OK, "0600", "0600", "", "1.1.9"),
        Finding(control, "no-cis", Status.DRIFT, "1", "0", "not in the benchmark"),
        Finding(control, HOSTILE, Status.DRIFT, HOSTILE, {"x": HOSTILE}, HOSTILE, "4.2.1"),
        Finding(control, "not-an-id", Status.OK, cis="see sshd CIS"),
    ]
    return out


def document(error: Optional[str] = None) -> dict[str, Any]:
    controls = [
        ControlReport("files", Mode.ENFORCE, findings(), 0.004),
        ControlReport(
            "k3s_args",
            Mode.AUDIT,
            [
                Finding(
                    "k3s_args",
                    "kube-apiserver:profiling",
                    Status.FAILED,
                    message=error or "boom",
                    cis="1.2.16",
                )
            ],
            0.001,
            error,
            {"version": "v1.30.4+k3s1"},
        ),
        ControlReport(HOSTILE, Mode.ENFORCE, [Finding(HOSTILE, "k", Status.OK)], 0.0),
    ]
    return build_document(CycleReport(7, time.time(), 0.01, controls), POLICY)


# -- kube-bench JSON ------------------------------------------------------------------

# Keys present only when set (`omitempty` in kube-bench's json tags).
OPTIONAL = {"reason", "detected_version"}


def shape(value: Any) -> Any:
    """Key sets and JSON types, recursively; list items merged into one shape."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k not in OPTIONAL}
    if isinstance(value, list):
        merged: dict[str, Any] = {}
        kinds = set()
        for item in value:
            s = shape(item)
            if isinstance(s, dict):
                merged.update(s)
            else:
                kinds.add(s)
        return [merged] if merged else sorted(kinds)
    return type(value).__name__


def test_kube_bench_json_has_kube_benchs_field_names_and_types() -> None:
    sample = json.loads((DATA / "kube-bench-sample.json").read_text())
    ours = json.loads(render(document(), "kube-bench-json"))
    assert shape(ours) == shape(sample)
    # the optional keys, where present, have kube-bench's types too
    checks = [c for ctl in ours["Controls"] for g in ctl["tests"] for c in g["results"]]
    assert all(isinstance(c["reason"], str) and c["reason"] for c in checks if "reason" in c)
    assert all(isinstance(c.get("detected_version", ""), str) for c in ours["Controls"])
    # exactly these keys, optional ones aside: nothing of ours leaks in
    sample_check = sample["Controls"][0]["tests"][0]["results"][0]
    assert all(set(c) - OPTIONAL == set(sample_check) - OPTIONAL for c in checks)


def test_kube_bench_json_totals_are_consistent() -> None:
    out = report_kubebench.build(document())
    grand = dict.fromkeys(("total_pass", "total_fail", "total_warn", "total_info"), 0)
    for ctl in out["Controls"]:
        per = dict.fromkeys(("pass", "fail", "warn", "info"), 0)
        for group in ctl["tests"]:
            states = [c["status"].lower() for c in group["results"]]
            assert {k: states.count(k) for k in per} == {k: group[k] for k in per}
            for k in per:
                per[k] += group[k]
        assert {f"total_{k}": v for k, v in per.items()} == {k: ctl[k] for k in grand}
        for k in grand:
            grand[k] += ctl[k]
    assert out["Totals"] == grand


def by_number(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["test_number"]: c for ctl in out["Controls"] for g in ctl["tests"] for c in g["results"]}


@pytest.mark.parametrize(
    ("cis", "state"),
    [
        ("1.1.9", "PASS"),  # ok (twice: one check)
        ("4.2.6", "PASS"),  # healed
        ("1.1.11", "PASS"),  # absent
        ("1.2.16", "FAIL"),  # drift (and a failed k3s_args item)
        ("1.3.2", "FAIL"),  # failed
        ("1.4.1", "FAIL"),  # contested
        ("2.1", "FAIL"),  # pending
        ("4.2.4", "WARN"),  # waived
        ("4.2.12", "INFO"),  # unsupported
        ("1.2.11", "WARN"),  # manual: reported, never required (kube-bench: manual checks WARN)
        ("1.2.7", "FAIL"),  # one of a finding's several ids
        ("4.2.1", "FAIL"),  # hostile names
    ],
)
def test_kube_bench_status_table(cis: str, state: str) -> None:
    check = by_number(report_kubebench.build(document()))[cis]
    assert check["status"] == state
    assert ("reason" in check) == (state != "PASS")
    assert check["test_info"] == [check["remediation"]]


def test_kube_bench_grouping_ids_versions() -> None:
    out = report_kubebench.build(document())
    assert [c["id"] for c in out["Controls"]] == ["1", "2", "4"]
    master, etcd, node = out["Controls"]
    assert (master["text"], master["node_type"]) == ("Control Plane Security Configuration", "master")
    assert (node["text"], node["node_type"]) == ("Worker Node Security Configuration", "node")
    assert [g["section"] for g in master["tests"]] == ["1.1", "1.2", "1.3", "1.4"]
    assert [g["desc"] for g in master["tests"]][:2] == [
        "Control Plane Node Configuration Files",
        "API Server",
    ]
    assert [g["section"] for g in etcd["tests"]] == ["2"]
    assert [c["test_number"] for c in master["tests"][0]["results"]] == ["1.1.9", "1.1.11"]
    ids = ["1.2.6", "1.2.7", "1.2.8", "1.2.11", "1.2.16"]
    assert [c["test_number"] for c in master["tests"][1]["results"]] == ids
    assert {c["version"] for c in out["Controls"]} == {"k3s-cis-1.8"}  # no benchmark in the document
    assert {c["detected_version"] for c in out["Controls"]} == {"v1.30.4+k3s1"}
    numbers = by_number(out)
    assert numbers["1.1.9"]["IsMultiple"] and not numbers["1.3.2"]["IsMultiple"]
    assert "no-cis" not in json.dumps(out) and "not-an-id" not in json.dumps(out)
    assert numbers["4.2.4"]["reason"] == WAIVER


def test_kube_bench_names_the_benchmark_in_force_and_omits_an_unknown_version() -> None:
    doc = document()
    doc["policy"]["benchmark"] = "k3s-cis-1.10"
    doc["controls"][1]["facts"] = {}
    out = report_kubebench.build(doc)
    assert {c["version"] for c in out["Controls"]} == {"k3s-cis-1.10"}
    assert all("detected_version" not in c for c in out["Controls"])
    assert report_kubebench.build({"controls": []}) == {
        "Controls": [],
        "Totals": {"total_pass": 0, "total_fail": 0, "total_warn": 0, "total_info": 0},
    }


@pytest.mark.parametrize(
    ("cis", "ids"),
    [
        ("1.2.6/1.2.7/1.2.8", ["1.2.6", "1.2.7", "1.2.8"]),
        ("4.1.7, 4.1.8", ["4.1.7", "4.1.8"]),
        ("2.1", ["2.1"]),
        ("see sshd CIS 5.2.8", []),
        ("1", []),
        ("1.2.x", []),
        (None, []),
        ("", []),
    ],
)
def test_cis_ids(cis: Optional[str], ids: list[str]) -> None:
    assert report_kubebench.cis_ids(cis) == ids


# -- JUnit XML --------------------------------------------------------------------------


def test_junit_structure_and_statuses() -> None:
    root = ET.fromstring(render(document("control crashed"), "junit").encode())
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    files = suites["files"]
    cases = {c.get("name"): c for c in files.findall("testcase")}
    assert len(cases) == int(files.get("tests")) == len(findings())
    assert {c.get("classname") for c in cases.values()} == {"files"}

    def outcome(name: str) -> str:
        child = list(cases[name])
        return child[0].tag if child else "pass"

    expected = {
        "1.1.9 item-ok": "pass",
        "4.2.6 item-healed": "pass",
        "1.1.11 item-absent": "pass",
        "1.2.16 item-drift": "failure",
        "1.3.2 item-failed": "failure",
        "1.4.1 item-contested": "failure",
        "2.1 item-pending": "failure",
        "4.2.4 item-waived": "skipped",
        "4.2.12 item-unsupported": "skipped",
        "no-cis": "failure",
    }
    assert {name: outcome(name) for name in expected} == expected
    assert cases["1.2.16 item-drift"].find("failure").get("message") == "m drift"
    assert cases["1.2.16 item-drift"].find("failure").text == "want: 0600\nhave: 0644"
    skipped = cases["4.2.4 item-waived"].find("skipped").get("message")
    assert "alice@example.com" in skipped and "2027-01-31" in skipped
    assert (files.get("failures"), files.get("errors"), files.get("skipped")) == ("7", "0", "3")
    # the failed items of a control that raised are errors
    k3s = suites["k3s_args"]
    assert (k3s.get("failures"), k3s.get("errors")) == ("0", "1")
    assert k3s.find("testcase/error").get("message") == "control crashed"
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites.values())
    assert files.get("hostname") and files.get("timestamp")


def test_junit_escapes_hostile_names() -> None:
    text = render(document(), "junit")
    root = ET.fromstring(text.encode())  # parses: nothing XML 1.0 forbids got through
    names = [c.get("name") for c in root.iter("testcase")]
    hostile = next(n for n in names if "evil" in n)
    assert hostile == "4.2.1 " + report_junit.clean(HOSTILE)
    assert "<b>&amp;\"'" in hostile and "\\x00" in hostile and "\\ud800" in hostile and "\n]]>" in hostile
    assert not any(ch in text for ch in "\x00\x01\x1b\ufffe")
    suite_names = [s.get("name") for s in root.findall("testsuite")]
    assert report_junit.clean(HOSTILE) in suite_names


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("tab\tlf\ncr\r", "tab\tlf\ncr\r"),
        ("nul\x00 bel\x07 esc\x1b vt\x0b ff\x0c", "nul\\x00 bel\\x07 esc\\x1b vt\\x0b ff\\x0c"),
        ("sur\udfff fffe\ufffe ffff\uffff", "sur\\udfff fffe\\ufffe ffff\\uffff"),
        ("ünï \u2028 \U0001f600", "ünï \u2028 \U0001f600"),
        (None, ""),
    ],
)
def test_junit_clean(raw: Optional[str], clean: str) -> None:
    assert report_junit.clean(raw) == clean


def test_junit_validates_against_the_schema() -> None:
    etree = pytest.importorskip("lxml.etree", reason="python3-lxml (scripts/apt-test.txt) validates the XSD")
    schema = etree.XMLSchema(etree.parse(str(DATA / "junit.xsd")))
    for doc in (
        document(),
        document("control crashed"),
        build_document(CycleReport(1, 0.0, 0.0, []), POLICY),
    ):
        xml = etree.fromstring(render(doc, "junit").encode())
        assert schema.validate(xml), schema.error_log
    # the schema is not a rubber stamp
    bad = etree.fromstring(b'<testsuites><testsuite name="x" tests="-1"/></testsuites>')
    assert not schema.validate(bad)


# -- CLI ----------------------------------------------------------------------------------


def test_cli_rejects_two_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "--json", "--format", "junit", "--root", "/nonexistent"])
    assert exc.value.code == 2
    assert "choose one output format, not json and junit" in capsys.readouterr().err


def agentctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`k3s-agentctl` on the temp root, with a proc mount of its own: the host's /proc
    would show whatever K3s (fixture) processes other suites have running, and the
    runs this module compares would not see the same node."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "k3s_agent.cli",
        *args[:1],
        "--root",
        str(root),
        "--proc",
        str(proc),
        *args[1:],
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_cli_check_formats_end_to_end(root: Path) -> None:
    json_run = agentctl(root, "check", "--profile", "k3s-cis-server", "--json")
    doc = json.loads(json_run.stdout)
    assert json_run.returncode == exit_code(doc)
    assert agentctl(root, "check", "--profile", "k3s-cis-server", "--format", "json").stdout.count("\n") > 10

    junit = agentctl(root, "check", "--profile", "k3s-cis-server", "--format", "junit")
    assert junit.returncode == json_run.returncode  # exit codes do not depend on the format
    xml = ET.fromstring(junit.stdout.encode())
    items = sum(len(c["findings"]) for c in doc["controls"])
    assert int(xml.get("tests")) == items
    assert {s.get("name") for s in xml.findall("testsuite")} == {c["name"] for c in doc["controls"]}

    kb = agentctl(root, "check", "--profile", "k3s-cis-server", "--format", "kube-bench-json")
    assert kb.returncode == json_run.returncode
    out = json.loads(kb.stdout)
    assert [c["id"] for c in out["Controls"]][:1] == ["1"]  # the server profile's control-plane checks
    assert sum(out["Totals"].values()) == len(by_number(out)) > 20


def test_cli_status_offline_renders_the_last_status_file(root: Path) -> None:
    (root / "run/k3s-agentd/status.json").write_text(json.dumps(document()))
    kb = agentctl(root, "status", "--format", "kube-bench-json")
    assert kb.returncode == 3
    assert by_number(json.loads(kb.stdout))["1.2.16"]["status"] == "FAIL"
    assert "k3s-agentd is NOT running" in kb.stderr  # the note, outside the report
    prom = agentctl(root, "status", "--prometheus")
    assert prom.returncode == 3 and "k3s_agentd_verdict 2" in prom.stdout
    (root / "run/k3s-agentd/status.json").unlink()
    junit = agentctl(root, "status", "--format", "junit")
    assert (junit.returncode, junit.stdout) == (3, "")
    assert "has recorded no status" in junit.stderr


@pytest.mark.parametrize("fmt", ["table", "json", "prometheus", "kube-bench-json", "junit"])
def test_every_format_encodes_a_name_that_is_not_utf8(fmt: str) -> None:
    name = os.fsdecode(b"/etc/bad-\xff-name")  # as os.listdir returns it: a lone surrogate
    doc = document()
    doc["controls"][0]["findings"].append(
        Finding("files", name, Status.DRIFT, "0600", "0644", cis="1.1.20").to_dict()
    )
    text = render(doc, fmt, verbose=True)
    text.encode("utf-8")  # printable
    render_prometheus(doc).encode("utf-8")  # what the daemon's metrics endpoint serves
    assert "bad-" in text
