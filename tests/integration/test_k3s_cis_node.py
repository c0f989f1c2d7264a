"""The node-level CIS checks beyond the first subset, against the K3s fixture:
embedded etcd 2.1-2.7 (read from the config K3s writes for etcd), kubelet 4.2.3
and 4.2.8-4.2.11, and the audit-log / kubelet drop-in file modes. Each check has
a compliant and a non-compliant case."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Status
from k3s_agent.policy.loader import Layer, compose
from tests.support.k3s_fixture import DATA_DIR, K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE

pytestmark = [pytest.mark.root]
needs_journal = pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")

ETCD_CONFIG = f"{DATA_DIR}/server/db/etcd/config"
TLS = f"{DATA_DIR}/server/tls"
CLIENT, PEER = "client-transport-security", "peer-transport-security"
K8S_CA = f"{TLS}/server-ca.crt"  # the cluster's CA: etcd peers must not share it (2.7)


def _edit_etcd(h, field: str, value: object) -> None:
    """Set (or with None, remove) a dotted field of the fixture's etcd config."""
    path = h.node.path(ETCD_CONFIG)
    data = yaml.safe_load(path.read_text())
    section, key = field.split(".")
    if value is None:
        data[section].pop(key, None)
    else:
        data[section][key] = value
    path.write_text(yaml.safe_dump(data))


# (field, value written (None: removed), status, message start after "<file>: <field> " on drift, CIS id)
ETCD_CASES = [
    (f"{CLIENT}.cert-file", f"{TLS}/etcd/server-client.crt", Status.OK, "", "2.1"),
    (f"{CLIENT}.cert-file", None, Status.DRIFT, "not set", "2.1"),
    (f"{CLIENT}.key-file", "", Status.DRIFT, "not set", "2.1"),
    (f"{CLIENT}.client-cert-auth", True, Status.OK, "", "2.2"),
    (f"{CLIENT}.client-cert-auth", False, Status.DRIFT, "is false", "2.2"),
    (f"{CLIENT}.client-cert-auth", None, Status.DRIFT, "not set, default false", "2.2"),
    (f"{CLIENT}.auto-tls", False, Status.OK, "", "2.3"),
    (f"{CLIENT}.auto-tls", None, Status.OK, "not set: the etcd default meets it", "2.3"),
    (f"{CLIENT}.auto-tls", True, Status.DRIFT, "has forbidden true", "2.3"),
    (f"{PEER}.cert-file", f"{TLS}/etcd/peer-server-client.crt", Status.OK, "", "2.4"),
    (f"{PEER}.key-file", None, Status.DRIFT, "not set", "2.4"),
    (f"{PEER}.client-cert-auth", True, Status.OK, "", "2.5"),
    (f"{PEER}.client-cert-auth", "false", Status.DRIFT, "is false", "2.5"),
    (f"{PEER}.auto-tls", None, Status.OK, "not set: the etcd default meets it", "2.6"),
    (f"{PEER}.auto-tls", True, Status.DRIFT, "has forbidden true", "2.6"),
    (f"{PEER}.trusted-ca-file", f"{TLS}/etcd/peer-ca.crt", Status.OK, "", "2.7"),
    (f"{PEER}.trusted-ca-file", K8S_CA, Status.DRIFT, f"has forbidden {K8S_CA}", "2.7"),
    (f"{PEER}.trusted-ca-file", None, Status.DRIFT, "not set", "2.7"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "status", "message", "cis"), ETCD_CASES)
def test_embedded_etcd_check(make, field, value, status, message, cis):
    """K3s is stopped: the file is what etcd ran with last (K3s rewrites it at start)."""
    h = make()
    _edit_etcd(h, field, value)
    before = h.node.path(ETCD_CONFIG).read_bytes()
    found = h.check()[f"etcd:{field}"]
    assert (found.status, found.cis) == (status, cis), found.message
    if status is Status.DRIFT:
        message = f"{ETCD_CONFIG}: {field} {message}"
    assert found.message.startswith(message), found.message
    if status is Status.DRIFT:
        assert "the agent never edits it" in found.message
        # Verify-only: check says apply will leave it; apply reports it back and never touches K3s's file.
        assert found.declined and "verify-only" in found.declined
        (result,) = h.control.apply([found])
        assert result.status is Status.DRIFT and result.message.startswith(found.message)
        assert h.node.path(ETCD_CONFIG).read_bytes() == before


def test_fixture_etcd_config_is_compliant_on_a_running_server(make):
    h = make()
    h.start()
    found = {k: f for k, f in h.check().items() if k.startswith("etcd:")}
    assert len(found) == 9 and {f.status for f in found.values()} == {Status.OK}
    assert "k3s:running-args" not in h.check()  # etcd has no Running line to wait for


