"""Network and mount namespaces for tests: real kernel state, nothing of the host's touched.

Two ways in, one module:

* A named network namespace that lives for a `with` block: `fresh_netns()`,
  or `veth_pair()` for two of them joined by a veth (SERVER_IP/CLIENT_IP and
  their IPv6 twins). `run_in(ns, fn)` runs fn in a thread that has joined the
  namespace with setns(2): network namespaces are per thread, so sockets,
  netlink (nft) and libiptc handles fn creates belong to that namespace,
  while the test process stays where it is. `sh(..., ns=ns)` runs a CLI tool
  there through `ip netns exec`.
* A throwaway namespace for one call: `in_netns(fn, *args)` forks, unshares
  the network namespace in the child (CLONE_NEWNET), runs fn there and returns
  its (pickled) result or re-raises its exception, so fn may also change
  process-wide state. `in_mountns` does the same with a private mount
  namespace (CLONE_NEWNS, every mount made private), so `mount --bind` in fn
  never reaches the host's table. `netns_argv(argv)` runs a whole program in
  a fresh network namespace of its own.

Also here: `EchoServer`, `connect`, `can_connect` for traffic tests, and
`LEGACY_MISSING` (why this kernel cannot run legacy iptables, "" if it can).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import socket
import subprocess
import threading
import traceback
import uuid
from collections.abc import Iterator
from typing import Any, Callable

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int) -> None:
    """Raise the errno of a failed libc call (rc != 0) as an OSError."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# -- named namespaces -----------------------------------------------------------------


def sh(*argv: str, check: bool = True, ns: str = "") -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({result.returncode}): {result.stderr}")
    return result


def run_in(ns: str, fn: Callable[..., Any], *args: Any) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _check(_libc.setns(fd, CLONE_NEWNET))
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(300)
    if "error" in box:
        raise box["error"]
    return box.get("value")


@contextlib.contextmanager
def fresh_netns(prefix: str = "k3sfw") -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        sh("ip", "netns", "delete", name, check=False)


# -- throwaway namespaces (one call, a forked child) -------------------------------------


def unshare_net() -> None:
    _check(_libc.unshare(CLONE_NEWNET))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)


def unshare_mounts() -> None:
    _check(_libc.unshare(CLONE_NEWNS))
    # systemd makes / shared: without this our mounts would propagate to the host.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


def in_netns(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child inside a fresh network namespace; its result or its error."""
    return _in_child(unshare_net, "netns", fn, *args)


def in_mountns(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child inside a private mount namespace; its result or its error."""
    return _in_child(unshare_mounts, "mount ns", fn, *args)


def _in_child(enter: Callable[[], None], where: str, fn: Callable[..., Any], *args: Any) -> Any:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            enter()
            payload = ("ok", fn(*args))
        except BaseException as exc:
            payload = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            data = pickle.dumps(payload)
        except Exception as exc:
            data = pickle.dumps(("error", f"unpicklable result: {exc}"))
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as src:
        data = src.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"{where} child died without a result")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"in {where}: {value}")
    return value


def netns_argv(argv: list[str]) -> list[str]:
    """A command line that runs argv in a fresh network namespace."""
    return ["unshare", "--net", "--", *argv]


# -- what the kernel offers, traffic --------------------------------------------------


def _legacy_missing() -> str:
    """Why legacy iptables cannot be used on this kernel ("" when it can)."""
    if os.geteuid() != 0:
        return ""  # the root marker skips these tests anyway
    probe = subprocess.run(
        netns_argv(["iptables-legacy", "-t", "filter", "-L", "INPUT"]),
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "this kernel has no legacy iptables (ip_tables + iptable_filter; "
            f"CONFIG_IP_NF_IPTABLES_LEGACY on recent kernels): {probe.stderr.strip()}"
        )
    return ""


LEGACY_MISSING = _legacy_missing()


SERVER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
SERVER_IP6 = "fd99::1"
CLIENT_IP6 = "fd99::2"


@contextlib.contextmanager
def veth_pair(server_if: str = "") -> Iterator[tuple[str, str]]:
    """(server, client) namespaces, SERVER_IP and CLIENT_IP on a veth between them."""
    with fresh_netns("k3sfw-srv") as server, fresh_netns("k3sfw-cli") as client:
        left, right = server_if or f"v{server[-8:]}", f"v{client[-8:]}"
        sh("ip", "link", "add", left, "netns", server, "type", "veth", "peer", "name", right, "netns", client)
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", left, ns=server)
        sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", right, ns=client)
        sh("ip", "addr", "add", f"{SERVER_IP6}/64", "dev", left, "nodad", ns=server)
        sh("ip", "addr", "add", f"{CLIENT_IP6}/64", "dev", right, "nodad", ns=client)
        sh("ip", "link", "set", left, "up", ns=server)
        sh("ip", "link", "set", right, "up", ns=client)
        yield server, client


class EchoServer:
    """A TCP listener (created inside a namespace, IPv4 and IPv6) that echoes what it gets."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", port))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while True:
                data = conn.recv(1024)
                if not data:
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def connect(address: str, port: int, timeout: float = 1.0) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


def can_connect(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with connect(address, port, timeout) as conn:
            conn.sendall(b"ping")
            return conn.recv(16) == b"ping"
    except OSError:
        return False
