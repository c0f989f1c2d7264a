"""k3s_encryption on the K3s fixture's real data dir (and process, for the witnesses)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import pytest
from k3s_fixture import K3sNode, encryption_config
from k3s_fixture.journalfile import JOURNAL_REMOTE, invocation, unit_entries, write_journal

from k3s_agent.controls.k3s_encryption import K3sEncryptionControl, parse_config
from k3s_agent.host import Host
from k3s_agent.k3s.discovery import scan_processes
from k3s_agent.k3s.journal import JournalSource, RunningArgsReader
from k3s_agent.k3s.node import Observer
from k3s_agent.model import Status
from k3s_agent.policy.loader import load_policy

pytestmark = pytest.mark.root
CRED = "/var/lib/rancher/k3s/server/cred"


class Enc:
    def __init__(self, root: Path, role: str = "server", config: Optional[str] = None, fixture=None):
        self.node = K3sNode(root, role=role, config=config, fixture=fixture)
        self.host = Host(root=str(root))
        self.proc = None
        self.journal = root / "k3s.journal"
        self.inv = invocation()
        self.now = time.time()
        policy = load_policy(self.host, profile="k3s-cis-server")
        reader = RunningArgsReader(self.host, JournalSource(files=[str(self.journal)]), persist=False)
        self.control = K3sEncryptionControl(
            policy.controls["k3s_encryption"],
            self.host,
            Observer(self.host, reader, self.show, self.scan),
            clock=lambda: self.now,
        )

    def show(self, host: Host, unit: str) -> dict[str, str]:
        if self.proc and unit == self.node.unit:
            return {"MainPID": str(self.proc.pid), "InvocationID": self.inv}
        return {}

    def scan(self):
        return [p for p in scan_processes() if self.proc and p.pid == self.proc.pid]

    def start(self):
        self.proc = self.node.start()
        write_journal(
            self.journal,
            unit_entries(self.node.unit, self.inv, self.proc.log_lines(), int(time.time() * 1e6)),
        )
        return self.proc

    def path(self, name: str) -> Path:
        return self.node.path(f"{CRED}/{name}")

    def write_config(self, raw: bytes, state: Optional[str] = None) -> None:
        self.path("encryption-config.json").write_bytes(raw)
        stage = state or "start"
        self.path("encryption-state.json").write_text(f"{stage}-{hashlib.sha256(raw).hexdigest()}")

    def check(self) -> dict[str, object]:
        return {f.key: f for f in self.control.check()}


@pytest.fixture
def enc(tmp_path: Path):
    made = []

    def factory(**kw) -> Enc:
        e = Enc(tmp_path / f"n{len(made)}", **kw)
        made.append(e)
        return e

    yield factory
    for e in made:
        if e.proc:
            e.proc.stop()


def _config(first: dict, second: Optional[dict] = None) -> bytes:
    providers = [first] + ([second] if second else [])
    doc = {
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


AESCBC = {"aescbc": {"keys": [{"name": "k", "secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIzNDU2Nzg="}]}}


def test_good_config(enc):
    e = enc()
    found = e.check()
    assert found["encryption-config"].status is Status.OK
    assert found["encryption-config"].observed == "aescbc,identity"
    assert found["encryption-state"].status is Status.OK and found["encryption-state"].observed == "start"
    # Not running: the apiserver flag is judged from the configuration, witnesses absent.
    assert (
        found["apiserver-flag"].status is Status.OK and "configured only" in found["apiserver-flag"].message
    )
    assert found["cluster-hashes"].status is Status.ABSENT


def test_identity_first_is_drift(enc):
    e = enc()
    e.write_config(_config({"identity": {}}, AESCBC))
    found = e.check()["encryption-config"]
    assert found.status is Status.DRIFT and "identity is the first provider" in found.message


def test_hash_mismatch_after_an_edit(enc):
    e = enc()
    config = e.path("encryption-config.json")
    config.write_bytes(config.read_bytes().replace(b'"aescbckey"', b'"edited"'))
    found = e.check()["encryption-state"]
    assert found.status is Status.DRIFT and "hash mismatch" in found.message
    # Same content re-serialised with whitespace: still a mismatch (raw bytes are hashed).
    e.write_config(encryption_config())
    assert e.check()["encryption-state"].status is Status.OK
    config.write_bytes(json.dumps(json.loads(config.read_bytes()), indent=2).encode())
    assert e.check()["encryption-state"].status is Status.DRIFT


def test_bad_json(enc):
    e = enc()
    e.write_config(b'{"kind": "EncryptionConfiguration", ')
    found = e.check()["encryption-config"]
    assert found.status is Status.DRIFT and found.message.startswith("not valid JSON")


def test_wrong_mode_and_owner(enc):
    e = enc()
    config = e.path("encryption-config.json")
    config.chmod(0o644)
    found = e.check()["encryption-config"]
    assert found.status is Status.DRIFT and "mode 0644" in found.message
    config.chmod(0o600)
    os.chown(config, 1000, 0)
    assert "owner 1000:0" in e.check()["encryption-config"].message
    os.chown(config, 0, 0)
    e.path("encryption-state.json").chmod(0o640)
    assert "mode 0640" in e.check()["encryption-state"].message


def test_symlinked_config_is_not_followed(enc, tmp_path: Path):
    e = enc()
    config = e.path("encryption-config.json")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(elsewhere)
    found = e.check()
    assert found["encryption-config"].status is Status.DRIFT
    assert "symlink" in found["encryption-config"].message


def test_stuck_rotation(enc):
    e = enc()
    e.write_config(_config(AESCBC, {"identity": {}}), state="reencrypt_active")
    assert e.check()["encryption-state"].status is Status.OK  # in progress, within the limit
    e.now = time.time() + 2 * 3600
    found = e.check()["encryption-state"]
    assert found.status is Status.DRIFT and "stuck in stage reencrypt_active" in found.message


def test_aesgcm_is_flagged(enc):
    e = enc()
    e.write_config(
        _config(
            {"aesgcm": {"keys": [{"name": "g", "secret": "c2VjcmV0c2VjcmV0c2VjcmV0MTI="}]}}, {"identity": {}}
        )
    )
    found = e.check()["encryption-config"]
    assert found.status is Status.DRIFT and "refuses to rotate" in found.message


def test_state_not_in_k3s_format(enc):
    e = enc()
    e.path("encryption-state.json").write_text('{"stage": "start"}')
    assert e.check()["encryption-state"].message == "not <stage>-<sha256 hex>"


def test_missing_config_when_encryption_off(enc):
    e = enc(config='write-kubeconfig-mode: "0600"\n')
    e.path("encryption-config.json").unlink()
    found = e.check()["encryption-config"]
    assert found.status is Status.DRIFT and "secrets-encryption is not enabled" in found.message


def test_agent_node_is_absent(enc):
    e = enc(role="agent")
    assert {f.status for f in e.control.check()} == {Status.ABSENT}


def test_verify_only(enc):
    e = enc()
    e.write_config(_config({"identity": {}}, AESCBC))
    drift = [f for f in e.control.check() if f.status is Status.DRIFT]
    before = e.path("encryption-config.json").read_bytes()
    results = e.control.apply(drift)
    assert {r.status for r in results} == {Status.DRIFT}
    assert all("verify-only" in r.message for r in results)
    assert e.path("encryption-config.json").read_bytes() == before


@pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")
def test_running_apiserver_flag_and_witness(enc, monkeypatch: pytest.MonkeyPatch):
    e = enc()
    monkeypatch.setenv("K3S_FIXTURE_ROOT", str(e.node.root))
    e.start()
    found = e.check()
    assert found["apiserver-flag"].status is Status.OK
    assert found["apiserver-flag"].observed == f"{CRED}/encryption-config.json"
    assert found["cluster-hashes"].status is Status.OK and "stage start" in found["cluster-hashes"].observed


@pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")
def test_witness_mismatch_and_failure_are_reported(enc, monkeypatch: pytest.MonkeyPatch):
    e = enc(fixture={"hash_mismatch_across_servers": True})
    monkeypatch.setenv("K3S_FIXTURE_ROOT", str(e.node.root))
    e.start()
    found = e.check()["cluster-hashes"]
    assert found.status is Status.DRIFT and "does not match" in found.message
    fixture = e.node.path("/etc/rancher/k3s/.k3s-fixture.json")
    fixture.write_text(json.dumps({**json.loads(fixture.read_text()), "secrets_status_fails": True}))
    failed = e.check()
    assert failed["cluster-hashes"].status is Status.DRIFT
    assert "connection refused" in failed["cluster-hashes"].message
    assert failed["encryption-config"].status is Status.OK  # the rest is unaffected


@pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")
def test_running_without_encryption_flag(enc, monkeypatch: pytest.MonkeyPatch):
    e = enc(config="protect-kernel-defaults: true\n")  # secrets-encryption not configured
    monkeypatch.setenv("K3S_FIXTURE_ROOT", str(e.node.root))
    e.start()
    found = e.check()["apiserver-flag"]
    assert found.status is Status.DRIFT and "not set" in found.message


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[]", "not an EncryptionConfiguration"),
        (_config(AESCBC).replace(b'"secrets"', b'"configmaps"'), "secrets are not covered"),
        (_config({"aescbc": {"keys": []}}), "has no keys"),
        (_config(AESCBC).replace(b"v1", b"v2"), "unexpected apiVersion"),
    ],
)
def test_parse_config_problems(raw: bytes, problem: str):
    assert problem in parse_config(raw)[2]
