"""files control on real files under a temporary root (chown needs root)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from k3s_agent import hostfs
from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.model import Status
from k3s_agent.policy.loader import Layer, compose
from tests.support.filescontrol import by_key, control, fingerprint, heal, put
from tests.support.k3stree import DATA, populate

pytestmark = pytest.mark.root

TLS = f"/{DATA}/server/tls"
NOBODY = pwd.getpwnam("nobody").pw_uid


def test_exact_mode_and_owner_drift_is_healed(root: Path) -> None:
    key = put(root / "etc/rancher/k3s/k3s.yaml", 0o644, uid=NOBODY)
    ctl = control(root, {"/etc/rancher/k3s/k3s.yaml": {"mode": "0600", "owner": "root", "group": "root"}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT
    assert "owner nobody, want root" in found.message and "mode 0644, want 0600" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED
    assert "owner nobody -> root" in result.message and "removed 0044" in result.message
    st = os.stat(key)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    assert ctl.check()[0].status is Status.OK


def test_exact_mode_also_adds_missing_bits(root: Path) -> None:
    put(root / "srv/data/file", 0o400)
    ctl = control(root, {"/srv/data/file": {"mode": "0600"}})
    result = heal(ctl)["/srv/data/file"]
    assert result.status is Status.HEALED and "added 0200" in result.message
    assert stat.S_IMODE(os.stat(root / "srv/data/file").st_mode) == 0o600


@pytest.mark.parametrize(
    ("before", "after", "removed"),
    [(0o666, 0o644, "0022"), (0o755, 0o644, "0111"), (0o4755, 0o644, "4111"), (0o777, 0o644, "0133")],
)
def test_at_most_clears_exactly_the_extra_bits(root: Path, before: int, after: int, removed: str) -> None:
    put(root / "srv/x.crt", before)
    ctl = control(root, {"/srv/x.crt": {"max_mode": "0644"}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and f"bits {removed} too many" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED and f"removed {removed}" in result.message
    assert stat.S_IMODE(os.stat(root / "srv/x.crt").st_mode) == after


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o400, 0o444, 0o000])
def test_at_most_leaves_a_stricter_file_alone(root: Path, mode: int) -> None:
    path = put(root / "srv/x.crt", mode)
    before = fingerprint(path)
    ctl = control(root, {"/srv/x.crt": {"max_mode": "0644"}})
    assert ctl.check()[0].status is Status.OK
    assert fingerprint(path) == before


def test_globs_match_within_one_component_and_skip_dotfiles(root: Path) -> None:
    populate(root)
    os.chmod(root / DATA / "server/tls/server-ca.key", 0o644)
    os.chmod(root / DATA / "server/tls/client-admin.key", 0o640)
    put(root / DATA / "server/tls/.hidden.key", 0o666)
    ctl = control(root, {f"{TLS}/*.key": {"max_mode": "0600"}})
    found = by_key(ctl.check())
    assert f"{TLS}/.hidden.key" not in found
    assert f"{TLS}/etcd/client.key" not in found  # one component: no recursion
    drifted = sorted(k for k, f in found.items() if f.status is Status.DRIFT)
    assert drifted == [f"{TLS}/client-admin.key", f"{TLS}/server-ca.key"]
    assert len(found) == 17  # 13 pairs + 4 key-only
    results = heal(ctl)
    assert {f.status for f in results.values()} == {Status.HEALED}
    assert all(f.status is Status.OK for f in ctl.check())


def test_exact_item_beats_a_glob_for_the_same_path(root: Path) -> None:
    put(root / "srv/a.conf", 0o640)
    put(root / "srv/b.conf", 0o640)
    ctl = control(root, {"/srv/*.conf": {"max_mode": "0600"}, "/srv/a.conf": {"max_mode": "0644"}})
    found = by_key(ctl.check())
    assert found["/srv/a.conf"].status is Status.OK
    assert found["/srv/a.conf"].desired == "<=0644"
    assert found["/srv/b.conf"].status is Status.DRIFT


def test_missing_is_absent_unless_required(root: Path) -> None:
    ctl = control(root, {"/srv/none": {"mode": "0600"}, "/srv/*.key": {"mode": "0600", "required": True}})
    found = by_key(ctl.check())
    assert found["/srv/none"].status is Status.ABSENT
    assert found["/srv/*.key"].status is Status.DRIFT
    result = ctl.apply([found["/srv/*.key"]])[0]
    assert result.status is Status.DRIFT and "never create" in result.message
    assert not (root / "srv").exists()


def test_planted_symlink_is_drift_and_its_target_is_untouched(root: Path) -> None:
    outside = put(root / "home/user/precious", 0o644, uid=NOBODY)
    before = fingerprint(outside)
    link = root / DATA / "server/tls/server-ca.key"
    link.parent.mkdir(parents=True)
    os.symlink(outside, link)
    ctl = control(root, {f"{TLS}/server-ca.key": {"mode": "0600", "owner": "root", "group": "root"}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT
    assert "symlink" in found.message and "not followed" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.DRIFT and "left for an operator" in result.message
    assert fingerprint(outside) == before
    assert os.path.islink(link)


def test_symlinked_parent_directory_is_never_walked(root: Path) -> None:
    outside_dir = root / "home/user/tls"
    outside = put(outside_dir / "server-ca.key", 0o644, uid=NOBODY)
    before = fingerprint(outside)
    (root / DATA / "server").mkdir(parents=True)
    os.symlink(outside_dir, root / DATA / "server/tls")
    ctl = control(
        root,
        {
            f"{TLS}/server-ca.key": {"mode": "0600", "owner": "root"},
            f"{TLS}/*.key": {"mode": "0600"},
            TLS: {"owner": "root", "recursive": True},
        },
    )
    found = by_key(ctl.check())
    assert found[f"{TLS}/server-ca.key"].status is Status.DRIFT
    assert f"{TLS} is a symlink" in found[f"{TLS}/server-ca.key"].message
    assert found[f"{TLS}/*.key"].status is Status.DRIFT  # a literal component that is a link
    assert found[TLS].status is Status.DRIFT
    results = ctl.apply([f for f in found.values() if f.status is Status.DRIFT])
    assert {r.status for r in results} == {Status.DRIFT}
    assert fingerprint(outside) == before


def test_a_wildcard_does_not_descend_a_symlinked_directory(root: Path) -> None:
    outside = put(root / "home/user/cbr0/10.42.0.9", 0o644, uid=NOBODY)
    before = fingerprint(outside)
    put(root / "var/lib/cni/networks/real/10.42.0.2", 0o644)
    os.symlink(root / "home/user/cbr0", root / "var/lib/cni/networks/linked")
    ctl = control(root, {"/var/lib/cni/networks/*/*": {"max_mode": "0600"}})
    assert set(by_key(ctl.check())) == {"/var/lib/cni/networks/real/10.42.0.2"}
    assert heal(ctl)["/var/lib/cni/networks/real/10.42.0.2"].status is Status.HEALED
    assert fingerprint(outside) == before


def test_file_swapped_for_a_link_between_check_and_apply_is_refused(root: Path) -> None:
    victim = put(root / "etc/shadow-like", 0o640)
    before = fingerprint(victim)
    managed = put(root / DATA / "server/token", 0o644)
    ctl = control(root, {f"/{DATA}/server/token": {"mode": "0600"}})
    found = ctl.check()
    assert found[0].status is Status.DRIFT
    # the race: an attacker (or a confused tool) replaces the file with a link
    os.unlink(managed)
    os.symlink(victim, managed)
    result = ctl.apply(found)[0]
    assert result.status is Status.DRIFT and "symlink" in result.message
    assert fingerprint(victim) == before


def test_directory_swapped_for_a_link_mid_walk_is_refused(root: Path) -> None:
    victim = put(root / "etc/victim/token", 0o644)
    before = fingerprint(victim)
    put(root / DATA / "server/token", 0o644)
    ctl = control(root, {f"/{DATA}/server/token": {"mode": "0600"}})
    found = ctl.check()
    os.rename(root / DATA / "server", root / DATA / "server.old")
    os.symlink(root / "etc/victim", root / DATA / "server")
    result = ctl.apply(found)[0]
    assert result.status is Status.DRIFT and f"/{DATA}/server is a symlink" in result.message
    assert fingerprint(victim) == before


def test_hard_link_to_another_file_is_not_changed(root: Path) -> None:
    victim = put(root / "etc/victim", 0o644)
    (root / "srv").mkdir()
    os.link(victim, root / "srv/key")
    ctl = control(root, {"/srv/key": {"mode": "0600"}})
    result = heal(ctl)["/srv/key"]
    assert result.status is Status.DRIFT and "hard links" in result.message
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644


def test_recursive_owner_and_file_modes_leave_directories_and_links(root: Path) -> None:
    data = populate(root)
    nested = data / "server/tls/etcd/peer-ca.key"
    os.chown(nested, NOBODY, 0)
    os.chown(data / "server/tls/temporary-certs", NOBODY, 0)
    outside = put(root / "home/user/precious", 0o666, uid=NOBODY)
    before = fingerprint(outside)
    os.symlink(outside, data / "server/tls/temporary-certs/planted.key")
    dir_mode = stat.S_IMODE(os.stat(data / "server/tls/etcd").st_mode)
    ctl = control(root, {TLS: {"owner": "root", "group": "root", "max_mode": "0644", "recursive": True}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT and found.key == TLS
    assert "owner nobody, want root" in found.message
    result = ctl.apply([found])[0]
    assert result.status is Status.HEALED and "fixed 2 entries" in result.message
    assert os.stat(nested).st_uid == 0 and os.stat(data / "server/tls/temporary-certs").st_uid == 0
    assert stat.S_IMODE(os.stat(data / "server/tls/etcd").st_mode) == dir_mode
    assert fingerprint(outside) == before
    assert ctl.check()[0].status is Status.OK


def test_default_server_profile_heals_a_populated_data_dir(root: Path) -> None:
    data = populate(root, temporary_certs=10)
    os.chmod(data / "server/tls/server-ca.key", 0o644)
    os.chmod(data / "server/cred/admin.kubeconfig", 0o666)
    os.chmod(data / "agent/client-ca.crt", 0o664)
    os.chown(data / "server/tls/etcd/server-ca.crt", NOBODY, 0)
    os.chmod(root / "etc/systemd/system/k3s.service.env", 0o644)
    policy = compose(Host(root=str(root)), [Layer("test.toml", {"extends": "k3s-cis-server"})])
    engine = Engine(policy, Host(root=str(root)))
    report = engine.run_cycle(enforce=True, only=["files"])
    found = by_key(report.findings())
    assert found[f"/{DATA}/server/tls/server-ca.key"].status is Status.HEALED
    assert found[f"/{DATA}/server/tls/server-ca.key"].cis == "1.1.21"
    assert found[f"/{DATA}/server/cred/admin.kubeconfig"].cis == "1.1.13/1.1.14"
    assert "removed 0066" in found[f"/{DATA}/server/cred/admin.kubeconfig"].message
    assert found[f"/{DATA}/agent/client-ca.crt"].status is Status.HEALED
    assert found[TLS].status is Status.HEALED  # the recursive owner item (CIS 1.1.19)
    assert found["/etc/systemd/system/k3s.service.env"].status is Status.HEALED
    assert f"/{DATA}/server/node-token" not in found  # the symlink is not a policy item
    assert os.path.islink(data / "server/node-token")
    again = engine.run_cycle(enforce=False, only=["files"])
    assert [f.key for f in again.findings() if f.status not in (Status.OK, Status.ABSENT)] == []


def test_recursive_heal_goes_on_past_an_entry_removed_meanwhile(root: Path, monkeypatch) -> None:
    data = populate(root)
    first = put(data / "server/tls/aaa-gone.key", 0o644, uid=NOBODY)
    last = put(data / "server/tls/zzz-kept.key", 0o644, uid=NOBODY)
    ctl = control(root, {TLS: {"owner": "root", "recursive": True}})
    found = ctl.check()[0]
    assert found.status is Status.DRIFT
    real_change = hostfs.change

    def racing_change(root, path, *args, **kw):
        if path.endswith("aaa-gone.key") and first.exists():
            first.unlink()  # K3s removed it after our walk listed it
        return real_change(root, path, *args, **kw)

    monkeypatch.setattr(hostfs, "change", racing_change)
    result = ctl.apply([found])[0]
    # Before: FileNotFoundError ended the heal as FAILED with zzz-kept.key untouched.
    assert result.status is Status.HEALED, result.message
    assert os.stat(last).st_uid == 0
