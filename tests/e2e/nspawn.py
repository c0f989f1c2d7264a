"""A booted Debian 12 node in systemd-nspawn, driven with nsenter.

PID 1 on the CI machine is not necessarily systemd, so there is no machined
and no `machinectl shell`: the container is started with
`systemd-nspawn --boot --register=no --keep-unit --private-network` and
commands enter its PID 1's namespaces with `nsenter -t <leader> -a`. Its
private network is a namespace made beforehand (peer.py): the NIC ens3 and a
peer namespace on this machine that the lock-out probe logs in from.

Rootfs: `debootstrap --variant=minbase` of bookworm, cached under
$K3S_AGENTD_TEST_CACHE (default /var/cache/k3s-agentd-tests) keyed by suite,
mirror and package list; each node gets a fresh copy of it, and the built
.deb is installed into the copy with apt (so Debian's own python3-*
packages satisfy its Depends). Downloaded .debs are cached too.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import IO, Optional

from tests.e2e.node import wait_until
from tests.e2e.peer import NetnsPeer

CACHE = os.environ.get("K3S_AGENTD_TEST_CACHE", "/var/cache/k3s-agentd-tests")
SUITE = "bookworm"
# What the base image carries beyond minbase: a booting systemd, and the
# daemons the scenario drives (sshd for the sshd control, both firewall tools).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "iproute2", "openssh-server", "kmod")
# Bump to invalidate every cached base (changes in how the base is built).
BASE_FORMAT = 1
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 90.0


# -- apt sources -------------------------------------------------------------------


def host_debian_sources(suite: str = SUITE) -> list[str]:
    """One-line `deb URI SUITE COMPONENTS` entries for `suite*` from this machine's apt config.

    The node must use the mirror this machine uses (CI machines may only reach
    a local mirror). Reads deb822 *.sources and classic *.list files.
    """
    override = os.environ.get("K3S_AGENTD_TEST_MIRROR")
    if override:
        return [f"deb {override} {suite} main", f"deb {override} {suite}-updates main"]
    lines: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as handle:
            for stanza in re.split(r"\n\s*\n", handle.read()):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in stanza.splitlines())
                    if not k.startswith("#") and v
                )
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for s in fields.get("suites", "").split():
                        if s.startswith(suite):
                            lines.append(f"deb {uri} {s} {fields.get('components', 'main')}")
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2].startswith(suite):
                    lines.append(" ".join(words))
    return lines or [f"deb http://deb.debian.org/debian {suite} main"]


def main_mirror(sources: Sequence[str], suite: str = SUITE) -> str:
    for line in sources:
        words = line.split()
        if words[2] == suite:
            return words[1]
    return "http://deb.debian.org/debian"


# -- the cached base rootfs ----------------------------------------------------------


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # other test runs / worktrees share the cache
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_rootfs(log: Optional[IO[str]] = None) -> str:
    """The cached debootstrap base (built on first use, ~1 min); its path."""
    sources = host_debian_sources()
    key = hashlib.sha256(repr((BASE_FORMAT, SUITE, sources, BASE_PACKAGES)).encode()).hexdigest()[:12]
    target = os.path.join(CACHE, f"base-{SUITE}-{key}")
    with _locked(os.path.join(CACHE, ".lock")):
        if os.path.isfile(os.path.join(target, ".complete")):
            return target
        work = target + ".tmp"
        shutil.rmtree(work, ignore_errors=True)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                work,
                main_mirror(sources),
            ],
            log,
            timeout=900,
        )
        with open(os.path.join(work, "etc/apt/sources.list"), "w") as handle:
            handle.write("\n".join(sources) + "\n")
        # A machine-id is made at first boot; an empty file keeps it per-node.
        open(os.path.join(work, "etc/machine-id"), "w").close()
        with open(os.path.join(work, ".complete"), "w") as handle:
            handle.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        os.rename(work, target)
        return target


def nspawn_exec(rootfs: str, argv: Sequence[str], log: Optional[IO[str]], binds: Sequence[str] = ()) -> None:
    """Run argv in rootfs with host networking, NOT booted (package installs)."""
    cmd = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--pipe", "-D", rootfs]
    cmd += [f"--bind={b}" if not b.startswith("ro:") else f"--bind-ro={b[3:]}" for b in binds]
    cmd += ["-E", "DEBIAN_FRONTEND=noninteractive", "-E", f"PATH={PATH}", *argv]
    _run(cmd, log, timeout=900)


def make_node_rootfs(
    workdir: str,
    deb: str,
    fixture_dir: Optional[str] = None,
    log: Optional[IO[str]] = None,
    extra_packages: Sequence[str] = (),
    k3s_role: str = "server",
) -> str:
    """A fresh copy of the base with the .deb, `extra_packages` (from the node's
    mirror, e.g. node_exporter) and the K3s fixture installed in `k3s_role`
    (server: k3s.service; agent: k3s-agent.service, an agent-only node); its path."""
    base = base_rootfs(log)
    rootfs = os.path.join(workdir, "rootfs")
    _run(["cp", "-a", "--reflink=auto", base, rootfs], log)
    archives = os.path.join(CACHE, "apt-archives")
    os.makedirs(os.path.join(archives, "partial"), exist_ok=True)
    deb_dir = os.path.dirname(os.path.abspath(deb))
    binds = [f"{archives}:/var/cache/apt/archives", f"ro:{deb_dir}:/mnt/dist"]
    # Both firewall tools: the package depends on one and recommends both.
    install = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "iptables",
        "nftables",
        *extra_packages,
    ]
    install.append(f"/mnt/dist/{os.path.basename(deb)}")
    try:
        nspawn_exec(rootfs, install, log, binds)
    except subprocess.CalledProcessError:
        # Package lists in the cached base went stale (or were never fetched).
        nspawn_exec(rootfs, ["apt-get", "update", "-q"], log, binds)
        nspawn_exec(rootfs, install, log, binds)
    # For the scenario's remove/reinstall/purge step (scenario.PACKAGE_DIR).
    keep = os.path.join(rootfs, "var/cache/k3s-agentd-e2e")
    os.makedirs(keep, exist_ok=True)
    shutil.copy(deb, keep)
    if fixture_dir and os.path.isfile(os.path.join(fixture_dir, "install.sh")):
        binds = [f"ro:{os.path.abspath(fixture_dir)}:/mnt/k3s_fixture"]
        nspawn_exec(rootfs, ["/bin/sh", "/mnt/k3s_fixture/install.sh", "/", k3s_role], log, binds)
    return rootfs


def _run(argv: Sequence[str], log: Optional[IO[str]], timeout: float = 300) -> None:
    if log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
    subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)


# -- the booted node -------------------------------------------------------------------


class NspawnNode:
    """Node (tests/e2e/node.py) backed by a systemd-nspawn --boot container."""

    def __init__(self, rootfs: str, name: str = "k3s-e2e", console_log: Optional[str] = None):
        self.rootfs = rootfs
        self.name = name
        self.console_log = console_log or os.path.join(os.path.dirname(rootfs), "console.log")
        self.proc: Optional[subprocess.Popen] = None
        self.leader = 0
        # The management network and where the operator logs in from (tests/e2e/operator.py).
        self.peer = NetnsPeer(os.path.dirname(os.path.abspath(rootfs)))

    # lifecycle

    def boot(self) -> None:
        if not self.peer.created:
            self.peer.create()
        with open(os.path.join(self.rootfs, "etc/hostname"), "w") as handle:
            handle.write(self.name + "\n")
        console = open(self.console_log, "ab")  # noqa: SIM115 - lives as long as the container
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                "--register=no",
                "--keep-unit",
                # Both: --private-network alone would make a fresh namespace, and
                # --network-namespace-path alone leaves /proc/sys/net read-only
                # (systemd 252), so the daemon could not heal net.* sysctls.
                "--private-network",
                f"--network-namespace-path={self.peer.netns_path}",
                "--console=read-only",
                "-M",
                self.name,
                "-D",
                self.rootfs,
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        console.close()
        self.leader = wait_until(self._find_leader, BOOT_TIMEOUT, "the container's systemd (PID 1)")
        state = wait_until(self._booted, BOOT_TIMEOUT, "systemd in the node to finish booting")
        if state not in ("running", "degraded"):
            raise AssertionError(f"node boot ended {state!r}: see {self.console_log}")

    def _find_leader(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: see {self.console_log}")
        for child in _children(self.proc.pid):
            with contextlib.suppress(OSError), open(f"/proc/{child}/comm") as handle:
                if handle.read().strip() == "systemd":
                    return child
        return 0

    def _booted(self) -> str:
        # --wait returns once start-up is over: running, degraded (a failed
        # unit), or something worse; "offline"/"unknown"/"" = asked too early.
        done = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=BOOT_TIMEOUT)
        state = done.stdout.strip()
        return "" if state in ("", "offline", "unknown", "starting", "initializing") else state

    def shutdown(self, timeout: float = 60) -> None:
        try:
            self._halt(timeout)
        finally:
            self.peer.destroy()

    def _halt(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM makes nspawn ask the container's systemd for a clean halt.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # Node protocol

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60, stdin: Optional[str] = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._enter(argv),
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def copy_in(self, data: bytes, dest: str, mode: int = 0o644) -> None:
        script = 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1.e2e-tmp" && chmod "$2" "$1.e2e-tmp"'
        script += ' && mv -f "$1.e2e-tmp" "$1"'
        subprocess.run(
            self._enter(["/bin/sh", "-c", script, "sh", dest, f"{mode:o}"]),
            input=data,
            capture_output=True,
            check=True,
            timeout=60,
        )

    def reboot(self) -> None:
        assert self.proc is not None
        self.run(["systemctl", "reboot"], check=False)
        # nspawn ends with exit status 133 when the container asks for a reboot
        # (machine@.service restarts it on that status); we boot it again.
        rc = self.proc.wait(BOOT_TIMEOUT)
        if rc != 133:
            raise AssertionError(f"expected nspawn to exit 133 on reboot, got {rc}")
        self.boot()

    def _enter(self, argv: Sequence[str]) -> list[str]:
        if not self.leader:
            raise AssertionError("node is not booted")
        # A clean environment: the host's PATH (venvs, pyenv) means nothing in the node.
        return ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", *argv]  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []
