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
    policy = load(root, {"/srv/app/tls/*.key": {"max_mode": "0600", "owner": "root", "group": "root"}})
    assert policy.controls["files"].items["/srv/app/tls/*.key"]["max_mode"] == "0600"


def test_unknown_user_and_group_are_validation_errors_naming_the_key(root: Path) -> None:
    item = {"mode": "0600", "owner": "no-such-user-x", "group": "no-such-grp-x"}
    text = refused(root, {"/srv/app/a": item})
    assert "controls.files.items.\"/srv/app/a\".owner: no user 'no-such-user-x' on this host" in text
    assert "no group 'no-such-grp-x'" in text
    assert "/etc/k3s-agentd/policy.toml" in text


def test_unknown_user_cannot_be_waved_through_with_accept_risk(root: Path) -> None:
    assert "no user" in refused(root, {"/srv/app/a": {"owner": "no-such-user-x", "accept_risk": "please"}})


@pytest.mark.parametrize("mode", ["600x", "0800", "rw-------", "12345", ""])
def test_bad_mode_strings_are_refused(root: Path, mode: str) -> None:
    assert "not an octal mode string" in refused(root, {"/srv/app/a": {"mode": mode}})


def test_integer_mode_is_refused_because_600_is_not_0o600(root: Path) -> None:
    assert "expected a string" in refused(root, {"/srv/app/a": {"mode": 600}})


@pytest.mark.parametrize(
    "key", ["srv/app/a", "/srv//app/a", "/srv/app/../etc", "/srv/app/a/", "/srv/app/**/a"]
)
def test_item_keys_must_be_clean_absolute_paths(root: Path, key: str) -> None:
    assert f'"{key}"' in refused(root, {key: {"mode": "0600"}})


def test_mode_and_max_mode_together_are_refused(root: Path) -> None:
    text = refused(root, {"/srv/app/a": {"mode": "0600", "max_mode": "0644", "accept_risk": "x"}})
    assert "either mode or max_mode" in text


def test_an_item_with_nothing_to_enforce_is_refused(root: Path) -> None:
    assert "nothing to enforce" in refused(root, {"/srv/app/a": {"recursive": True}})


def test_recursive_near_the_root_needs_accept_risk(root: Path) -> None:
    assert "too close to /" in refused(root, {"/etc": {"owner": "root", "recursive": True}})
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


# -- hostile and foot-gun keys (issue 12) --------------------------------------------------

TOO_SHALLOW = [
    "/",
    "/*",
    "/etc",
    "/usr",
    "/tmp",
    "/etc/*",
    "/etc/shadow",
    "/var/lib",
    "/var/lib/*",  # three levels, but the wildcard matches every /var/lib/X
    "/usr/bin/*",
    "/*/ssh/sshd_config",
    "/etc/*/sshd_config",
    "/e?c/ssh/sshd_config",
    "/etc/ss[h]/sshd_config",
]
DEEP_ENOUGH = [
    "/etc/ssh/sshd_config",
    "/etc/rancher/k3s/k3s.yaml",
    "/etc/ssh/sshd_config.d/*.conf",
    "/etc/systemd/system/k3s*.service.env",
    "/var/lib/rancher/k3s/agent/*.crt",
    "/var/lib/k3s-agentd/*",
]


@pytest.mark.parametrize("key", TOO_SHALLOW)
def test_a_path_or_glob_near_the_root_is_refused(root: Path, key: str) -> None:
    text = refused(root, {key: {"mode": "0777"}})
    assert f'controls.files.items."{key}": {key} is too close to /' in text
    assert "accept_risk" in text


@pytest.mark.parametrize("key", TOO_SHALLOW)
def test_a_path_near_the_root_loads_with_accept_risk(root: Path, key: str) -> None:
    policy = load(root, {key: {"max_mode": "0755", "accept_risk": "lab box, I know"}})
    assert key in policy.controls["files"].items


@pytest.mark.parametrize("key", DEEP_ENOUGH)
@pytest.mark.parametrize("recursive", [False, True])
def test_paths_three_levels_deep_load(root: Path, key: str, recursive: bool) -> None:
    policy = load(root, {key: {"max_mode": "0600", "owner": "root", "recursive": recursive}})
    assert key in policy.controls["files"].items


@pytest.mark.parametrize(
    ("key", "owner"),
    [
        ("/srv/app/data", "nobody"),  # the overflow user owns nothing, anywhere
        ("/etc/rancher/k3s/k3s.yaml", "nobody"),
        ("/etc/rancher/k3s/k3s.yaml", "daemon"),  # a system path given to a non-root user
        ("/usr/local/bin/k3s", "daemon"),
        ("/boot/grub/grub.cfg", "daemon"),
    ],
)
def test_giving_system_paths_or_anything_to_nobody_is_refused(root: Path, key: str, owner: str) -> None:
    text = refused(root, {key: {"owner": owner}})
    assert f'controls.files.items."{key}":' in text and f"to user {owner}" in text
    assert key in load(root, {key: {"owner": owner, "accept_risk": "really"}}).controls["files"].items


def test_a_non_root_owner_outside_system_paths_loads(root: Path) -> None:
    assert "/srv/app/data" in load(root, {"/srv/app/data": {"owner": "daemon"}}).controls["files"].items


@pytest.mark.parametrize(
    "key",
    [
        "/srv/app/a\x00b",
        "/srv/app/a\nb",
        "/srv/app/a\rb",
        "/srv/app/\x1b[31m",
        "/srv/app/\x7f",
        "/srv/app/\x85x",
    ],
)
def test_control_characters_in_keys_are_refused_even_with_accept_risk(root: Path, key: str) -> None:
    text = refused(root, {key: {"mode": "0600", "accept_risk": "x"}})
    assert "control character" in text


@pytest.mark.parametrize(
    ("key", "reason"),
    [("/srv/app/" + "a" * 256, "longer than 255 bytes"), ("/srv" + "/a" * 70, "more than 64 levels")],
)
def test_keys_the_kernel_cannot_resolve_are_refused(root: Path, key: str, reason: str) -> None:
    assert reason in refused(root, {key: {"mode": "0600"}})


@pytest.mark.parametrize("field", ["owner", "group"])
def test_a_nul_in_owner_or_group_is_a_policy_error(root: Path, field: str) -> None:
    assert "no " in refused(root, {"/srv/app/a": {field: "ro\x00ot"}})


@pytest.mark.parametrize("kind", ["file", "dir", "any"])
def test_type_takes_file_dir_or_any(root: Path, kind: str) -> None:
    policy = load(root, {"/srv/app/a": {"mode": "0600", "type": kind}})
    assert policy.controls["files"].items["/srv/app/a"]["type"] == kind


@pytest.mark.parametrize("kind", ["folder", "regular", "", "File"])
def test_an_unknown_type_is_refused(root: Path, kind: str) -> None:
    text = refused(root, {"/srv/app/a": {"mode": "0600", "type": kind}})
    assert 'type: must be "file", "dir" or "any"' in text


def test_recursive_file_is_a_contradiction(root: Path) -> None:
    item = {"owner": "root", "recursive": True, "type": "file", "accept_risk": "x"}
    text = refused(root, {"/srv/app/a": item})
    assert 'recursive needs type = "dir" or "any"' in text


def test_every_builtin_item_says_what_it_expects(root: Path) -> None:
    for profile in ("k3s-cis-agent", "k3s-cis-server"):
        policy = compose(Host(root=str(root)), [Layer("x", {"extends": profile})])
        untyped = [k for k, item in policy.controls["files"].items.items() if "type" not in item]
        assert untyped == [], profile
