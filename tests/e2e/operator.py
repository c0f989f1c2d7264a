"""The lock-out probe (issue 11): a real SSH login to the node as a non-root
operator account with a key, from another machine on the node's network.

A node that can be probed has a `peer` attribute (Peer below): where the
operator logs in from. The nspawn node's peer is a network namespace on this
machine wired to the node's ens3 (tests/e2e/peer.py); a Vagrant VM's peer is
the other VM (tests/vagrant/vagrant_node.py). A node without one fails the
probe loudly: it is never skipped.

    ensure_operator(node)               # the account, its key, once per node
    ok, output = operator_login(node)   # one NEW login, now

Everything else here is what the scenario's checks around the probe need: a
listener on a port nothing opens (so the peer can see the firewall is on, not
just absent), a TCP probe from the peer, and a by-hand lock-out (a drop of
port 22 on the node's NIC) proving the probe can fail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Optional, Protocol

from tests.e2e.node import Node, wait_until

OPERATOR = "operator"
# A port no profile opens: with the firewall on, the peer must not reach it.
DROPPED_PORT = 9999
# The by-hand lock-out's own nft table (never the agent's).
LOCKOUT_TABLE = "k3sa_e2e_lockout"
SSH_OPTIONS = (
    *("-F", "/dev/null"),  # this machine's (or the peer VM's) ssh_config plays no part
    *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
    *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
    *("-o", "LogLevel=ERROR"),
)
_EXIT = "ssh-exit="
# login_failures() tries a failed login again, 1 s apart, this many times in
# all: sshd re-executes itself on the agent's reload and refuses connections
# for a moment. A lock-out lasts.
LOGIN_ATTEMPTS = 3


class Peer(Protocol):
    """Where the operator logs in from."""

    address: str  # the node's address as seen from the peer (IPv4): what operator_login uses
    addresses: list[str]  # every address of the node the checks probe (v4, and v6 where there is one)
    key_path: str  # the operator's private key, a path where run() runs
    public_key: str  # its public half: the authorized_keys line
    timeout: float  # seconds one login from there may take
    tcp_timeout: float  # seconds a TCP connect from there waits before "dropped"

    def prepare(self) -> None:
        """Put the private key where run() will find it (idempotent)."""
        ...

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """argv (no shell) as root on the peer, text output captured, whatever its exit status.

        Raises AssertionError (or subprocess.TimeoutExpired) only when the peer
        itself cannot be reached.
        """
        ...


def make_operator_key(path: str) -> str:
    """A fresh ed25519 key pair at path (0600) and path.pub; returns the public line."""
    for old in (path, path + ".pub"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "k3sa-e2e-operator", "-f", path],
        check=True,
        capture_output=True,
    )
    with open(path + ".pub", encoding="ascii") as handle:
        return handle.read().strip()


def peer_of(node: Node) -> Peer:
    peer = getattr(node, "peer", None)
    if peer is None:
        raise AssertionError(
            f"node {node.name} has no peer to log in from: the lock-out probe (issue 11) needs one "
            "(nspawn: tests/e2e/peer.py NetnsPeer; Vagrant: the other VM)"
        )
    return peer


# The account: a login shell, no password but not locked ("*", not "!": sshd
# without PAM refuses a locked account even with a key), the peer's key.
# Debian already has a group `operator` (gid 37): join it rather than fail.
_ACCOUNT = r"""set -eu
u=$1
if ! id -u "$u" >/dev/null 2>&1; then
  group=-U
  getent group "$u" >/dev/null && group="-g $u"
  useradd -m -s /bin/bash $group "$u"
