"""sshd control: config reading order, value normalisation, policy validation and lock-out lints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.host import Host
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.schema import PolicyError
from k3s_agent.sshd.config import (
    ConfigReader,
    desired_value,
    effective_value,
    normalize,
    parse_effective,
    winners,
)


@pytest.fixture(autouse=True)
def accounts(root: Path) -> None:
    """The temp root's own accounts: the guard reads passwd/group through the Host, not NSS."""
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    write(root, "etc/group", "root:x:0:\n")


# A whole key: a truncated blob is no key to sshd, nor to the guard.
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test\n"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_reading_order_first_wins_includes_sorted_and_match_blocks_skipped(root: Path) -> None:
    write(
        root,
        "etc/ssh/sshd_config",
        "# comment\nInclude /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n"
        "Match User bob\n  PasswordAuthentication yes\n  Include /etc/ssh/extra/*.conf\n"
        "Match all\nMaxAuthTries=4\n",
    )
    write(root, "etc/ssh/sshd_config.d/10-b.conf", "PermitRootLogin no\nAllowUsers carol\n")
    write(root, "etc/ssh/sshd_config.d/05-a.conf", "Match Address 10.0.0.0/8\n  X11Forwarding yes\n")
    write(root, "etc/ssh/sshd_config.d/20-c.conf", "AllowUsers dave # trailing comment\nX11Forwarding no\n")
    write(root, "etc/ssh/extra/x.conf", "Ciphers aes128-ctr\n")
    reader = ConfigReader(Host(root=str(root)))
    decided = winners(reader.read("/etc/ssh/sshd_config"))
    assert decided["permitrootlogin"][0].where == "/etc/ssh/sshd_config.d/10-b.conf:1"
    assert [d.value for d in decided["allowusers"]] == ["carol", "dave"]
    # a Match in 05-a.conf ends with that file: 20-c.conf's line is global
    assert decided["x11forwarding"][0].where == "/etc/ssh/sshd_config.d/20-c.conf:2"
    assert "passwordauthentication" not in decided and "ciphers" not in decided
    assert decided["maxauthtries"][0].value == "4"


def test_overlay_file_joins_the_include_glob_in_sorted_place(root: Path) -> None:
    write(root, "etc/ssh/sshd_config", "Include sshd_config.d/*.conf\n")
    write(root, "etc/ssh/sshd_config.d/00-foo.conf", "PermitRootLogin yes\n")
    overlay = {"/etc/ssh/sshd_config.d/01-k3s-agentd.conf": "PermitRootLogin no\nX11Forwarding no\n"}
    decided = winners(ConfigReader(Host(root=str(root)), overlay).read("/etc/ssh/sshd_config"))
    assert decided["permitrootlogin"][0].source == "/etc/ssh/sshd_config.d/00-foo.conf"
    assert decided["x11forwarding"][0].source == "/etc/ssh/sshd_config.d/01-k3s-agentd.conf"


@pytest.mark.parametrize(
    ("keyword", "value", "shown"),
    [
        ("LoginGraceTime", "1m30s", "90"),
        ("LoginGraceTime", 60, "60"),
        ("PermitRootLogin", "without-password", "prohibit-password"),
        ("PermitRootLogin", "No", "no"),
        ("X11Forwarding", False, "no"),
        ("Ciphers", ["aes256-ctr", "aes128-ctr"], "aes256-ctr,aes128-ctr"),
        ("AllowUsers", ["ops", "deploy"], "deploy ops"),
    ],
)
def test_policy_values_compare_the_way_sshd_T_prints_them(keyword: str, value: Any, shown: str) -> None:
    assert desired_value(keyword, value) == shown


def test_effective_values_from_sshd_T_output() -> None:
    effective = parse_effective(
        "permitrootlogin without-password\nallowusers b\nallowusers a\nmaxauthtries 6\n"
    )
    assert effective_value("PermitRootLogin", effective) == "prohibit-password"
    assert effective_value("AllowUsers", effective) == "a b"
    assert effective_value("MaxAuthTries", effective) == "6"
    assert effective_value("Banner", effective) is None
    assert normalize("Ciphers", "a, b") == "a,b"


def load(root: Path, items: dict[str, Any], **options: Any) -> Any:
    section = {"items": {k: {"value": v} for k, v in items.items()}, **options}
    layer = Layer("/etc/k3s-agentd/policy.d/10-ssh.toml", {"extends": "none", "controls": {"sshd": section}})
    return compose(Host(root=str(root)), [layer])


def refused(root: Path, items: dict[str, Any], **options: Any) -> str:
    with pytest.raises(PolicyError) as info:
        load(root, items, **options)
    return str(info.value)


def test_no_way_in_is_refused_unless_allow_lockout(root: Path) -> None:
    items = {"PasswordAuthentication": "no", "PubkeyAuthentication": "no"}
    text = refused(root, items)
    assert "10-ssh.toml: controls.sshd: PubkeyAuthentication no with PasswordAuthentication no" in text
    assert "allow_lockout = true" in text
    assert load(root, items, allow_lockout=True).controls["sshd"].option("allow_lockout") is True


def test_lockout_lint_cannot_be_accepted_per_item(root: Path) -> None:
    layer = Layer(
        "p.toml",
        {
            "extends": "none",
            "controls": {
                "sshd": {
                    "items": {
                        "PasswordAuthentication": {"value": "no", "accept_risk": "x"},
                        "PubkeyAuthentication": {"value": "no", "accept_risk": "x"},
                    }
                }
            },
        },
    )
    with pytest.raises(PolicyError, match="leaves no way to log in"):
        compose(Host(root=str(root)), [layer])


