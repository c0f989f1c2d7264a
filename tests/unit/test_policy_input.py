"""Hostile policy input (issue 12): whatever stands in policy.d, loading ends in a PolicyError
naming the file, never another exception, a hang or an unbounded read."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy import loader
from k3s_agent.policy.loader import MAX_POLICY_BYTES, load_policy
from k3s_agent.policy.schema import PolicyError
from k3s_agent.policy.snapshot import BUILTIN_AUDIT, LAST_GOOD, fallback_policy, save_last_good
from k3s_agent.report import exit_code

DEEP_ARRAY = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def _regular(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)
        os.chmod(path, 0o644)

    return make


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the inode stays


# (case, how to make policy.d/50-x.toml, what the error says besides the file name)
HOSTILE = [
    ("directory", lambda p: p.mkdir(), "a directory, not a regular file"),
    ("fifo", lambda p: os.mkfifo(p), "a FIFO, not a regular file"),
    ("socket", _socket, "socket"),
    ("symlink", lambda p: p.symlink_to("/etc/hostname"), "a symlink; symlinks are refused"),
    ("dangling symlink", lambda p: p.symlink_to("/nonexistent.toml"), "symlinks are refused"),
    ("char device", lambda p: os.mknod(p, 0o644 | 0o020000, os.makedev(1, 3)), "a character device"),
    ("5000-deep array", _regular(DEEP_ARRAY.encode()), "nested too deep"),
    ("5000-deep inline table", _regular(("x = " + "{a=" * 5000 + "1" + "}" * 5000).encode()), "too deep"),
    ("5000-deep table header", _regular(("[" + "a." * 5000 + "b]\n").encode()), "nested deeper than 32"),
    ("2 MiB file", _regular(b"# " + b"x" * (2 << 20) + b"\n"), "larger than the 1 MiB limit"),
    ("cap + 1 bytes", _regular(b"#" * (MAX_POLICY_BYTES + 1)), "larger than the 1 MiB limit"),
    ("NUL byte", _regular(b"mode = 'audit'\n# \x00\n"), "line 2: contains a NUL byte"),
    ("not UTF-8", _regular(b"mode = 'audit'\n\n# \xff\xfe\n"), "line 3: not UTF-8 text"),
    ("UTF-16", _regular("mode = 'audit'\n".encode("utf-16")), "NUL byte"),
    ("5000-digit integer", _regular(b"interval = " + b"9" * 5000 + b"\n"), "not valid TOML"),
    ("TOML syntax", _regular(b"interval = = 1\n"), "not valid TOML"),
    ("BOM", _regular(b"\xef\xbb\xbfmode = 'audit'\n"), "not valid TOML"),
    ("group-writable", lambda p: (_regular(b"mode = 'audit'\n")(p), os.chmod(p, 0o664)), "mode 0664"),
    ("owned by nobody", lambda p: (_regular(b"")(p), os.chown(p, 65534, 65534)), "owned by uid 65534"),
]


@pytest.fixture(params=["tomllib", "tomli"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both parsers: tomllib on 3.11+, tomli (the same API) on 3.9/3.10."""
    if request.param == "tomllib" and sys.version_info < (3, 11):
        pytest.skip("no tomllib before Python 3.11")
    module = pytest.importorskip(request.param)
    monkeypatch.setattr(loader, "tomllib", module)
    yield request.param


@pytest.mark.root
@pytest.mark.parametrize(("case", "make", "expected"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_dropin_is_refused_naming_it(
    root: Path, parser: str, case: str, make: Callable[[Path], None], expected: str
) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text("interval = 77\n")
    target = root / "etc/k3s-agentd/policy.d/50-x.toml"
    make(target)
    started = time.monotonic()
    with pytest.raises(PolicyError) as caught:
        load_policy(Host(root=str(root)))
    assert time.monotonic() - started < 2, "a hostile policy file must not stall the loader"
    message = str(caught.value)
    assert f"{target}: " in message and expected in message, message
    assert len(message) < 500, "the error quotes the file, not its content"


def test_file_at_the_cap_is_read(root: Path) -> None:
    body = b"interval = 90\n"
    path = root / "etc/k3s-agentd/policy.toml"
    path.write_bytes(body + b"#" * (MAX_POLICY_BYTES - len(body) - 1) + b"\n")
    assert path.stat().st_size == MAX_POLICY_BYTES
    assert load_policy(Host(root=str(root))).interval == 90


def test_growing_file_is_cut_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fstat said small, the read finds more (the file grew in between): still refused."""
    path = tmp_path / "policy.toml"
    path.write_bytes(b"#" * (MAX_POLICY_BYTES + 10))
    real_fstat = os.fstat

    def small(fd: int) -> os.stat_result:
        fields = real_fstat(fd)
        return os.stat_result((*fields[:6], 10, *fields[7:]))

    monkeypatch.setattr(os, "fstat", small)
    with pytest.raises(PolicyError, match="larger than the 1 MiB limit"):
        loader.read_layer(str(path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[controls.sysctl.items."a\\nb"]\nvalue = 1\n', r'"a\nb"'),
        ('[controls.sysctl.items."a\\u001bb"]\nvalue = 1\n', r"a\x1bb"),
        ('[controls."x\\ty"]\n', r'controls."x\ty": unknown control'),
    ],
)
def test_control_characters_in_keys_are_escaped_in_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(Host(root=str(tmp_path)), path=str(path))
    message = str(caught.value)
    assert expected in message and "\x1b" not in message and "\t" not in message, message
    assert all(problem.count("\n") == 0 for problem in caught.value.problems)


def test_long_value_is_cut_short_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("mode = '" + "x" * 100_000 + "'\n")
    with pytest.raises(PolicyError, match="policy.toml: mode: must be one of") as caught:
        load_policy(Host(root=str(tmp_path)), path=str(path))
    assert len(str(caught.value)) < 400


# -- what the daemon runs when the policy on disk is refused at start ---------------------------


def test_fallback_is_the_last_good_snapshot(root: Path) -> None:
    host = Host(root=str(root))
    (root / "etc/k3s-agentd/policy.toml").write_text("interval = 111\n")
    assert save_last_good(host, load_policy(host))
    policy, what = fallback_policy(host)
    assert (what, policy.interval, policy.mode) == (LAST_GOOD, 111, Mode.ENFORCE)


def test_fallback_without_snapshot_is_the_builtin_profile_in_audit(root: Path) -> None:
    policy, what = fallback_policy(Host(root=str(root)))
    assert what == BUILTIN_AUDIT
    assert policy.profile == "k3s-cis-server" and policy.mode is Mode.AUDIT
    assert policy.controls and all(c.mode is Mode.AUDIT for c in policy.controls.values())
    assert sum(len(c.items) for c in policy.controls.values()) > 10


@pytest.mark.parametrize(
    ("verdict", "policy_error", "code"),
    [
        ("compliant", None, 0),
        ("compliant", "policy.toml: bogus", 2),
        ("drift", "policy.toml: bogus", 2),
        ("failed", "policy.toml: bogus", 2),
        ("drift", None, 1),
        (None, "policy.toml: bogus", 3),
    ],
)
def test_refused_policy_makes_status_exit_2(verdict: str, policy_error: str, code: int) -> None:
    document = {"summary": {"verdict": verdict}, "daemon": {"policy_error": policy_error}}
    assert exit_code(document) == code