fi
usermod -s /bin/bash -p '*' "$u"
home=$(getent passwd "$u" | cut -d: -f6)
case $home in /home/*) ;; *) home=/home/$u; usermod -d "$home" "$u" ;; esac
group=$(id -gn "$u")
install -d -m 0700 -o "$u" -g "$group" "$home" "$home/.ssh"
cat > "$home/.ssh/authorized_keys"
chown "$u:$group" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
"""


def ensure_operator(node: Node) -> None:
    """The non-root account `operator` in the node with the peer's key, and the key on the peer."""
    peer = peer_of(node)
    node.run(["/bin/sh", "-c", _ACCOUNT, "sh", OPERATOR], stdin=peer.public_key + "\n")
    peer.prepare()


def operator_login(node: Node, timeout: float = 10.0, address: Optional[str] = None) -> tuple[bool, str]:
    """One NEW SSH login as `operator` with its key, from the node's peer: (it worked, ssh's output).

    `address` defaults to the peer's view of the node (its IPv4 address).
    ConnectTimeout (TCP connect and sshd's banner) is 5 s, or a sixth of
    `timeout` when that is longer: an emulated VM's sshd takes seconds to
    re-execute itself for a connection.
    """
    peer = peer_of(node)
    target = address or peer.address
    connect = ["-o", f"ConnectTimeout={max(5, int(timeout // 6))}"]
    ssh = ["ssh", *SSH_OPTIONS, *connect, "-i", peer.key_path, f"{OPERATOR}@{target}", "true"]
    # ssh's exit status travels in the output: the peer's own transport (an
    # SSH hop to the other VM) has exit codes of its own, 255 included.
    wrapped = ["/bin/sh", "-c", f'"$@" 2>&1; echo "{_EXIT}$?"', "sh", *ssh]
    try:
        done = peer.run(wrapped, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"ssh {OPERATOR}@{target}: no answer within {timeout:.0f}s"
    text = done.stdout.rstrip("\n")
    head, _, last = text.rpartition("\n")
    code, out = (last[len(_EXIT) :], head) if last.startswith(_EXIT) else ("?", text)
    if code != "0":
        return False, f"ssh {OPERATOR}@{target} exited {code}: {out.strip()} {done.stderr.strip()}".strip()
    return True, out.strip()


def login_failures(node: Node, address: Optional[str] = None) -> list[str]:
    """Logins (peer's timeout) until one works, LOGIN_ATTEMPTS at most: the failures' outputs.

    Fewer than LOGIN_ATTEMPTS failures = the operator got in.
    """
    timeout = peer_of(node).timeout
    failures: list[str] = []
    while len(failures) < LOGIN_ATTEMPTS:
        ok, output = operator_login(node, timeout=timeout, address=address)
        if ok:
            break
        failures.append(output)
        time.sleep(1)
    return failures


# -- the firewall as the peer sees it ---------------------------------------------------

_CONNECT = """import socket, sys
host, port, timeout, source = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    socket.create_connection((host, port), timeout, (source, 0) if source else None).close()
except OSError:
    sys.exit(1)
"""


def tcp_probe_argv(host: str, port: int, timeout: float, source: str = "") -> list[str]:
    """argv that exits 0 if a TCP connect to host:port (from address source) succeeds, else 1."""
    return ["python3", "-c", _CONNECT, host, str(port), str(timeout), source]


def peer_reaches(node: Node, port: int, address: Optional[str] = None) -> bool:
    """Does a TCP connect from the peer to the node's port succeed?"""
    peer = peer_of(node)
    argv = tcp_probe_argv(address or peer.address, port, peer.tcp_timeout)
    done = peer.run(argv, timeout=peer.tcp_timeout + peer.timeout)
    if done.returncode not in (0, 1):
        raise AssertionError(f"TCP probe on the peer exited {done.returncode}: {done.stderr.strip()}")
    return done.returncode == 0


_LISTENER = """import socket, sys
port = int(sys.argv[1])
try:
    server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=16)
except OSError:  # no IPv6 on this node
    server = socket.create_server(("", port), backlog=16)
while True:
    conn, _ = server.accept()
    conn.close()
"""


def ensure_listener(node: Node, port: int) -> None:
    """Something accepting on port (v4 and v6) in the node, so a refused connect is never
    taken for a firewall drop: a transient unit, gone at the next boot."""
    if _listening(node, port):
        return
    unit = f"k3sa-listen-{port}"
    node.run(["systemctl", "stop", unit], check=False)
    node.run(["systemctl", "reset-failed", unit], check=False)
    node.run(["systemd-run", f"--unit={unit}", "/usr/bin/python3", "-c", _LISTENER, str(port)])
    wait_until(lambda: _listening(node, port), 15, f"{node.name}: a listener on {port}", every=0.3)


def _listening(node: Node, port: int) -> bool:
    return bool(node.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip())


# -- a lock-out by hand -----------------------------------------------------------------


def nic_of(node: Node, address: str) -> str:
    """The name of the node's interface that carries address."""
    for line in node.run(["ip", "-o", "addr", "show"]).stdout.splitlines():
        words = line.split()
        if len(words) > 3 and words[3].split("/")[0] == address:
            return words[1]
    raise AssertionError(f"no interface of {node.name} has the address {address}")


@contextlib.contextmanager
def ssh_dropped(node: Node, port: int = 22) -> Iterator[str]:
    """Within: tcp `port` dropped on the NIC the peer reaches the node through, by a
    table of our own (not the agent's); yields the NIC's name. Removed on the way out."""
    nic = nic_of(node, peer_of(node).address)
    rules = (
        f"table inet {LOCKOUT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter - 10; policy accept;\n"
        f'    iifname "{nic}" tcp dport {port} drop\n'
        "  }\n"
        "}\n"
    )
    node.run(["nft", "-f", "-"], stdin=rules)
    try:
        yield nic
    finally:
        node.run(["nft", "delete", "table", "inet", LOCKOUT_TABLE])
