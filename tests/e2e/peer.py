"""The nspawn node's management network: a peer network namespace on this machine.

The lock-out probe (operator.py) logs in to the node from somewhere else, as
an operator would. Here "somewhere else" is a network namespace of its own,
joined to the node by a veth pair:

    netns k3sa-peer-<pid>-<n>: mgmt0 10.213.7.1/24 fd00:6b33:e2e::1/64
        <-- veth -->
    netns k3sa-node-<pid>-<n>: ens3  10.213.7.2/24 fd00:6b33:e2e::2/64   (the node boots into it)

The node's NIC is called ens3, not eth0, on purpose (issue 11: a guard that
only ever saw eth0). Both namespaces are made and pinned (/run/netns) before
the first boot, so nspawn boots the node into its namespace
(--network-namespace-path) and a reboot finds the same NIC and addresses.
Neither namespace has a route beyond the /24 and /64: nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
from collections.abc import Sequence

from tests.e2e.operator import make_operator_key

NODE_IF = "ens3"
PEER_IF = "mgmt0"
PEER4, NODE4, PREFIX4 = "10.213.7.1", "10.213.7.2", 24
PEER6, NODE6, PREFIX6 = "fd00:6b33:e2e::1", "fd00:6b33:e2e::2", 64
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NETNS_DIR = "/run/netns"
_OURS = re.compile(r"k3sa-(?:node|peer)-(\d+)-\d+$")
_serial = itertools.count()


class NetnsPeer:
    """The Peer of tests/e2e/operator.py for an nspawn node: commands run in the peer namespace."""

    # Seconds an operator login may take here (two namespaces on one machine: well under 1 s).
    timeout = 10.0
    # A SYN-ACK over a veth comes in well under a millisecond: no answer in 1 s = dropped.
    tcp_timeout = 1.0

    def __init__(self, workdir: str, tag: str = "") -> None:
        tag = tag or f"{os.getpid()}-{next(_serial)}"
        self.node_ns = f"k3sa-node-{tag}"
        self.peer_ns = f"k3sa-peer-{tag}"
        self.address = NODE4
        self.addresses = [NODE4, NODE6]
        self.key_path = os.path.join(workdir, "operator_ed25519")
        self.public_key = ""
        self.created = False

    @property
    def netns_path(self) -> str:
        """What systemd-nspawn --network-namespace-path= takes."""
        return os.path.join(NETNS_DIR, self.node_ns)

    def create(self) -> None:
        """Both namespaces, the veth pair, addresses, and the operator's key pair."""
        _remove_stale()
        self.public_key = make_operator_key(self.key_path)
        _ip("netns", "add", self.node_ns)
        self.created = True
        _ip("netns", "add", self.peer_ns)
        _ip("link", "add", NODE_IF, "netns", self.node_ns, "type", "veth", "peer", "name", PEER_IF,
            "netns", self.peer_ns)  # fmt: skip
        for ns, ifname, v4, v6 in (
            (self.node_ns, NODE_IF, NODE4, NODE6),
            (self.peer_ns, PEER_IF, PEER4, PEER6),
        ):
            # nodad: the v6 address is usable at once (no 1-2 s duplicate detection).
            _ip("-n", ns, "addr", "add", f"{v4}/{PREFIX4}", "dev", ifname)
            _ip("-n", ns, "addr", "add", f"{v6}/{PREFIX6}", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", ifname, "up")

    def prepare(self) -> None:
        """Nothing to copy: the private key is already where the peer (this machine) runs ssh."""

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        # A clean environment: the host's PATH (venvs, pyenv) is not the peer's.
        return subprocess.run(
            ["ip", "netns", "exec", self.peer_ns, "/usr/bin/env", "-i", f"PATH={PATH}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def destroy(self) -> None:
        """Unpin both namespaces (the veth pair goes with the last process in them)."""
        if self.created:
            for ns in (self.node_ns, self.peer_ns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            self.created = False


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _remove_stale() -> None:
    """Namespaces a crashed earlier run left behind (their run's PID is gone)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            match = _OURS.match(name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
