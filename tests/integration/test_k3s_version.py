"""`k3s --version` of the binary the unit runs (the K3s fixture's own program under a
temp root), the benchmark it picks, and where the pick shows: policy, controls,
the status document, the status table and the kube-bench report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from k3s_agent import report_kubebench
from k3s_agent.cli import main
from k3s_agent.controls.k3s_args import K3sArgsControl
from k3s_agent.engine import ControlReport, CycleReport
from k3s_agent.host import Host, HostError
from k3s_agent.k3s import version as k3sversion
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.schema import PolicyError
from k3s_agent.report import build_document, render_table
from tests.support.k3s_fixture import layout


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    k3sversion._cache.clear()


def node(tmp_path: Path, role: str = "server", **fixture: Any) -> Host:
    layout.install(str(tmp_path), role=role, fixture=fixture)
    return Host(root=str(tmp_path))


def policy_for(host: Host, **top: Any):
    return compose(host, [Layer("policy.toml", {"extends": "k3s-cis-server", **top})])


@pytest.mark.parametrize(
    "version,want",
    [
        ("v1.26.15+k3s1", "k3s-cis-1.8"),
        ("v1.29.3+k3s1", "k3s-cis-1.9"),
        ("v1.30.4+k3s1", "k3s-cis-1.10"),
        ("v1.32.0-rc1+k3s1", "k3s-cis-1.12"),
        ("v1.35.0+k3s1", "k3s-cis-1.12"),
    ],
)
def test_auto_follows_the_fixture_binary(tmp_path: Path, version: str, want: str) -> None:
    host = node(tmp_path, version=version)
    found = k3sversion.detect(host)
    assert found == k3sversion.K3sVersion(version, "/usr/local/bin/k3s")
    policy = policy_for(host)
    assert policy.benchmark.name == want
    assert policy.benchmark.reason == f"auto: K3s {version} -> {want}"


def test_agent_unit_binary_is_found(tmp_path: Path) -> None:
    host = node(tmp_path, role="agent", version="v1.31.2+k3s1")
    assert k3sversion.detect(host).version == "v1.31.2+k3s1"


def test_the_unit_s_execstart_binary_is_the_one_run(tmp_path: Path) -> None:
    """An operator's unit that runs /opt/k3s/k3s: that binary answers, not /usr/local/bin/k3s."""
    host = node(tmp_path, version="v1.28.1+k3s1")
    unit = tmp_path / "etc/systemd/system/k3s.service"
    unit.write_text(unit.read_text().replace("ExecStart=/usr/local/bin/k3s", "ExecStart=/opt/k3s/k3s"))
    other = tmp_path / "opt/k3s/k3s"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\necho 'k3s version v1.33.1+k3s1 (deadbeef)'\n")
    other.chmod(0o755)
    assert k3sversion.unit_binary(host) == "/opt/k3s/k3s"
    assert k3sversion.detect(host).version == "v1.33.1+k3s1"


@pytest.mark.parametrize(
    "fixture,why",
    [
        ({"version_output": "Segmentation fault\n"}, "not understood|unknown"),
        ({"version_output": ""}, "no output"),
        ({"version_output": "k3s version vX\n" * 10000}, "unknown"),
    ],
)
def test_garbage_output_is_unknown_and_picks_the_newest(tmp_path: Path, fixture: dict, why: str) -> None:
    host = node(tmp_path, **fixture)
    found = k3sversion.detect(host)
    assert found.version is None and found.binary == "/usr/local/bin/k3s"
    assert any(word in found.why for word in why.split("|"))
    choice = policy_for(host).benchmark
    assert choice.name == "k3s-cis-1.12" and "the newest" in choice.reason


def test_a_hanging_binary_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = node(tmp_path, version_hangs=True)
    monkeypatch.setattr(k3sversion, "TIMEOUT", 0.5)
    started = time.monotonic()
    found = k3sversion.detect(host)
    assert time.monotonic() - started < 3
    assert found.version is None and "no answer within 0.5s" in found.why
    assert policy_for(host).benchmark.name == "k3s-cis-1.12"  # cached: no second wait


def test_not_installed(tmp_path: Path) -> None:
    host = Host(root=str(tmp_path))
    assert k3sversion.detect(host) == k3sversion.K3sVersion(None, None, "K3s not found")
    choice = policy_for(host).benchmark
    assert choice.reason == "auto: K3s not found -> k3s-cis-1.12, the newest"


def test_a_binary_others_can_write_is_not_run(tmp_path: Path) -> None:
    host = node(tmp_path, version="v1.30.1+k3s1")
    binary = tmp_path / "usr/local/bin/k3s"
    marker = tmp_path / "ran"
    binary.write_text(f"#!/bin/sh\ntouch {marker}\necho 'k3s version v1.30.1+k3s1'\n")
    binary.chmod(0o777)
    found = k3sversion.detect(host)
    assert found.version is None and "writable by others" in found.why and not marker.exists()


