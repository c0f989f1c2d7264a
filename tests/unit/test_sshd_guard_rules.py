"""The lock-out guard's building blocks: accounts read through the Host, key lines, sshd's patterns."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.controls.sshd_accounts import (
    EMPTY,
    LOCKED,
    UNKNOWN,
    USABLE,
    Account,
    password_state,
    read_accounts,
)
from k3s_agent.controls.sshd_guard import (
    _listen_host,
    forbids_shell,
    host_list_matches,
    probe_address,
    user_pattern_matches,
)
from k3s_agent.controls.sshd_lockout import key_file_paths, parse_key_line
from k3s_agent.host import Host

HASH = "$y$j9T$salt$hashhashhash"
FROM = "10.0.0.0/8,!10.1.0.0/16"


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


@pytest.fixture
def etc(root: Path) -> Path:
    _write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n"
        "ops:x:1000:1000::/home/ops:\n"
        "old:oldhash-in-passwd:1001:1001::/home/old:/bin/sh\n"
        "ghost:x:1002:1002::/home/ghost:/bin/sh\n"
        "# comment\n+nis-entry\nbroken:line\n",
    )
    _write(root, "etc/group", "root:x:0:\nops:x:1000:\nadmins:x:5000:ghost,ops\n")
    _write(root, "etc/shadow", f"root:!:1::::::\nops:{HASH}:1::::::\nnot-in-passwd:x:1::::::\n", 0o640)
    return root


def test_accounts_come_from_the_roots_own_files(etc: Path) -> None:
    accounts = read_accounts(Host(root=str(etc)))
    assert sorted(a.name for a in accounts.all()) == ["ghost", "old", "ops", "root"]
    ops = accounts.get("ops")
    assert ops is not None and (ops.uid, ops.home, ops.shell) == (
        1000,
        "/home/ops",
        "/bin/sh",
    )  # empty = /bin/sh
    assert ops.password == USABLE and ops.groups == {"ops", "admins"}
    assert accounts.get("root").password == LOCKED and accounts.get("root").hash_prefix == "!"  # type: ignore[union-attr]
    assert accounts.get("ghost").password == LOCKED  # type: ignore[union-attr] # no shadow line: no password
    assert accounts.get("old").password == USABLE  # type: ignore[union-attr] # a hash in passwd itself
    assert accounts.notes == ()


@pytest.mark.parametrize("mode", [0o664, 0o666])
def test_a_shadow_others_can_write_is_not_trusted(etc: Path, mode: int) -> None:
    os.chmod(etc / "etc/shadow", mode)
    accounts = read_accounts(Host(root=str(etc)))
    assert accounts.get("ops").password == UNKNOWN  # type: ignore[union-attr]
    assert accounts.notes == ("/etc/shadow is not root's alone: not trusted",)


def test_a_shadow_that_is_a_link_is_not_followed(etc: Path) -> None:
    (etc / "etc/shadow").rename(etc / "etc/shadow.real")
    (etc / "etc/shadow").symlink_to("shadow.real")
    accounts = read_accounts(Host(root=str(etc)))
    assert accounts.get("ops").password == UNKNOWN  # type: ignore[union-attr]
    assert "/etc/shadow not read" in accounts.notes[0]


@pytest.mark.parametrize(
    ("secret", "state"),
    [
        (HASH, USABLE),
        ("!" + HASH, LOCKED),
        ("!", LOCKED),
        ("*", LOCKED),
        ("!!", LOCKED),
        ("", EMPTY),
        (None, UNKNOWN),
    ],
)
def test_password_states(secret: Optional[str], state: str) -> None:
    assert password_state(secret) == state


@pytest.mark.parametrize(
    ("line", "keytype", "options"),
    [
        ("ssh-ed25519 AAAA c", "ssh-ed25519", {}),
        ("  ecdsa-sha2-nistp256 AAAA", "ecdsa-sha2-nistp256", {}),
        ("sk-ssh-ed25519@openssh.com AAAA", "sk-ssh-ed25519@openssh.com", {}),
        ('from="10.0.0.0/8,!10.1.0.0/16",no-pty ssh-rsa AAAA x y', "ssh-rsa", {"from": FROM, "no-pty": ""}),
        ('command="echo a, b c" ssh-ed25519 AAAA', "ssh-ed25519", {"command": "echo a, b c"}),
        ("cert-authority ssh-ed25519 AAAA", "ssh-ed25519", {"cert-authority": ""}),
        ("# ssh-ed25519 AAAA", None, None),
        ("", None, None),
        ("garbage", None, None),
    ],
)  # fmt: skip
def test_authorized_keys_lines(line: str, keytype: Optional[str], options: Optional[dict[str, str]]) -> None:
    key = parse_key_line(line)
    if keytype is None:
        assert key is None
    else:
        assert key is not None and (key.keytype, dict(key.options)) == (keytype, options)


def test_authorized_keys_file_tokens() -> None:
    user = Account("ops", 1000, 1000, "/home/ops", "/bin/sh")
    files = [".ssh/authorized_keys", "%h/.ssh/k2", "/etc/ssh/keys/%u", "/var/keys/%U.%%", "none", "NONE"]
    assert key_file_paths(user, files) == [
        "/home/ops/.ssh/authorized_keys",
        "/home/ops/.ssh/k2",
        "/etc/ssh/keys/ops",
        "/var/keys/1000.%",
    ]


@pytest.mark.parametrize(
    ("pattern", "user", "address", "matched"),
    [
        ("ops", "ops", "10.1.2.3", True),
        ("o?s", "ops", "10.1.2.3", True),
        ("*", "anyone", "2001:db8::10", True),
        ("dev", "ops", "10.1.2.3", False),
        ("ops@10.0.0.0/8", "ops", "10.1.2.3", True),
        ("ops@10.0.0.0/8", "ops", "192.0.2.10", False),
        ("ops@10.*", "ops", "10.1.2.3", True),
        ("ops@!10.0.0.0/8,*", "ops", "10.1.2.3", False),
        ("ops@!10.0.0.0/8,*", "ops", "192.0.2.10", True),
        ("*@fd00::/8", "ops", "fd00:10::1", True),
        ("*@fd00::/8", "ops", "2001:db8::10", False),
    ],
)
def test_user_at_host_patterns(pattern: str, user: str, address: str, matched: bool) -> None:
    assert user_pattern_matches(pattern, user, address) is matched


def test_host_list_needs_a_positive_match() -> None:
    assert host_list_matches("!10.0.0.0/8", "192.0.2.10") is False


@pytest.mark.parametrize(
    ("network", "address"),
    [
        ("0.0.0.0/0", "192.0.2.10"),
        ("::/0", "2001:db8::10"),
        ("10.20.0.0/16", "10.20.0.1"),
        ("192.168.1.7/32", "192.168.1.7"),
        ("192.168.1.6/31", "192.168.1.7"),
        ("fd00:10::/64", "fd00:10::1"),
    ],
)
def test_probe_address_is_inside_and_not_the_network_address(network: str, address: str) -> None:
    assert probe_address(ipaddress.ip_network(network)) == address


@pytest.mark.parametrize(
    ("command", "forbids"),
    [
        ("/bin/false", True),
        ("/usr/sbin/nologin", True),
        ("internal-sftp -l INFO", True),
        ("/usr/lib/openssh/sftp-server", True),
        ("/bin/true", True),
        ("/usr/bin/tlog-rec-session", False),
        ("/usr/local/bin/audit-shell --log", False),
    ],
)
def test_force_commands_that_give_no_shell(command: str, forbids: bool) -> None:
    assert forbids_shell(command) is forbids


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:22", "0.0.0.0"),
        ("[::]:22", "::"),
        ("10.1.2.3:2222", "10.1.2.3"),
        ("[fe80::1%eth0]:22", "fe80::1"),
    ],
)
def test_listen_addresses_as_sshd_T_prints_them(listen: str, address: str) -> None:
    assert str(_listen_host(listen)) == address
