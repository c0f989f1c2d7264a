"""The control-plane, kube-proxy and manual CIS checks against the K3s fixture.

Three nodes, started once per module: a default K3s server (sqlite), a server on
embedded etcd (--cluster-init), and a server configured to fail every check here.
Each check is judged on a compliant and a non-compliant node, as kube-bench audits it.
"""

# ruff: noqa: E501  (the table of cases: one check per line)
from __future__ import annotations

import time

import pytest

from k3s_agent.controls.k3s_args import desired_settings
from k3s_agent.model import Finding, Status
from tests.support.k3s_fixture import K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, invocation, unit_entries, write_journal
from tests.support.k3sharness import Harness

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]

ETCD = "cluster-init: true\n"
BROKEN = """cluster-init: true
kube-apiserver-arg:
  - "token-auth-file=/etc/rancher/k3s/tokens.csv"
  - "kubelet-client-certificate="
  - "kubelet-client-key="
  - "kubelet-certificate-authority="
  - "disable-admission-plugins=ServiceAccount,NamespaceLifecycle"
  - "service-account-lookup=false"
  - "service-account-key-file="
  - "etcd-certfile="
  - "etcd-keyfile="
  - "etcd-cafile="
  - "tls-cert-file="
  - "tls-private-key-file="
  - "client-ca-file="
  - "enable-admission-plugins=NodeRestriction,DenyServiceExternalIPs,AlwaysPullImages"
kube-controller-manager-arg:
  - "use-service-account-credentials=false"
  - "service-account-private-key-file="
  - "root-ca-file="
  - "feature-gates=RotateKubeletServerCertificate=false"
  - "bind-address=0.0.0.0"
kube-scheduler-arg:
  - "bind-address=0.0.0.0"
kube-proxy-arg:
  - "metrics-bind-address=0.0.0.0:10249"
kubelet-arg:
  - "seccomp-default=true"
"""
NODES = {
    "default": 'write-kubeconfig-mode: "0600"\n',
    "etcd": ETCD + 'kube-proxy-arg: "metrics-bind-address=127.0.0.1:10300"\n',
    "broken": BROKEN,
}

# key, (status, message start) on the default node, on the etcd node, on the broken node.
NOT_SET = (Status.DRIFT, "not set")
OK = (Status.OK, "")
NO_ETCD = (Status.ABSENT, "K3s runs no embedded etcd")
MANUAL = "manual check, reported for review (never required or remediated): "
MET = (Status.MANUAL, MANUAL + "met")
CASES = [
    ("kube-apiserver:token-auth-file", OK, OK, (Status.DRIFT, "must not be set")),
    ("kube-apiserver:kubelet-client-certificate", OK, OK, NOT_SET),
    ("kube-apiserver:kubelet-client-key", OK, OK, NOT_SET),
    ("kube-apiserver:kubelet-certificate-authority", OK, OK, NOT_SET),
    ("kube-apiserver:disable-admission-plugins", OK, OK, (Status.DRIFT, "has forbidden NamespaceLifecycle,ServiceAccount")),
    ("kube-apiserver:service-account-lookup", (Status.OK, "not set: the kube-apiserver default meets it"), OK, (Status.DRIFT, "is false (want true)")),
    ("kube-apiserver:service-account-key-file", OK, OK, NOT_SET),
    ("kube-apiserver:etcd-certfile", NO_ETCD, OK, NOT_SET),
    ("kube-apiserver:etcd-keyfile", NO_ETCD, OK, NOT_SET),
    ("kube-apiserver:etcd-cafile", NO_ETCD, OK, NOT_SET),
    ("kube-apiserver:tls-cert-file", OK, OK, NOT_SET),
    ("kube-apiserver:tls-private-key-file", OK, OK, NOT_SET),
    ("kube-apiserver:client-ca-file", OK, OK, NOT_SET),
    ("kube-controller-manager:use-service-account-credentials", OK, OK, (Status.DRIFT, "is false (want true)")),
    ("kube-controller-manager:service-account-private-key-file", OK, OK, NOT_SET),
    ("kube-controller-manager:root-ca-file", OK, OK, NOT_SET),
    ("kube-controller-manager:feature-gates", OK, OK, (Status.DRIFT, "has forbidden RotateKubeletServerCertificate=false")),
    ("kube-controller-manager:bind-address", OK, OK, (Status.DRIFT, "is 0.0.0.0 (want 127.0.0.1)")),
    ("kube-scheduler:bind-address", OK, OK, (Status.DRIFT, "is 0.0.0.0 (want 127.0.0.1)")),
    # kube-proxy's own default 127.0.0.1:10249; another localhost port meets CIS 4.3.1
    ("kube-proxy:metrics-bind-address", (Status.OK, "not set: the kube-proxy default meets it"), (Status.OK, "stricter than CIS 1.10: is 127.0.0.1:10300"), (Status.DRIFT, "is 0.0.0.0:10249")),
    # Manual checks: reported either way, never drift.
    ("kube-apiserver:enable-admission-plugins#DenyServiceExternalIPs", (Status.MANUAL, MANUAL + "not met: lacks DenyServiceExternalIPs"), (Status.MANUAL, MANUAL), MET),
    ("kube-apiserver:enable-admission-plugins#AlwaysPullImages", (Status.MANUAL, MANUAL + "not met: lacks AlwaysPullImages"), (Status.MANUAL, MANUAL), MET),
    ("kubelet:seccomp-default", (Status.MANUAL, MANUAL + "not met: not set, default false (want true)"), (Status.MANUAL, MANUAL), MET),
]  # fmt: skip


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    """name -> (harness, findings by key): each node started once, checked once."""
    tmp = tmp_path_factory.mktemp("cis")
    out: dict[str, tuple[Harness, dict[str, Finding]]] = {}
    for name, config in NODES.items():
        harness = Harness(tmp / name, K3sNode(tmp / name / "node", config=config))
        _start(harness)
        out[name] = (harness, {f.key: f for f in harness.control.check()})
    yield out
    for harness, _ in out.values():
        harness.stop()