def test_remediation_never_writes_for_etcd(make):
    """remediate = "config" fixes component args, never etcd's file (K3s would overwrite it)."""
    h = make(options={"remediate": "config"})
    _edit_etcd(h, f"{PEER}.client-cert-auth", False)
    found = h.check()
    results = h.control.apply([found[f"etcd:{PEER}.client-cert-auth"]])
    assert [r.status for r in results] == [Status.DRIFT]
    assert not h.node.path("/etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml").exists()
    assert yaml.safe_load(h.node.path(ETCD_CONFIG).read_text())[PEER]["client-cert-auth"] is False


def test_without_embedded_etcd_the_checks_do_not_apply(make):
    """SQLite/kine (or an external datastore): no db/etcd/config, nothing to judge, no drift."""
    h = make()
    h.node.path(ETCD_CONFIG).unlink()
    found = {k: f for k, f in h.check().items() if k.startswith("etcd:")}
    assert {f.status for f in found.values()} == {Status.ABSENT}
    assert all(f.message.startswith("not applicable: no embedded etcd") for f in found.values())


def test_etcd_items_do_not_apply_on_an_agent(make):
    h = make(role="agent")
    section = h.section
    extended = type(section)(
        **{**section.__dict__, "items": {**section.items, f"etcd:{CLIENT}.cert-file": {"set": True}}}
    )
    h.section = extended
    h.control = h.build()
    found = h.check()[f"etcd:{CLIENT}.cert-file"]
    assert found.status is Status.ABSENT and found.message == "etcd runs on servers only"


CUSTOM = "/srv/k3s"  # a node started with --data-dir: its CAs live there, not under DATA_DIR
CUSTOM_TLS = f"{CUSTOM}/server/tls"


@pytest.mark.parametrize(
    ("trusted_ca", "status", "why"),
    [
        (f"{CUSTOM_TLS}/etcd/peer-ca.crt", Status.OK, ""),
        *[
            (f"{CUSTOM_TLS}/{ca}", Status.DRIFT, f"has forbidden {CUSTOM_TLS}/{ca}")
            for ca in ("server-ca.crt", "client-ca.crt", "request-header-ca.crt")
        ],
        (K8S_CA, Status.OK, ""),  # the default dir's file is not this node's Kubernetes CA
    ],
)  # fmt: skip
def test_etcd_peer_ca_check_follows_the_configured_data_dir(make, trusted_ca, status, why):
    """2.7 forbids the Kubernetes CAs of the node's own data dir (config.yaml data-dir)."""
    h = make(config=f"data-dir: {CUSTOM}\n")
    moved = h.node.path(f"{CUSTOM}/server/db/etcd/config")
    moved.parent.mkdir(parents=True)
    h.node.path(ETCD_CONFIG).rename(moved)
    data = yaml.safe_load(moved.read_text())
    data[PEER]["trusted-ca-file"] = trusted_ca
    moved.write_text(yaml.safe_dump(data))
    found = h.check()[f"etcd:{PEER}.trusted-ca-file"]
    assert (found.status, found.cis, found.observed) == (status, "2.7", trusted_ca), found.message
    if status is Status.DRIFT:
        assert found.message.startswith(f"{CUSTOM}/server/db/etcd/config: {PEER}.trusted-ca-file {why}")
    assert f"{CUSTOM_TLS}/server-ca.crt" in str(found.desired)


# Five levels of ten aliases: a few hundred bytes that write out to megabytes.
LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 6)
)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("client-transport-security: [unclosed\n", "not valid YAML"),
        ("- a list\n", "not a YAML mapping"),
        (LAUGHS, "billion laughs"),
        ("x: " + "y" * (300 << 10) + "\n", "read cap"),
        (None, "is a symlink"),
    ],
)  # fmt: skip
def test_unreadable_etcd_config_is_drift_naming_the_file(make, content, why):
    h = make()
    path = h.node.path(ETCD_CONFIG)
    if content is None:
        path.unlink()
        os.symlink(h.node.path("/etc/rancher/k3s/config.yaml"), path)
    else:
        path.write_text(content)
    found = h.check()[f"etcd:{CLIENT}.client-cert-auth"]
    assert found.status is Status.DRIFT and found.message.startswith(ETCD_CONFIG + ": "), found.message
    assert why in found.message and found.message.endswith("etcd unverified")


