"""The Node protocol: what the e2e scenario needs from a booted machine.

The scenario (scenario.py) only ever talks to a node through these three
operations, so the same scenario runs in a systemd-nspawn container
(nspawn.py) and in real VMs (the Vagrant suite implements a VagrantNode).

Preconditions the implementation guarantees before the scenario starts:
  * systemd is PID 1 in the node and has finished booting;
  * the k3s-hardening-agent package is installed (enabled, not started), with
    the distribution's own python3-* dependencies;
  * optionally the package file in /var/cache/k3s-agentd-e2e/ (the
    remove/reinstall/purge step is SKIPPED without it);
  * optionally the K3s fixture (tests/support/k3s_fixture/install.sh) is laid down; the
    scenario gates the steps that need it on the k3s.service unit existing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from typing import Callable, Optional, Protocol, TypeVar

T = TypeVar("T")


class Node(Protocol):
    name: str

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60, stdin: Optional[str] = None
    ) -> subprocess.CompletedProcess:
        """Run argv (no shell) as root in the node; text stdout/stderr captured.

        check=True raises subprocess.CalledProcessError on a non-zero exit.
        """
        ...

    def copy_in(self, data: bytes, dest: str, mode: int = 0o644) -> None:
        """Write data to the absolute path dest in the node (root-owned, parents created)."""
        ...

    def reboot(self) -> None:
        """Reboot the node; return once systemd in it has finished booting again."""
        ...


class NodeCommandError(AssertionError):
    pass


def sh(node: Node, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """A shell one-liner in the node (scenario convenience; the argv is still fixed)."""
    return node.run(["/bin/sh", "-c", script], check=check, timeout=timeout)


def wait_until(probe: Callable[[], Optional[T]], timeout: float, what: str, every: float = 0.5) -> T:
    """Poll probe() until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Optional[T] = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
