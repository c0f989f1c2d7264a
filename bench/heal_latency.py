"""Time from drift to healed (or reported, for verify-only items), each drift kind alone.

Two places to measure:

  python bench/heal_latency.py --node [--trials 20] [--idle 600]
      A booted Debian 12 node (systemd-nspawn, tests/e2e's driver), the real
      .deb built from this tree, the default policy in enforce mode, interval
      60 s (so nothing here is the sweep's doing), the K3s fixture. Needs root
      and the e2e base image; run under `flock /tmp/k3sa-e2e.lock`.
      --idle N also measures the idle daemon's CPU and RSS over N seconds.

  python bench/heal_latency.py [--trials 20]
      The daemon in a network namespace against a temporary root: the two
      sysctl kinds only (no sshd, no K3s), a quick check while developing.

For each kind: inject the drift, poll the node every 50 ms until the daemon
says healed (its heals_total grew) or reports the control not ok, restore
what the daemon does not heal, wait for quiet; prints p50 / p95 / max.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile  # noqa: E402 - after the path set-up above

STATUS = "/run/k3s-agentd/status.json"
HEALTHY = ("ok", "healed", "absent", "unsupported", "waived", "manual")
POLICY = """# bench: enforce; a long interval so every heal measured is event- or fingerprint-driven
version = 1
extends = "auto"
mode = "enforce"
interval = 60
[contest]
threshold = 100000  # the bench undoes the same items 20 times in a row on purpose
[controls.sshd]
allow_lockout = true  # a container nobody logs into: no account but root to keep reachable
"""
IPTABLES_POLICY = '[controls.firewall]\nbackend = "iptables"\n'
SYSCTL_KEY = "net.ipv4.conf.all.log_martians"
SYSCTL_FILE = "/etc/sysctl.d/90-k3s-agentd.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/01-k3s-agentd.conf"
SSHD_MAIN = "/etc/ssh/sshd_config"
K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
ENCRYPTION_CONFIG = "/var/lib/rancher/k3s/server/cred/encryption-config.json"


class Target:
    """Where the daemon runs: run a command there, read and write its files."""

    def run(self, *argv: str, check: bool = True) -> str:
        raise NotImplementedError

    def write(self, path: str, data: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def read(self, path: str) -> str:
        return self.run("cat", path, check=False)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.read(STATUS) or "{}")
        except ValueError:
            return {}  # caught between write and rename: read again


@dataclasses.dataclass
class Kind:
    """One drift kind: which control it hits, how to inject it, how to put back what is not healed."""

    label: str
    control: str
    inject: Callable[[Target], Optional[Callable[[], None]]]  # returns the restore step, if any


# -- drift kinds ------------------------------------------------------------------------


def runtime_sysctl(t: Target) -> None:
    t.run("sysctl", "-qw", f"{SYSCTL_KEY}={'0' if t.run('sysctl', '-n', SYSCTL_KEY) == '1' else '1'}")


def sysctl_file(t: Target) -> None:
    t.write(SYSCTL_FILE, "# edited by hand\nnet.ipv4.conf.all.log_martians = 0\n")


def nft_rule(t: Target) -> None:
    from tests.e2e.scenario import first_nft_rule

    chain, handle = first_nft_rule(t.run("nft", "-a", "list", "table", "inet", "k3s_agentd"))
    assert handle, "no rule in our nft table"
    t.run("nft", "delete", "rule", "inet", "k3s_agentd", chain, "handle", handle)


def nft_table(t: Target) -> None:
    t.run("nft", "delete", "table", "inet", "k3s_agentd")


def ipt_chain(t: Target) -> None:
    t.run("iptables-legacy", "-w", "-F", "K3S-AGENTD-INPUT")


def sshd_dropin(t: Target) -> None:
    text = t.read(SSHD_DROPIN)
    t.write(SSHD_DROPIN, re.sub(r"(?mi)^(PermitRootLogin)\s+\S+", r"\1 yes", text) + "# edited\n")


def sshd_main(t: Target) -> Callable[[], None]:
    original = t.read(SSHD_MAIN)
    t.write(SSHD_MAIN, "PermitRootLogin yes\n" + original)
    return lambda: t.write(SSHD_MAIN, original)


def _key_file(t: Target) -> str:
    files = next(c for c in t.status()["controls"] if c["name"] == "files")
    keys = [f["key"] for f in files["findings"] if f["key"].endswith(".key") and f["status"] in HEALTHY]
    if not keys:
        raise AssertionError("no ok *.key among the files control's findings")
    return keys[0]


def key_chmod(t: Target) -> None:
    t.run("chmod", "0644", _key_file(t))


def key_chown(t: Target) -> None:
    t.run("chown", "nobody", _key_file(t))


def k3s_config(t: Target) -> Callable[[], None]:
    original = t.read(K3S_CONFIG)
    t.write(K3S_CONFIG, original + "kube-apiserver-arg+:\n  - profiling=true\n")
    return lambda: t.write(K3S_CONFIG, original)


def encryption_config(t: Target) -> Callable[[], None]:
    original = t.read(ENCRYPTION_CONFIG)
    t.write(ENCRYPTION_CONFIG, original.rstrip("\n") + " \n", 0o600)  # same JSON, other bytes
    return lambda: t.write(ENCRYPTION_CONFIG, original, 0o600)


NODE_KINDS = [
    Kind("runtime sysctl (sysctl -w)", "sysctl", runtime_sysctl),
    Kind("sysctl.d file edited", "sysctl", sysctl_file),
    Kind("our nft rule deleted", "firewall", nft_rule),
    Kind("our nft table deleted", "firewall", nft_table),
    Kind("sshd drop-in edited", "sshd", sshd_dropin),
    Kind("sshd_config edited above the Include", "sshd", sshd_main),
    Kind("key file chmod 0644", "files", key_chmod),
    Kind("key file chown nobody", "files", key_chown),
    Kind("config.yaml edited (k3s_args reports)", "k3s_args", k3s_config),
    Kind("encryption config edited (reported)", "k3s_encryption", encryption_config),
]
LEGACY_KINDS = [Kind("our iptables chain flushed (legacy)", "firewall", ipt_chain)]
NETNS_KINDS = NODE_KINDS[:2]


# -- measuring ---------------------------------------------------------------------------


def _unhealthy(doc: dict[str, Any], control: str) -> set[tuple[str, str]]:
    for entry in doc.get("controls", []):
        if entry["name"] == control:
            return {(f["key"], f["status"]) for f in entry["findings"] if f["status"] not in HEALTHY}
    return set()


def _verdict(doc: dict[str, Any], control: str, heals: int, baseline: set[tuple[str, str]]) -> str:
    """ "healed" once the daemon counted a heal, "reported" once the control shows a problem
    it did not show before the drift (a node may carry some for good: kernel.* in a container)."""
    if doc.get("daemon", {}).get("heals_total", 0) > heals:
        return "healed"
    return "reported" if _unhealthy(doc, control) - baseline else ""


def _quiet(t: Target, control: str, baseline: set[tuple[str, str]], timeout: float = 90.0) -> None:
    """Until the control shows only what it showed before (a sweep heals what an event left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _unhealthy(t.status(), control) - baseline:
            return
        time.sleep(0.2)
    raise AssertionError(f"{control} not back to its baseline within {timeout:g}s")


def trial(t: Target, kind: Kind, baseline: set[tuple[str, str]], timeout: float = 70.0) -> tuple[float, str]:
    _quiet(t, kind.control, baseline)
    time.sleep(1.0)  # past the settle time of the last heal
    heals = t.status().get("daemon", {}).get("heals_total", 0)
    started = time.monotonic()
    restore = kind.inject(t)
    how = ""
    while not how:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{kind.label}: neither healed nor reported within {timeout:g}s")
        time.sleep(0.05)
        how = _verdict(t.status(), kind.control, heals, baseline)
    took = time.monotonic() - started
    if restore is not None:
        restore()
    return took, how


def measure(t: Target, kinds: list[Kind], trials: int) -> list[str]:
    lines = [f"{'drift kind (alone)':42} {'n':>3} {'p50':>6} {'p95':>6} {'max':>6}  outcome"]
    for kind in kinds:
        baseline = _unhealthy(t.status(), kind.control)
        try:
            results = [trial(t, kind, baseline) for _ in range(trials)]
        except Exception as exc:  # a kind this node cannot show: say so, go on
            lines.append(f"{kind.label:42} skipped: {exc}")
            print(lines[-1], flush=True)
            continue
        took = [r[0] for r in results]
        outcome = "/".join(sorted({r[1] for r in results}))
        lines.append(
            f"{kind.label:42} {len(took):3d} {percentile(took, 50):5.2f}s {percentile(took, 95):5.2f}s "
            f"{max(took):5.2f}s  {outcome}"
        )
        print(lines[-1], flush=True)
    return lines


# -- the booted node ----------------------------------------------------------------------


class NodeTarget(Target):
    def __init__(self, node: Any):
        self.node = node

    def run(self, *argv: str, check: bool = True) -> str:
        return self.node.run(list(argv), check=check).stdout.strip()

    def read(self, path: str) -> str:
        return self.node.run(["cat", path], check=False).stdout

    def write(self, path: str, data: str, mode: int = 0o644) -> None:
        self.node.copy_in(data.encode(), path, mode)


def _daemon_usage(t: NodeTarget) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of the daemon's main process."""
    pid = t.run("systemctl", "show", "-p", "MainPID", "--value", "k3s-agentd.service")
    fields = t.read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = re.search(r"VmRSS:\s+(\d+)", t.read(f"/proc/{pid}/status"))
    return (int(fields[11]) + int(fields[12])) / ticks, int(rss.group(1)) if rss else 0


def idle(t: NodeTarget, seconds: float) -> str:
    cpu0, _ = _daemon_usage(t)
    started = time.monotonic()
    time.sleep(seconds)
    cpu1, rss = _daemon_usage(t)
    share = (cpu1 - cpu0) / (time.monotonic() - started)
    return f"idle daemon over {seconds:g}s: CPU {share:.3%} of a core, VmRSS {rss / 1024:.1f} MB"


def on_node(trials: int, idle_seconds: float, keep: bool = False) -> None:
    from tests.e2e.conftest import _deb
    from tests.e2e.nspawn import NspawnNode, make_node_rootfs

    work = tempfile.mkdtemp(prefix="k3s-agentd-bench-", dir="/var/tmp")
    with open(f"{work}/build.log", "w") as log:
        rootfs = make_node_rootfs(work, _deb(log), str(REPO / "tests" / "support" / "k3s_fixture"), log)
    node = NspawnNode(rootfs, name="k3s-bench")
    node.boot()
    t = NodeTarget(node)
    try:
        t.write("/etc/k3s-agentd/policy.toml", POLICY)
        if node.run(["systemctl", "cat", "k3s.service"], check=False).returncode == 0:
            node.run(["systemctl", "start", "k3s.service"], timeout=60)
        node.run(["systemctl", "restart", "k3s-agentd.service"], timeout=90)
        time.sleep(5)  # the first sweep converges the node
        mode = t.status().get("policy", {}).get("mode")
        if mode != "enforce":
            journal = t.run("journalctl", "-u", "k3s-agentd", "-o", "cat", "--no-pager", "-n", "20")
            raise AssertionError(f"the daemon runs in {mode} mode, not enforce:\n{journal}")
        lines = measure(t, NODE_KINDS, trials)
        if idle_seconds:
            lines.append(idle(t, idle_seconds))
            print(lines[-1], flush=True)
        t.write("/etc/k3s-agentd/policy.d/50-bench-iptables.toml", IPTABLES_POLICY)
        node.run(["systemctl", "reload", "k3s-agentd.service"])
        deadline = time.monotonic() + 60
        while "K3S-AGENTD-INPUT" not in t.run("iptables-legacy-save", "-t", "filter", check=False):
            if time.monotonic() > deadline:
                raise AssertionError("the iptables backend did not take over within 60s")
            time.sleep(0.5)
        lines += measure(t, LEGACY_KINDS, trials)
        print("\n" + "\n".join(lines))
    finally:
        if keep:
            print(f"node left running: nsenter -t {node.leader} -a; stop: kill {node.proc.pid}")
        else:
            node.shutdown()
            subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)