GATE = "RotateKubeletServerCertificate"
# (kubelet-arg entries, item, status, message start, CIS id)
KUBELET_CASES = [
    ([], "client-ca-file", Status.OK, "", "4.2.3"),
    (["client-ca-file="], "client-ca-file", Status.DRIFT, "not set", "4.2.3"),
    ([], "event-qps", Status.OK, "not set: the kubelet default meets it", "4.2.8"),
    (["event-qps=0"], "event-qps", Status.OK, "", "4.2.8"),
    (["event-qps=-1"], "event-qps", Status.DRIFT, "is -1 (want >= 0)", "4.2.8"),
    ([], "tls-cert-file", Status.OK, "", "4.2.9"),
    (["tls-cert-file="], "tls-cert-file", Status.DRIFT, "not set", "4.2.9"),
    (["tls-private-key-file="], "tls-private-key-file", Status.DRIFT, "not set", "4.2.9"),
    ([], "rotate-certificates", Status.OK, "not set: the benchmark passes an unset flag", "4.2.10"),
    (["rotate-certificates=true"], "rotate-certificates", Status.OK, "", "4.2.10"),
    (["rotate-certificates=false"], "rotate-certificates", Status.DRIFT, "has forbidden false", "4.2.10"),
    (["rotate-certificates=0"], "rotate-certificates", Status.DRIFT, "has forbidden false", "4.2.10"),
    ([], "feature-gates", Status.OK, "", "4.2.11"),
    ([f"feature-gates={GATE}=true"], "feature-gates", Status.OK, "", "4.2.11"),
    ([f"feature-gates={GATE}=false"], "feature-gates", Status.DRIFT, f"has forbidden {GATE}=false", "4.2.11"),
    # Spelled as the kubelet also reads it (strconv.ParseBool), among other gates.
    ([f"feature-gates=A=true,{GATE}=False"], "feature-gates", Status.DRIFT, "has forbidden", "4.2.11"),
]  # fmt: skip


@needs_journal
@pytest.mark.parametrize(("args", "flag", "status", "message", "cis"), KUBELET_CASES)
def test_kubelet_check(make, args, flag, status, message, cis):
    """An agent node configured and restarted with these kubelet args: configured and running agree."""
    config = "".join(f"  - {arg}\n" for arg in args)
    h = make(role="agent", config=f"kubelet-arg:\n{config}" if args else "protect-kernel-defaults: true\n")
    h.start()
    found = h.check()[f"kubelet:{flag}"]
    assert (found.status, found.cis) == (status, cis), found.message
    assert found.message.startswith(message), found.message


@needs_journal
def test_kubelet_checks_read_the_config_dropins(make):
    """K3s >= 1.32: the CA, serving pair and feature gates can live in kubelet.conf.d."""
    h = make(role="agent", fixture={"kubelet_config_dir": True})
    h.start()
    running = h.control.observer.observe().running_args("kubelet")
    assert "client-ca-file" in running and "tls-cert-file" in running  # from 00-k3s-defaults.conf
    found = h.check()
    for flag in ("client-ca-file", "tls-cert-file", "tls-private-key-file", "feature-gates"):
        assert found[f"kubelet:{flag}"].status is Status.OK, found[f"kubelet:{flag}"].message
    h.node.path(f"{DATA_DIR}/agent/etc/kubelet.conf.d/50-operator.conf").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "featureGates:\n  RotateKubeletServerCertificate: false\n"
    )
    gate = h.check()["kubelet:feature-gates"]
    assert gate.status is Status.PENDING and "RotateKubeletServerCertificate=false" in gate.message


# (path under the data dir, mode K3s leaves, mode a careless operator sets, healed mode)
FILE_CASES = [
    ("server/logs", 0o700, 0o755, 0o700),
    ("server/logs/audit.log", 0o600, 0o644, 0o600),
    ("server/logs/audit-2026-11-30T03-35-01.000.log", 0o600, 0o640, 0o600),
    ("agent/etc/kubelet.conf.d/00-k3s-defaults.conf", 0o600, 0o666, 0o644),
]


@pytest.mark.parametrize(("rel", "good", "loose", "healed"), FILE_CASES)
def test_audit_log_and_kubelet_dropin_modes(tmp_path: Path, rel, good, loose, healed):
    node = K3sNode(tmp_path / "node")
    path = node.path(f"{DATA_DIR}/{rel}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    host = Host(root=str(node.root))
    engine = Engine(compose(host, [Layer("test.toml", {"extends": "k3s-cis-server"})]), host)
    key = f"{DATA_DIR}/{rel}"
    os.chmod(path, good)
    assert {f.key: f for f in engine.run_cycle(enforce=False, only=["files"]).findings()}[
        key
    ].status is Status.OK
    os.chmod(path, loose)
    found = {f.key: f for f in engine.run_cycle(enforce=True, only=["files"]).findings()}[key]
    assert found.status is Status.HEALED, found.message
    assert stat.S_IMODE(os.stat(path).st_mode) == healed


def _files(engine: Engine, enforce: bool) -> dict:
    return {f.key: f for f in engine.run_cycle(enforce=enforce, only=["files"]).findings()}