def _start(h: Harness) -> None:
    h.tmp.mkdir(parents=True, exist_ok=True)
    h.proc = h.node.start()
    h.invocation = invocation()
    h.entries = unit_entries(h.node.unit, h.invocation, h.proc.log_lines(), int(time.time() * 1e6))
    write_journal(h.journal, h.entries)


@pytest.mark.parametrize(("key", "default", "etcd", "broken"), CASES, ids=[c[0] for c in CASES])
def test_check_on_compliant_and_noncompliant_nodes(nodes, key: str, default, etcd, broken) -> None:
    for name, (status, start) in (("default", default), ("etcd", etcd), ("broken", broken)):
        found = nodes[name][1][key]
        assert (found.status, found.message[: len(start)]) == (status, start), (name, found.message)


# The fixture runs K3s v1.31: benchmark = "auto" picks k3s-cis-1.10, whose ids the findings carry.
IN_FORCE = [
    ("kube-apiserver:token-auth-file", "1.2.2"),
    ("kube-apiserver:service-account-lookup", "1.2.21"),  # 1.8's 1.2.22
    ("kube-apiserver:etcd-cafile", "1.2.26"),  # 1.8's 1.2.27
    ("kube-controller-manager:bind-address", "1.3.7"),
    ("kube-proxy:metrics-bind-address", "4.3.1"),  # not in 1.8
    ("kube-apiserver:enable-admission-plugins#DenyServiceExternalIPs", "1.2.3"),
    ("kubelet:seccomp-default", None),  # 1.12 only: a hardening item here
    ("kube-apiserver:service-account-extend-token-expiration", None),  # 1.12's 1.2.30
]


@pytest.mark.parametrize(("key", "cis"), IN_FORCE)
def test_findings_carry_the_id_of_the_benchmark_in_force(nodes, key: str, cis) -> None:
    harness, found = nodes["broken"]
    assert harness.control.cis_version == "1.10"
    assert found[key].cis == cis


def test_manual_items_are_never_written(nodes) -> None:
    """On the default node the manual checks are unmet, yet the drop-in written for its
    drift has none of them; the broken node's drop-in passes each flag once."""
    harness, found = nodes["default"]
    assert {k for k, f in found.items() if f.status is Status.MANUAL} == {c[0] for c in CASES[-3:]}
    settings = desired_settings(harness.control.items, harness.control.last.configured)
    flags = _flags(settings)
    assert ("kubelet-arg", "seccomp-default") not in flags
    plugins = next(v for a, f, v in flags if (a, f) == ("kube-apiserver-arg", "enable-admission-plugins"))
    assert "DenyServiceExternalIPs" not in plugins and "AlwaysPullImages" not in plugins
    broken, _ = nodes["broken"]
    written = _flags(desired_settings(broken.control.items, broken.control.last.configured))
    assert len({(a, f) for a, f, _ in written}) == len(written)


def _flags(settings: dict) -> list[tuple[str, str, str]]:
    return [
        (arg, *entry.split("=", 1))
        for arg, entries in settings.items()
        if isinstance(entries, list)
        for entry in entries
    ]