# -- a network namespace ----------------------------------------------------------------


class NetnsTarget(Target):
    def __init__(self, root: Path, pid: int):
        self.root, self.pid = root, pid

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-n", *argv], capture_output=True, text=True)
        if check and done.returncode:
            raise AssertionError(f"{argv}: {done.stderr.strip()}")
        return done.stdout.strip()

    def read(self, path: str) -> str:
        try:
            return (self.root / path.lstrip("/")).read_text()
        except OSError:
            return ""

    def write(self, path: str, data: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.write_text(data)
        target.chmod(mode)


def in_netns(trials: int) -> None:
    from common import converged_root

    root, _proc = converged_root("k3s-cis-server")
    (root / "etc/k3s-agentd/policy.toml").write_text(
        POLICY.replace('extends = "auto"', 'extends = "none"')
        + f'[controls.sysctl.items."{SYSCTL_KEY}"]\nvalue = 1\n'
    )
    argv = ["unshare", "--net", "--", sys.executable, "-m", "k3s_agent.daemon", "--root", str(root)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    daemon = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = NetnsTarget(root, daemon.pid)
        deadline = time.monotonic() + 30
        while not t.status().get("cycle") and time.monotonic() < deadline:
            time.sleep(0.2)
        print("\n" + "\n".join(measure(t, NETNS_KINDS, trials)))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", action="store_true", help="in a booted nspawn node (the real package)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--idle", type=float, default=0.0, help="also measure idle CPU/RSS for N seconds")
    parser.add_argument("--keep", action="store_true", help="leave the node running (debugging)")
    args = parser.parse_args()
    if args.node:
        on_node(args.trials, args.idle, args.keep)
    else:
        in_netns(args.trials)


if __name__ == "__main__":
    main()
