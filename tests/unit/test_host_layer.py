"""Only the host layer touches the host (docs/design.md): a guard over the source.

Every module under k3s_agent/ is parsed; a call that reaches the file system,
processes, signals or kernel sockets directly, or an import of a module that
does (glob, shutil, tempfile, subprocess, pathlib, psutil, fcntl), is a finding
unless the module is the host layer (host.py, hostfs.py) or the exception is
listed below with its reason. A listed exception that is no longer needed
fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "k3s_agent"
HOST_LAYER = {"k3s_agent/host.py", "k3s_agent/hostfs.py"}

OS_CALLS = frozenset(
    "open listdir scandir stat lstat readlink unlink remove rename replace mkdir makedirs rmdir removedirs"
    " chmod chown lchown access link symlink kill killpg truncate utime mkfifo mknod chdir chroot system"
    " popen execv execve execvp fork".split()
)
OS_PATH_CALLS = frozenset(
    "exists lexists isdir isfile islink ismount realpath getsize getmtime samefile".split()
)
MODULES = frozenset("glob shutil tempfile subprocess pathlib psutil fcntl".split())
SOCKET_CALLS = frozenset({"socket", "socketpair"})

# module -> (what it may do itself, why). Keep it short: move code into the host layer instead.
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "k3s_agent/policy/loader.py": (
        frozenset({"import glob", "os.lstat", "os.open", "os.path.lexists"}),
        "the policy files: paths given to the CLI/daemon (not under a Host root), read by the loader's "
        "own safe open (O_NOFOLLOW, fstat type/owner check, capped read) before any Host exists",
    ),
    "k3s_agent/statusd.py": (
        frozenset(
            {"os.chmod", "os.makedirs", "os.path.lexists", "os.unlink", "socket.socket", "socket.socketpair"}
        ),
        "the status socket: an AF_UNIX server in the agent's run dir (its own 0700 folder)",
    ),
    "k3s_agent/daemon.py": (frozenset({"socket.socket"}), "sd_notify(3): one datagram to $NOTIFY_SOCKET"),
    "k3s_agent/watch.py": (
        frozenset({"os.path.exists", "socket.socket"}),
        "inotify and netlink listeners: the kernel's event APIs, read without blocking",
    ),
    "k3s_agent/controls/firewall/nftgen.py": (
        frozenset({"socket.socket"}),
        "nfnetlink: the kernel's netfilter API (ruleset generation number), the nft backend's own concern",
    ),
    "k3s_agent/controls/firewall/iptinfo.py": (
        frozenset({"socket.socket"}),
        "getsockopt(IPT_SO_GET_INFO) on a raw socket: the iptables backend's own question to the kernel",
    ),
    "k3s_agent/controls/firewall/hostnet.py": (
        frozenset({"import psutil"}),
        "psutil's socket and address tables (bounded by the library): which ports sshd listens on",
    ),
    "k3s_agent/k3s/discovery.py": (
        frozenset({"import psutil"}),
        "psutil for a K3s process's name and start time (the pids come from Host.proc_pids)",
    ),
    "k3s_agent/policy/schema_doc.py": (
        frozenset({"import pathlib"}),
        "a developer's tool: regenerates docs/policy.md in the checkout; the agent never runs it",
    ),
    "k3s_agent/sshd/facts.py": (
        frozenset({"import psutil"}),
        "psutil's socket table of the sshd processes (bounded by the library): which ports sshd listens on",
    ),
}


def module_name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def host_access(tree: ast.AST) -> Iterator[str]:
    """What a module's source does to the host itself, one name per kind of access."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (f"import {a.name}" for a in node.names if a.name.split(".")[0] in MODULES)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in MODULES:
            yield f"import {node.module}"
        elif isinstance(node, ast.Call):
            name = call_name(node.func)
            if name is not None:
                yield name


def call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return "open()" if func.id == "open" else None
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value
    if isinstance(owner, ast.Name):
        if owner.id == "os" and func.attr in OS_CALLS:
            return f"os.{func.attr}"
        if owner.id == "socket" and func.attr in SOCKET_CALLS:
            return f"socket.{func.attr}"
    if (
        isinstance(owner, ast.Attribute)
        and isinstance(owner.value, ast.Name)
        and (owner.value.id, owner.attr) == ("os", "path")
        and func.attr in OS_PATH_CALLS
    ):
        return f"os.path.{func.attr}"
    return None


def found() -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name in HOST_LAYER:
            continue
        access = set(host_access(ast.parse(path.read_text(encoding="utf-8"), str(path))))
        if access:
            result[name] = access
    return result


def test_only_the_host_layer_touches_the_host() -> None:
    unexpected = {
        module: sorted(access - ALLOWED.get(module, (frozenset(), ""))[0])
        for module, access in found().items()
        if access - ALLOWED.get(module, (frozenset(), ""))[0]
    }
    assert not unexpected, f"host access outside host.py and hostfs.py (use a Host method): {unexpected}"


def test_every_exception_is_still_needed() -> None:
    seen = found()
    stale = {
        module: sorted(allowed - seen.get(module, set()))
        for module, (allowed, _) in ALLOWED.items()
        if allowed - seen.get(module, set())
    }
    assert not stale, f"allowed host access no longer used, remove it from ALLOWED: {stale}"


def test_the_exceptions_are_few_and_explained() -> None:
    assert len(ALLOWED) <= 12
    assert all(len(reason) > 20 for _, reason in ALLOWED.values())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("open('/etc/x')", {"open()"}),
        ("import os\nos.open('/x', 0)", {"os.open"}),
        ("os.path.isdir('/x')", {"os.path.isdir"}),
        ("os.kill(1, 9)", {"os.kill"}),
        ("import subprocess", {"import subprocess"}),
        ("from pathlib import Path", {"import pathlib"}),
        ("import glob as g", {"import glob"}),
        ("socket.socket()", {"socket.socket"}),
        ("host.read_text('/etc/x')", set()),  # through the host layer
        ("host.stat('/x'); os.path.join('a', 'b'); os.getpid()", set()),
        ("self.open()", set()),
    ],
)
def test_the_guard_sees_host_access(source: str, expected: set[str]) -> None:
    assert set(host_access(ast.parse(source))) == expected
