"""The lock-out guard's building blocks: accounts read through the Host, key lines, sshd's patterns."""

from __future__ import annotations

import base64
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
    _step_usable,
    address_boundaries,
    forbids_shell,
    host_list_matches,
    probe_address,
    probe_addresses,
    user_pattern_matches,
)
from k3s_agent.controls.sshd_lockout import expired, key_file_paths, parse_key_line, readable_by
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


def blob(*fields: bytes) -> str:
    """A key blob: length-prefixed fields (RFC 4253 6.6), base64 as in authorized_keys."""
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


ED = blob(b"ssh-ed25519", b"k" * 32)
ECDSA = blob(b"ecdsa-sha2-nistp256", b"nistp256", b"\x04" + b"q" * 64)
SK = blob(b"sk-ssh-ed25519@openssh.com", b"k" * 32, b"ssh:")
RSA2048 = blob(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + b"\xff" * 256)
RSA1024 = blob(b"ssh-rsa", b"\x01\x00\x01", b"\x00" + b"\xff" * 128)


@pytest.mark.parametrize(
    ("line", "keytype", "options"),
    [
        (f"ssh-ed25519 {ED} c", "ssh-ed25519", {}),
        (f"  ecdsa-sha2-nistp256 {ECDSA}", "ecdsa-sha2-nistp256", {}),
        (f"sk-ssh-ed25519@openssh.com {SK}", "sk-ssh-ed25519@openssh.com", {}),
        (f'from="{FROM}",no-pty ssh-rsa {RSA2048} x y', "ssh-rsa", {"from": FROM, "no-pty": ""}),
        (f'command="echo a, b c" ssh-ed25519 {ED}', "ssh-ed25519", {"command": "echo a, b c"}),
        (f"cert-authority ssh-ed25519 {ED}", "ssh-ed25519", {"cert-authority": ""}),
        (f'Restrict,PTY,expiry-time="20990101" ssh-ed25519 {ED}', "ssh-ed25519",
         {"restrict": "", "pty": "", "expiry-time": "20990101"}),
        (f"# ssh-ed25519 {ED}", None, None),
        ("", None, None),
        ("garbage", None, None),
        # lines sshd skips, so no way in (found attacking the guard)
        (f"no-such-option ssh-ed25519 {ED}", None, None),  # unknown option: "bad options", line skipped
        (f"ssh-ed25519 {ED[:40]}", None, None),  # a paste cut short
        (f"ssh-ed25519 {ED[:-4]}x!==", None, None),  # not base64
        (f"ssh-ed25519 {RSA2048}", None, None),  # the blob is another type's
        ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 x", None, None),  # modulus cut off
        ("ssh-ed25519 AAAA", None, None),
    ],
)  # fmt: skip
def test_authorized_keys_lines(line: str, keytype: Optional[str], options: Optional[dict[str, str]]) -> None:
    key = parse_key_line(line)
    if keytype is None:
        assert key is None
    else:
        assert key is not None and (key.keytype, dict(key.options)) == (keytype, options)


def test_rsa_key_size_is_read_from_the_modulus() -> None:
    assert [parse_key_line(f"ssh-rsa {b}").bits for b in (RSA2048, RSA1024)] == [2048, 1024]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "gone"),
    [
        ("20000101", True),
        ("200001010000Z", True),
        ("20990101", False),
        ("209901011200", False),
        ("20990101120000Z", False),
        ("2099-01-01", True),  # sshd cannot parse it: the line is skipped
        ("20991301", True),
    ],
)
def test_key_expiry_time(value: str, gone: bool) -> None:
    key = parse_key_line(f'expiry-time="{value}" ssh-ed25519 {ED}')
    assert key is not None and expired(key) is gone


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


@pytest.mark.parametrize(
    ("network", "boundaries", "addresses"),
    [
        ("10.20.0.0/16", [], ["10.20.0.1"]),
        ("10.20.0.0/16", ["10.20.128.0/17"], ["10.20.0.1", "10.20.128.1"]),
        ("10.20.0.0/16", ["10.30.0.0/16", "10.0.0.0/8"], ["10.20.0.1"]),  # outside, or covering all of it
        ("10.20.0.0/24", ["10.20.0.1"], ["10.20.0.1", "10.20.0.129"]),  # a /32 that is the first probe
        ("10.20.0.0/16", ["10.20.0.0/24", "10.20.0.0/25"], ["10.20.0.1", "10.20.128.1", "10.20.0.129"]),
        ("fd00::/48", ["fd00:0:0:8000::/49"], ["fd00::1", "fd00:0:0:8000::1"]),
        ("0.0.0.0/0", ["10.0.0.0/8"], ["192.0.2.10"]),  # anywhere = from some address
        ("10.20.0.0/16", ["fd00::/8"], ["10.20.0.1"]),
    ],
)
def test_probe_addresses_split_a_network_where_the_config_does(
    network: str, boundaries: list[str], addresses: list[str]
) -> None:
    nets = [ipaddress.ip_network(b) for b in boundaries]
    assert probe_addresses(ipaddress.ip_network(network), nets) == addresses


def test_address_boundaries_come_from_match_address_and_user_at_host() -> None:
    found = address_boundaries(
        ["Match Address 10.1.0.0/16,!10.1.2.0/24 User ops", "Match User x", "Match address fd00::1"],
        ["ops@192.168.0.0/16", "dev@*.example.com", "root", "x@10.9.9.9,10.*"],
    )
    assert [str(n) for n in found] == [
        "10.1.0.0/16", "10.1.2.0/24", "fd00::1/128", "192.168.0.0/16", "10.9.9.9/32",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("step", "usable"),
    [
        ("publickey", True),
        ("password", False),
        ("keyboard-interactive:pam", True),
        ("keyboard-interactive:bsdauth", False),  # no such device on Linux
        ("publickey:x", False),  # only keyboard-interactive takes a submethod
    ],
)
def test_authentication_method_steps(step: str, usable: bool) -> None:
    assert _step_usable(step, {"publickey", "keyboard-interactive"}) is usable


@pytest.mark.parametrize(
    ("mode", "owner", "group", "readable"),
    [
        (0o600, 1000, 1000, True),
        (0o600, 0, 0, False),  # root's file in the user's home: sshd opens it as the user
        (0o640, 0, 5000, True),  # a group of the user's
        (0o604, 0, 0, True),
        (0o066, 1000, 1000, False),  # the owner's bits decide for the owner
    ],
)
def test_key_files_are_read_as_the_user_would(
    root: Path, mode: int, owner: int, group: int, readable: bool
) -> None:
    _write(root, "home/ops/.ssh/authorized_keys", "", mode)
    os.chown(root / "home/ops/.ssh/authorized_keys", owner, group)
    user = Account("ops", 1000, 1000, "/home/ops", "/bin/sh", gids=frozenset({1000, 5000}))
    st = os.stat(root / "home/ops/.ssh/authorized_keys")
    assert readable_by(Host(root=str(root)), "/home/ops/.ssh/authorized_keys", st, user) is readable
    os.chmod(root / "home/ops", 0o700)  # root's 0755 home dir made private: not searchable by ops
    assert readable_by(Host(root=str(root)), "/home/ops/.ssh/authorized_keys", st, user) is False
