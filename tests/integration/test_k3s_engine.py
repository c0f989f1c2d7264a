"""The K3s controls as the engine runs them: built from the policy, default wiring."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Status
from k3s_agent.policy.loader import load_policy
from tests.support.k3s_fixture import K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, unit_entries, write_journal
from tests.support.k3sharness import not_ok

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]


def test_engine_cycle_on_a_hardened_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    node = K3sNode(tmp_path)
    host = Host(root=str(tmp_path))
    monkeypatch.setenv("K3S_FIXTURE_ROOT", str(tmp_path))  # for `k3s secrets-encrypt status`
    (tmp_path / "var/lib/k3s-agentd").mkdir(parents=True, exist_ok=True)
    with node.start() as proc:
        # No systemd here: the run is pinned by the process start time, so only
        # lines written after it count; the root's own journal dir is read.
        journal_dir = tmp_path / "var/log/journal/0123456789abcdef0123456789abcdef"
        journal_dir.mkdir(parents=True)
        entries = unit_entries("k3s.service", "0" * 32, proc.log_lines(), int(time.time() * 1e6) + 1000)
        write_journal(journal_dir / "system.journal", entries)
        engine = Engine(load_policy(host, profile="k3s-cis-server"), host)
        report = engine.run_cycle(enforce=True, only=["k3s_args", "k3s_encryption"])
    found = {(f.control, f.key): f for f in report.findings()}
    args = {key: f for (control, key), f in found.items() if control == "k3s_args"}
    assert not_ok(args) == {}
    others = {k: f.status for k, f in found.items() if k[0] != "k3s_args" or not_ok({k[1]: f})}
    assert set(others.values()) <= {Status.OK, Status.HEALED}
    audit = found[("k3s_args", "/var/lib/rancher/k3s/server/audit.yaml")]
    assert audit.status is Status.HEALED  # written by apply, confirmed by the re-check
    assert found[("k3s_encryption", "cluster-hashes")].status is Status.OK
    facts = {c.name: c.facts for c in report.controls}
    assert facts["k3s_args"]["role"] == "server"
    assert facts["k3s_encryption"]["stage"] == "start"
