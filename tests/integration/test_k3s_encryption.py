"""k3s_encryption on the K3s fixture's real data dir (and process, for the witnesses)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.controls.k3s_encryption import (
    MAX_AGE,
    RETRY,
    K3sEncryptionControl,
    parse_config,
    witness_fresh,
)
from k3s_agent.host import Host
from k3s_agent.k3s.discovery import scan_processes
from k3s_agent.k3s.journal import JournalSource, RunningArgsReader
from k3s_agent.k3s.node import Observer
from k3s_agent.model import Status
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.schema import PolicyError
from tests.support.k3s_fixture import K3sNode, encryption_config
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE, invocation, unit_entries, write_journal

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
        self.mono = 1000.0  # the witness cache's clock
        policy = load_policy(self.host, profile="k3s-cis-server")
        reader = RunningArgsReader(self.host, JournalSource(files=[str(self.journal)]), persist=False)
        self.control = K3sEncryptionControl(
            policy.controls["k3s_encryption"],
            self.host,
            Observer(self.host, reader, self.show, self.scan),
            clock=lambda: self.now,
            monotonic=lambda: self.mono,
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
    assert "does not match" in e.check()["cluster-hashes"].message  # the cached answer
    e.mono += MAX_AGE
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


# -- the witness cache: `k3s secrets-encrypt status` talks to the apiserver ---------------------


@pytest.fixture
def counted(enc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running fixture server whose `secrets-encrypt status` calls are counted."""
    if not JOURNAL_REMOTE:
        pytest.skip("needs systemd-journal-remote")
    log = tmp_path / "calls.log"
    monkeypatch.setenv("K3S_FIXTURE_CALLS", str(log))

    def factory(**kw):
        e = enc(**kw)
        monkeypatch.setenv("K3S_FIXTURE_ROOT", str(e.node.root))
        e.start()
        e.calls = lambda: len(log.read_text().splitlines()) if log.exists() else 0
        return e

    return factory


def _set_fixture(e: Enc, **settings) -> None:
    path = e.node.path("/etc/rancher/k3s/.k3s-fixture.json")
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **settings}))


def test_witness_is_called_once_for_many_checks(counted):
    e = counted()
    first = e.check()["cluster-hashes"]
    assert first.status is Status.OK and "cached" not in first.message
    for _ in range(20):
        e.mono += 2.5  # 20 checks over 50 s: event-driven checks in a busy minute
        found = e.check()["cluster-hashes"]
        assert found.status is Status.OK and found.observed == first.observed
    assert e.calls() == 1
    assert found.message == "cached `k3s secrets-encrypt status` answer, 50 s old"
    assert e.control.describe()["witness"]["hashmatch"] is True  # the facts survive the cache


def test_witness_is_asked_again_after_max_age(counted):
    e = counted()
    e.check()
    e.mono += MAX_AGE - 0.5
    e.check()
    assert e.calls() == 1
    e.mono += 0.5
    assert "cached" not in e.check()["cluster-hashes"].message
    assert e.calls() == 2
    e.mono -= 30  # a clock that went back is no proof of freshness
    e.check()
    assert e.calls() == 3


@pytest.mark.parametrize(
    "change",
    [
        "config-edited",  # same size, new content: mtime and hash
        "state-rewritten",  # k3s secrets-encrypt moved a stage
        "config-replaced",  # a new inode (rename over), same bytes
        "k3s-restarted",  # a new invocation of the unit
    ],
)
def test_a_local_change_asks_again(counted, change: str):
    e = counted()
    e.check()
    e.check()
    assert e.calls() == 1
    config = e.path("encryption-config.json")
    if change == "config-edited":
        raw = config.read_bytes()
        time.sleep(0.01)
        config.write_bytes(raw.replace(b'"aescbckey"', b'"aescbcKEY"'))
    elif change == "state-rewritten":
        e.write_config(config.read_bytes(), state="prepare")
    elif change == "config-replaced":
        fresh = config.with_name("new.json")
        fresh.write_bytes(config.read_bytes())
        fresh.chmod(0o600)
        os.replace(fresh, config)
    else:
        e.inv = invocation()
    found = e.check()["cluster-hashes"]
    assert "cached" not in found.message
    assert e.calls() == 2
    e.check()
    assert e.calls() == 2  # and that answer is cached in turn


def test_a_failure_is_retried_sooner(counted):
    e = counted()
    _set_fixture(e, secrets_status_fails=True)
    failed = e.check()["cluster-hashes"]
    assert failed.status is Status.DRIFT and "connection refused" in failed.message
    e.mono += RETRY - 1
    cached = e.check()["cluster-hashes"]
    assert cached.status is Status.DRIFT and e.calls() == 1
    assert cached.message.endswith(f"; cached `k3s secrets-encrypt status` answer, {RETRY - 1:.0f} s old")
    _set_fixture(e, secrets_status_fails=False)  # the apiserver is back
    e.mono += 1
    assert e.check()["cluster-hashes"].status is Status.OK
    assert e.calls() == 2
    e.mono += RETRY * 2  # a good answer lives MAX_AGE, not RETRY
    e.check()
    assert e.calls() == 2


def test_witness_max_age_option(counted, tmp_path: Path):
    e = counted()
    local = tmp_path / "policy.toml"
    local.write_text('extends = "k3s-cis-server"\n[controls.k3s_encryption]\nwitness_max_age = 0\n')
    policy = load_policy(e.host, path=str(local), dropins=False).controls["k3s_encryption"]
    e.control = K3sEncryptionControl(policy, e.host, e.control.observer, monotonic=lambda: e.mono)
    for _ in range(3):  # 0 = ask every check
        assert "cached" not in e.check()["cluster-hashes"].message
    assert e.calls() == 3


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("witness_max_age = -1", "controls.k3s_encryption.witness_max_age: must be >= 0"),
        ("witness_retry = 'soon'", "controls.k3s_encryption.witness_retry: expected a number"),
    ],
)
def test_witness_options_are_checked(tmp_path: Path, line: str, error: str):
    local = tmp_path / "policy.toml"
    local.write_text(f'extends = "none"\n[controls.k3s_encryption]\n{line}\n')
    with pytest.raises(PolicyError, match=error):
        load_policy(Host(root=str(tmp_path)), path=str(local), dropins=False)


@pytest.mark.parametrize(
    ("age", "failed", "max_age", "retry", "fresh"),
    [
        (0, False, 60, 10, True),
        (59.9, False, 60, 10, True),
        (60, False, 60, 10, False),
        (9.9, True, 60, 10, True),
        (10, True, 60, 10, False),
        (5, True, 3, 10, False),  # a failure never outlives a good answer
        (-1, False, 60, 10, False),  # clock went back
        (0, False, 0, 0, False),  # max_age 0: never cached
    ],
)
def test_witness_fresh(age: float, failed: bool, max_age: float, retry: float, fresh: bool):
    assert witness_fresh(age, failed, max_age, retry) is fresh
