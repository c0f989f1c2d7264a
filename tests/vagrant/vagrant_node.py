"""VagrantNode: the e2e Node protocol (tests/e2e/node.py) over SSH to a Vagrant VM.

We talk to the VM with plain OpenSSH and the `vagrant ssh-config` output
instead of `vagrant ssh -c` (a Ruby start per command costs seconds here).
SSH under QEMU emulation costs ~2 s per connection (key exchange in an
emulated CPU), so commands share one multiplexed connection; ssh_works()
opens a NEW connection every time, which is what "SSH into the node still
works after a heal" must prove (an existing session survives a firewall that
would refuse new ones).

VagrantPeer makes the other VM the operator's workstation for the lock-out
probe (tests/e2e/operator.py): a login as `operator`, with a key made for the
run, from one VM to the other over the cluster network.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Callable, Optional, TypeVar

from tests.e2e.node import wait_until
from tests.e2e.operator import ensure_listener, make_operator_key, tcp_probe_argv

# BatchMode: never prompt; ConnectTimeout: a dropped SYN (a firewall that
# locked us out) fails in seconds rather than at TCP's own timeout;
# chacha20-poly1305 is the cheapest cipher for a CPU without AES-NI (qemu64).
SSH_OPTS = [
    *("-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"),
    *("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"),
    *("-o", "Ciphers=chacha20-poly1305@openssh.com,aes128-ctr"),
]
CONTROL_DIR = "/run/k3s-agentd-vagrant"  # the shared connections' sockets (CI, as root)
# The operator's private key on the peer VM (root's, 0600).
PEER_KEY = "/root/.k3sa-e2e/operator_ed25519"
# Seconds to wait for a peer VM that does not answer: both VMs run the scenario
# at once, and the other one may be rebooting (~150-240 s emulated).
PEER_WAIT = 600.0
_private_dir: list[str] = []
T = TypeVar("T")


def _control_dir() -> str:
    """CONTROL_DIR as root; for a user running vagrant/e2e.sh, a fresh private
    directory (never a predictable path under /tmp that someone else could own)."""
    if os.geteuid() == 0:
        os.makedirs(CONTROL_DIR, mode=0o700, exist_ok=True)
        return CONTROL_DIR
    if not _private_dir:
        _private_dir.append(tempfile.mkdtemp(prefix="k3s-agentd-vagrant-"))
        atexit.register(shutil.rmtree, _private_dir[0], True)
    return _private_dir[0]


class VagrantNode:
    """One VM of the Vagrant CI cluster, reached as `name` through ssh_config."""

    def __init__(self, name: str, ssh_config: str, tag: str = "") -> None:
        """tag: a connection of its own (its own shared SSH master) to the same VM."""
        self.name = name
        self.ssh_config = ssh_config
        self.control_path = os.path.join(_control_dir(), f"ssh-{name}{'-' + tag if tag else ''}.sock")
        # Where the lock-out probe logs in from (attach_operator_peers): the other VM.
        self.peer: Optional[VagrantPeer] = None

    def _argv(self, remote: str, shared: bool = True) -> list[str]:
        if shared:
            self._master()
            mux = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_path}"]
        else:
            mux = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return ["ssh", "-F", self.ssh_config, *SSH_OPTS, *mux, self.name, remote]

    def _master(self) -> None:
        """The shared connection, started on its own with no pipes of ours.

        (A master forked by ControlMaster=auto keeps the first command's stderr
        pipe open, so capturing that command's output would hang until it exits.)
        A client whose master is gone falls back to a direct connection.
        """
        if os.path.exists(self.control_path):
            return
        master = [
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            "ControlPersist=300",
        ]
        subprocess.run(
            ["ssh", "-F", self.ssh_config, *SSH_OPTS, *master, "-N", "-f", self.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def _ssh(
        self, remote: str, timeout: float, stdin: Optional[str], shared: bool = True
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._argv(remote, shared), input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def close(self) -> None:
        """Stop the shared connection (an ssh process we started), if there is one."""
        if os.path.exists(self.control_path):
            # -F /dev/null: the master needs only its socket (ssh_config may be gone).
            subprocess.run(
                ["ssh", "-F", "/dev/null", "-o", f"ControlPath={self.control_path}", "-O", "exit", self.name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60, stdin: Optional[str] = None
    ) -> subprocess.CompletedProcess:
        # ssh hands the remote side one string for a shell: quote each word so
        # the argv arrives unchanged, and run it as root through sudo.
        remote = "sudo -n -- " + " ".join(shlex.quote(a) for a in argv)
        done = self._ssh(remote, timeout, stdin)
        if done.returncode == 255 and "ssh:" in done.stderr:
            raise AssertionError(f"{self.name}: ssh failed: {done.stderr.strip()}")
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, list(argv), done.stdout, done.stderr)
        return subprocess.CompletedProcess(list(argv), done.returncode, done.stdout, done.stderr)

    def copy_in(self, data: bytes, dest: str, mode: int = 0o644) -> None:
        # install(1) writes the file root-owned with the mode in one step.
        quoted = shlex.quote(dest)
        remote = (
            f'sudo -n -- sh -c \'umask 077; t=$(mktemp) && cat >"$t" && '
            f'mkdir -p "$(dirname {quoted})" && install -o root -g root -m {mode:o} "$t" {quoted}; '
            f'rc=$?; rm -f "$t"; exit $rc\''
        )
        done = subprocess.run(self._argv(remote), input=data, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(
                f"{self.name}: copy to {dest} failed: {done.stderr.decode(errors='replace')}"
            )

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def reboot(self) -> None:
        before = self.boot_id()
        # The connection drops as the node goes down: do not wait for an answer,
        # and do not keep a shared connection to a machine that is gone.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._ssh("sudo -n systemctl reboot", timeout=30, stdin=None)
        self.close()
        wait_until(lambda: self._booted_again(before), 600, f"{self.name} to come back from reboot", every=3)

    def _booted_again(self, before: str) -> bool:
        try:
            done = self._ssh(
                "cat /proc/sys/kernel/random/boot_id; sudo -n systemctl is-system-running --wait",
                timeout=120,
                stdin=None,
            )
        except subprocess.TimeoutExpired:
            return False
        lines = done.stdout.split()
        # "degraded" still means boot finished (a unit failed: the scenario's business).
        return bool(lines) and lines[0] != before and lines[-1] in ("running", "degraded")

    def ssh_works(self) -> bool:
        """A new SSH session gets a shell (the check made after every heal)."""
        try:
            return self._ssh("true", timeout=30, stdin=None, shared=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def tcp_open(self, host: str, port: int, timeout: float = 3, source: str = "") -> bool:
        """From inside this node (from its address `source`, if given): does a TCP
        connect to host:port succeed?"""
        done = self.run(tcp_probe_argv(host, port, timeout, source), check=False, timeout=timeout + 30)
        return done.returncode == 0

    def listen(self, port: int) -> None:
        """Something that accepts on port (K3s would; the K3s fixture does not).

        A transient unit: gone at the next boot, and nothing runs on this machine.
        """
        ensure_listener(self, port)


class VagrantPeer:
    """The other VM, where the lock-out probe logs in to a node from (the Peer of
    tests/e2e/operator.py), as root with the run's operator key in PEER_KEY.

    It has a connection of its own to that VM: the other VM's scenario runs in
    another thread and drops its connection when it reboots the VM.
    """

    # Seconds one login may take: key exchange on two emulated CPUs, plus the hop to the peer.
    timeout = 90.0
    tcp_timeout = 3.0

    def __init__(self, via: VagrantNode, address: str, key_file: str, public_key: str) -> None:
        self.via = via
        self.address = address
        self.addresses = [address]
        self.key_path = PEER_KEY
        self.public_key = public_key
        self._key_file = key_file  # the private key on this machine

    def prepare(self) -> None:
        with open(self._key_file, "rb") as handle:
            key = handle.read()
        self._patiently(lambda: self.via.copy_in(key, PEER_KEY, 0o600))

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """argv on the peer VM. Exit status 255 is taken for the hop's own failure and
        tried again (a mux client whose master died with a rebooting VM says so without
        the "ssh:" VagrantNode.run looks for): what the probe runs never exits 255 itself
        (operator_login passes ssh's status in its output)."""
        return self._patiently(lambda: self._run_once(argv, timeout))

    def _run_once(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        done = self.via.run(argv, check=False, timeout=timeout)
        if done.returncode == 255:
            raise AssertionError(f"{self.via.name}: the hop to the peer failed: {done.stderr.strip()}")
        return done

    def _patiently(self, action: Callable[[], T]) -> T:
        """action(), again every 5 s while the peer VM does not answer, up to PEER_WAIT."""
        deadline = time.monotonic() + PEER_WAIT
        while True:
            try:
                return action()
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the peer VM {self.via.name} did not answer for {PEER_WAIT:.0f}s: "
                        f"no operator login could be tried from it ({exc})"
                    ) from None
            time.sleep(5)


def attach_operator_peers(nodes: dict[str, VagrantNode], addresses: dict[str, str]) -> list[VagrantNode]:
    """Each node's `peer` = the other VM, reaching it at addresses[name] (the cluster
    network); a key pair made for this run. Returns the peers' own connections: close()
    them at the end. Exactly two VMs, or AssertionError: the probe is never skipped."""
    if len(nodes) != 2:
        raise AssertionError(
            "the lock-out probe logs in to each VM from the other one: it needs both VMs "
            f"(server and agent), got {sorted(nodes)}"
        )
    keydir = tempfile.mkdtemp(prefix="k3sa-operator-")
    atexit.register(shutil.rmtree, keydir, True)
    key_file = os.path.join(keydir, "operator_ed25519")
    public_key = make_operator_key(key_file)
    connections = []
    (a, node_a), (b, node_b) = nodes.items()
    for name, node, other, other_name in ((a, node_a, node_b, b), (b, node_b, node_a, a)):
        via = VagrantNode(other_name, other.ssh_config, tag=f"peer-of-{name}")
        connections.append(via)
        node.peer = VagrantPeer(via, addresses[name], key_file, public_key)
    return connections


def host_tcp_open(host: str, port: int, timeout: float = 3, source: Optional[str] = None) -> bool:
    """From this machine (outside the cluster network): does a TCP connect succeed?"""
    import socket

    with socket.socket() as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        return sock.connect_ex((host, port)) == 0


def wait_ssh(nodes: Sequence[VagrantNode], timeout: float = 120) -> None:
    start = time.monotonic()
    for node in nodes:
        wait_until(node.ssh_works, max(10.0, timeout - (time.monotonic() - start)), f"ssh into {node.name}")