def test_cached_per_binary_file(tmp_path: Path) -> None:
    """Same file: one run; an upgrade (new content, new mtime) runs again."""
    host = node(tmp_path)
    binary = tmp_path / "usr/local/bin/k3s"
    count = tmp_path / "runs"

    def install(version: str) -> None:
        binary.write_text(f"#!/bin/sh\necho x >> {count}\necho 'k3s version {version} (1)'\n")
        binary.chmod(0o755)

    install("v1.30.1+k3s1")
    assert [k3sversion.detect(host).version for _ in range(3)] == ["v1.30.1+k3s1"] * 3
    assert count.read_text().count("x") == 1
    install("v1.32.2+k3s1")
    os.utime(binary, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert k3sversion.detect(host).version == "v1.32.2+k3s1"
    assert count.read_text().count("x") == 2


def test_run_capped_bounds_output_and_time(tmp_path: Path) -> None:
    host = Host(root=str(tmp_path))
    code, out = host.run_capped(["sh", "-c", "yes | head -c 1000000"], timeout=5, limit=1000)
    assert len(out) == 1000 and out.startswith(b"y\n")
    code, out = host.run_capped(["sh", "-c", "echo hi; exit 3"], timeout=5)
    assert (code, out) == (3, b"hi\n")
    started = time.monotonic()
    with pytest.raises(HostError, match="no answer within 0.3s"):
        host.run_capped(["sh", "-c", "sleep 30 & echo started; sleep 30"], timeout=0.3)
    assert time.monotonic() - started < 3
    with pytest.raises(HostError, match="cannot run"):
        host.run_capped([str(tmp_path / "missing")], timeout=1)


# -- where the pick shows ----------------------------------------------------------


def test_pinned_wins_and_reaches_controls(tmp_path: Path) -> None:
    host = node(tmp_path, version="v1.33.0+k3s1")
    policy = policy_for(host, benchmark="k3s-cis-1.9")
    assert (policy.benchmark.name, policy.benchmark.requested) == ("k3s-cis-1.9", "k3s-cis-1.9")
    assert policy.benchmark.reason == "pinned by the policy: k3s-cis-1.9"
    assert policy.benchmark.k3s_version == "v1.33.0+k3s1"
    assert {c.benchmark for c in policy.controls.values()} == {"k3s-cis-1.9"}
    assert K3sArgsControl(policy.controls["k3s_args"], host).cis_version == "1.9"


def test_ids_follow_the_benchmark_and_operator_ids_stay(tmp_path: Path) -> None:
    host = node(tmp_path, version="v1.30.4+k3s1")
    mine = {"controls": {"k3s_args": {"items": {"kube-apiserver:request-timeout": {"cis": "my-1.2.21"}}}}}
    policy = compose(host, [Layer("policy.toml", {"extends": "k3s-cis-server", **mine})])
    items = policy.controls["k3s_args"].items
    assert items["kube-apiserver:profiling"]["cis"] == "1.2.15"  # 1.2.16 in CIS 1.8
    assert items["kube-apiserver:request-timeout"]["cis"] == "my-1.2.21"
    pinned = policy_for(host, benchmark="k3s-cis-1.8").controls["k3s_args"].items
    assert pinned["kube-apiserver:profiling"]["cis"] == "1.2.16"


def test_explicit_cis_version_option_wins(tmp_path: Path) -> None:
    host = node(tmp_path, version="v1.30.4+k3s1")
    policy = policy_for(host, controls={"k3s_args": {"cis_version": "1.8 (our audit)"}})
    assert K3sArgsControl(policy.controls["k3s_args"], host).cis_version == "1.8 (our audit)"
    assert K3sArgsControl(policy_for(host).controls["k3s_args"], host).cis_version == "1.10"


@pytest.mark.parametrize("value", ["k3s-cis-1.11", "cis-1.10", "AUTO", 1.10, ""])
def test_a_bad_benchmark_is_refused_naming_file_and_key(tmp_path: Path, value: Any) -> None:
    with pytest.raises(PolicyError) as err:
        policy_for(Host(root=str(tmp_path)), benchmark=value)
    assert "policy.toml" in str(err.value) and "benchmark" in str(err.value)


def test_status_document_table_and_kube_bench_name_it(tmp_path: Path) -> None:
    host = node(tmp_path, version="v1.30.4+k3s1")
    policy = policy_for(host)
    finding = Finding("k3s_args", "kube-apiserver:profiling", Status.OK, cis="1.2.15")
    cycle = CycleReport(1, time.time(), 0.01, [ControlReport("k3s_args", Mode.ENFORCE, [finding], 0.01)])
    document = json.loads(json.dumps(build_document(cycle, policy)))
    assert document["policy"]["benchmark"] == "k3s-cis-1.10"
    assert document["policy"]["benchmark_requested"] == "auto"
    assert document["policy"]["benchmark_reason"] == "auto: K3s v1.30.4+k3s1 -> k3s-cis-1.10"
    assert document["policy"]["k3s_version"] == "v1.30.4+k3s1"
    table = render_table(document).splitlines()
    assert table[1] == "benchmark k3s-cis-1.10  (auto: K3s v1.30.4+k3s1 -> k3s-cis-1.10)"
    kube = report_kubebench.build(document)
    assert kube["Controls"][0]["version"] == "k3s-cis-1.10"
    assert kube["Controls"][0]["detected_version"] == "v1.30.4+k3s1"
    assert kube["Controls"][0]["tests"][0]["results"][0]["test_number"] == "1.2.15"


def test_validate_names_the_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node(tmp_path, version="v1.29.3+k3s1")
    policy = tmp_path / "p.toml"
    policy.write_text('extends = "k3s-cis-server"\n')
    assert main(["validate", "--root", str(tmp_path), "--json", str(policy)]) == 0
    got = json.loads(capsys.readouterr().out)["benchmark"]
    assert got["name"] == "k3s-cis-1.9" and got["reason"] == "auto: K3s v1.29.3+k3s1 -> k3s-cis-1.9"
    policy.write_text('extends = "k3s-cis-server"\nbenchmark = "k3s-cis-1.12"\n')
    assert main(["validate", "--root", str(tmp_path), str(policy)]) == 0
    assert (
        "  benchmark k3s-cis-1.12 (pinned by the policy: k3s-cis-1.12)"
        in capsys.readouterr().out.splitlines()
    )
