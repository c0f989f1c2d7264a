"""files control: policy validation and the mode arithmetic (no host changes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.controls.files import Rule, describe_change
from k3s_agent.host import Host
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.schema import PolicyError


def load(root: Path, items: dict[str, Any]) -> Any:
    layer = Layer("/etc/k3s-agentd/policy.toml", {"extends": "none", "controls": {"files": {"items": items}}})
    return compose(Host(root=str(root)), [layer])


def refused(root: Path, items: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as info:
        load(root, items)
    return str(info.value)


def test_a_valid_item_loads(root: Path) -> None:
    policy = load(root, {"/srv/*.key": {"max_mode": "0600", "owner": "root", "group": "root"}})
    assert policy.controls["files"].items["/srv/*.key"]["max_mode"] == "0600"


def test_unknown_user_and_group_are_validation_errors_naming_the_key(root: Path) -> None:
    text = refused(root, {"/srv/a": {"mode": "0600", "owner": "no-such-user-x", "group": "no-such-grp-x"}})
    assert "controls.files.items.\"/srv/a\".owner: no user 'no-such-user-x' on this host" in text
    assert "no group 'no-such-grp-x'" in text
    assert "/etc/k3s-agentd/policy.toml" in text


def test_unknown_user_cannot_be_waved_through_with_accept_risk(root: Path) -> None:
    assert "no user" in refused(root, {"/srv/a": {"owner": "no-such-user-x", "accept_risk": "please"}})


@pytest.mark.parametrize("mode", ["600x", "0800", "rw-------", "12345", ""])
def test_bad_mode_strings_are_refused(root: Path, mode: str) -> None:
    assert "not an octal mode string" in refused(root, {"/srv/a": {"mode": mode}})


def test_integer_mode_is_refused_because_600_is_not_0o600(root: Path) -> None:
    assert "expected a string" in refused(root, {"/srv/a": {"mode": 600}})


@pytest.mark.parametrize("key", ["srv/a", "/srv//a", "/srv/../etc", "/srv/a/", "/srv/**/a"])
def test_item_keys_must_be_clean_absolute_paths(root: Path, key: str) -> None:
    assert f'"{key}"' in refused(root, {key: {"mode": "0600"}})


def test_mode_and_max_mode_together_are_refused(root: Path) -> None:
    text = refused(root, {"/srv/a": {"mode": "0600", "max_mode": "0644", "accept_risk": "x"}})
    assert "either mode or max_mode" in text


def test_an_item_with_nothing_to_enforce_is_refused(root: Path) -> None:
    assert "nothing to enforce" in refused(root, {"/srv/a": {"recursive": True}})


def test_recursive_near_the_root_needs_accept_risk(root: Path) -> None:
    assert "reaches far beyond" in refused(root, {"/etc": {"owner": "root", "recursive": True}})
    ok = load(root, {"/etc": {"owner": "root", "recursive": True, "accept_risk": "lab box"}})
    assert "/etc" in ok.controls["files"].items


def test_default_profiles_validate_on_this_host(root: Path) -> None:
    for profile in ("k3s-cis-agent", "k3s-cis-server"):
        policy = compose(Host(root=str(root)), [Layer("x", {"extends": profile})])
        items = policy.controls["files"].items
        assert "/var/lib/rancher/k3s/agent/kubelet.kubeconfig" in items
        assert ("/var/lib/rancher/k3s/server/tls/*.key" in items) == (profile == "k3s-cis-server")


def test_target_mode_arithmetic() -> None:
    at_most = Rule("/x", max_mode=0o644)
    assert at_most.target_mode(0o640) is None
    assert at_most.target_mode(0o666) == 0o644
    assert at_most.target_mode(0o2755) == 0o644
    exact = Rule("/x", mode=0o600)
    assert exact.target_mode(0o600) is None
    assert exact.target_mode(0o400) == 0o600


def test_describe_change_names_removed_bits() -> None:
    before = os.stat_result((0o100755, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    after = os.stat_result((0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    assert describe_change(before, after) == "mode 0755 -> 0644 (removed 0111)"
