"""Run test code inside a fresh network or mount namespace (real kernel, isolated).

`in_netns(fn, *args)` forks, unshares the network namespace in the child
(CLONE_NEWNET), runs fn there and returns its (pickled) result or re-raises
its exception. /proc/sys/net in the child is the new namespace's, so real
net.* sysctls, iptables and nftables can be changed without touching the host.
`in_mountns` does the same with a private mount namespace (CLONE_NEWNS, every
mount made private), so `mount --bind` in fn never reaches the host's table.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import traceback
from typing import Any, Callable

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def unshare_net() -> None:
    _unshare(CLONE_NEWNET)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)


def unshare_mounts() -> None:
    _unshare(CLONE_NEWNS)
    # systemd makes / shared: without this our mounts would propagate to the host.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


def in_netns(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    return _in_child(unshare_net, "netns", fn, *args)


def in_mountns(fn: Callable[..., Any], *args: Any) -> Any:
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
