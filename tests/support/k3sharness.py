"""A k3s_args control wired to one K3s fixture node (its process only, its journal file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.controls.k3s_args import K3sArgsControl
from k3s_agent.host import Host
from k3s_agent.k3s.discovery import scan_processes
from k3s_agent.k3s.journal import JournalSource, RunningArgsReader
from k3s_agent.k3s.node import Observer
from k3s_agent.model import Finding, Status
from k3s_agent.policy.loader import load_policy
from tests.support.k3s_fixture import K3sNode, K3sProcess
from tests.support.k3s_fixture.journalfile import invocation, unit_entries, write_journal


class Harness:
    """A control wired to one fixture node: its process only, its journal file."""

    def __init__(
        self, tmp: Path, node: K3sNode, profile: str = "k3s-cis-server", options: Optional[dict] = None
    ):
        self.tmp = tmp
        self.node = node
        self.host = Host(root=str(node.root))
        self.journal = tmp / "k3s.journal"
        self.entries: list[dict[str, object]] = []
        self.proc: Optional[K3sProcess] = None
        self.invocation: Optional[str] = None
        policy = load_policy(self.host, profile=profile)
        section = policy.controls["k3s_args"]
        if options:
            section = type(section)(**{**section.__dict__, "options": {**section.options, **options}})
        self.section = section
        self.control = self.build()

    def build(self) -> K3sArgsControl:
        reader = RunningArgsReader(self.host, JournalSource(files=[str(self.journal)]), persist=False)
        observer = Observer(self.host, reader=reader, show=self.show, scan=self.scan)
        return K3sArgsControl(self.section, self.host, observer=observer)

    def show(self, host: Host, unit: str) -> dict[str, str]:
        if self.proc is None or unit != self.node.unit:
            return {"ActiveState": "inactive", "MainPID": "0"} if unit == self.node.unit else {}
        return {"ActiveState": "active", "MainPID": str(self.proc.pid), "InvocationID": self.invocation or ""}

    def scan(self):
        return [p for p in scan_processes() if self.proc is not None and p.pid == self.proc.pid]

    def start(self) -> K3sProcess:
        """(Re)start K3s like systemd would: new process, new invocation, its lines in the journal."""
        self.stop()
        self.proc = self.node.start()
        self.invocation = invocation()
        now = int(time.time() * 1e6)
        self.entries += unit_entries(self.node.unit, self.invocation, self.proc.log_lines(), now)
        self.journal.unlink(missing_ok=True)
        write_journal(self.journal, self.entries)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def check(self) -> dict[str, Finding]:
        return {f.key: f for f in self.control.check()}


@pytest.fixture
def make(tmp_path: Path):
    made: list[Harness] = []

    def factory(config: Optional[str] = None, role: str = "server", **kw) -> Harness:
        node_kw = {k: kw.pop(k) for k in ("exec_flags", "fixture") if k in kw}
        node = K3sNode(tmp_path / f"node{len(made)}", role=role, config=config, **node_kw)
        harness = Harness(tmp_path, node, "k3s-cis-server" if role == "server" else "k3s-cis-agent", **kw)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.stop()


# Items a compliant fixture server reports without "ok": the benchmark's manual checks
# (reported, never required) and the apiserver's etcd client TLS (absent: sqlite).
MANUAL_ITEMS = frozenset(
    {
        "kubelet:seccomp-default",
        "kube-apiserver:enable-admission-plugins#DenyServiceExternalIPs",
        "kube-apiserver:enable-admission-plugins#AlwaysPullImages",
    }
)
ETCD_ITEMS = frozenset(f"kube-apiserver:etcd-{name}" for name in ("cafile", "certfile", "keyfile"))


def not_ok(findings: dict[str, Finding]) -> dict[str, tuple[str, str]]:
    """Per-item findings neither ok nor one of the expected manual / no-etcd states."""
    expected = {**dict.fromkeys(MANUAL_ITEMS, Status.MANUAL), **dict.fromkeys(ETCD_ITEMS, Status.ABSENT)}
    return {
        k: (f.status.value, f.message)
        for k, f in items(findings).items()
        if f.status is not Status.OK and expected.get(k) is not f.status
    }


def items(findings: dict[str, Finding]) -> dict[str, Finding]:
    """The per-item findings (not the service, journal or managed-file ones)."""
    return {
        k: v
        for k, v in findings.items()
        if ":" in k and not k.startswith("k3s:service") and not k.startswith("/")
    }