def test_allow_users_naming_no_account_with_a_key_is_refused(root: Path) -> None:
    base = {"PasswordAuthentication": "no", "PubkeyAuthentication": "yes"}
    assert "admit no existing account with an authorized key" in refused(
        root, {**base, "AllowUsers": ["no-such-user-x"]}
    )
    # root exists, but has no authorized key under this root yet
    assert "AllowUsers root" in refused(root, {**base, "AllowUsers": "root"})
    write(root, "root/.ssh/authorized_keys", KEY_LINE)
    assert load(root, {**base, "AllowUsers": "root"}).controls["sshd"].items["AllowUsers"]
    # ... but PermitRootLogin no shuts root out again
    assert "admit no existing account" in refused(
        root, {**base, "AllowUsers": "root", "PermitRootLogin": "no"}
    )


KEY_ONLY = {"PasswordAuthentication": "no", "PubkeyAuthentication": "yes", "AllowUsers": "root"}


NOBODY = 65534


def test_keys_behind_a_users_symlink_are_not_counted(root: Path) -> None:
    """The lint reads users' homes as root: a link a user could have made (not
    root's own) is never followed, so it neither counts someone else's keys
    nor reveals them."""
    write(root, "elsewhere/authorized_keys", KEY_LINE)
    (root / "root").mkdir()
    (root / "root/.ssh").symlink_to("../elsewhere")
    os.lchown(root / "root/.ssh", NOBODY, NOBODY)
    assert "admit no existing account with an authorized key" in refused(root, KEY_ONLY)
    (root / "root/.ssh").unlink()
    (root / "root/.ssh").mkdir()
    (root / "root/.ssh/authorized_keys").symlink_to("../../elsewhere/authorized_keys")
    os.lchown(root / "root/.ssh/authorized_keys", NOBODY, NOBODY)
    assert "admit no existing account with an authorized key" in refused(root, KEY_ONLY)
    (root / "root/.ssh/authorized_keys").unlink()
    write(root, "root/.ssh/authorized_keys", KEY_LINE)
    assert load(root, KEY_ONLY)


def test_links_only_root_could_make_are_followed(root: Path) -> None:
    """Fedora CoreOS/Silverblue: /home -> var/home. A root-owned link in a
    root-owned directory nobody else can write is the system's, and sshd
    follows it too; the same link in a group-writable directory is not."""
    write(root, "var/roothome/.ssh/authorized_keys", KEY_LINE)
    (root / "root").symlink_to("var/roothome")
    assert load(root, KEY_ONLY)
    root.chmod(0o775)
    assert "admit no existing account with an authorized key" in refused(root, KEY_ONLY)


@pytest.mark.parametrize("where", ["root/.ssh/authorized_keys", "root/.ssh", "root"])
def test_keys_sshd_would_refuse_under_strict_modes_are_not_counted(root: Path, where: str) -> None:
    """StrictModes (the default): sshd ignores a group/world-writable key file or
    directory up to the home, so it is no way in; with StrictModes no it is."""
    write(root, "root/.ssh/authorized_keys", KEY_LINE)
    (root / where).chmod(0o775 if (root / where).is_dir() else 0o664)
    assert "admit no existing account with an authorized key" in refused(root, KEY_ONLY)
    assert load(root, {**KEY_ONLY, "StrictModes": "no"})


def test_allow_users_with_password_login_only_needs_an_account(root: Path) -> None:
    assert load(root, {"PasswordAuthentication": "yes", "AllowUsers": "root"})
    assert "usable account" in refused(
        root, {"PasswordAuthentication": "yes", "AllowUsers": "no-such-user-x"}
    )


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("PermitRootLogin", "no\nPermitRootLogin yes", "newlines"),
        ("Banner", "/etc/issue # hi", "newlines, NUL and #"),
        ("Match", "all", "structure"),
        ("Include", "/tmp/x", "structure"),
        ("Permit-Root", "no", "sshd_config keyword"),
        ("Ciphers", "+aes128-cbc", "cannot be verified"),
    ],
)
def test_values_that_would_inject_or_cannot_be_verified_are_refused(
    root: Path, key: str, value: str, reason: str
) -> None:
    assert reason in refused(root, {key: value})


def test_default_profile_validates_here(root: Path) -> None:
    policy = compose(Host(root=str(root)), [Layer("x", {"extends": "k3s-cis-agent"})])
    items = policy.controls["sshd"].items
    assert items["PermitRootLogin"]["value"] == "no" and "AllowUsers" not in items


def test_the_same_keyword_twice_in_another_case_is_refused(root: Path) -> None:
    assert "are the same keyword" in refused(root, {"PermitRootLogin": "no", "permitrootlogin": "yes"})


@pytest.mark.parametrize(
    ("value", "reason"),
    [([], "must not be empty"), ([["no"]], "not lists or tables"), ([{"a": "b"}], "not lists or tables")],
)
def test_empty_or_nested_list_values_are_refused(root: Path, value: Any, reason: str) -> None:
    # Before: accepted, then rendered as "PasswordAuthentication " or "... ['no']" at apply time.
    text = refused(root, {"PasswordAuthentication": value})
    assert "controls.sshd.items.PasswordAuthentication.value" in text
    assert reason in text
