"""The end-to-end scenario of issue 6, written once, run on any Node.

Every step talks to the node only through the Node protocol (node.py: run a
command, copy a file in, reboot), so the nspawn suite (test_scenario.py) and
the Vagrant suite run exactly this code. Steps run in STEPS order and share a
Context; a step either returns (passed), raises Skipped(reason) (a control
that is not in this build yet: reported SKIPPED with the reason, never a
silent pass) or raises AssertionError.

    from tests.e2e.scenario import run_scenario
    results = run_scenario(node)          # {"step": "PASS" | "SKIPPED: why" | "FAIL: why"}

Run from a shell against a booted nspawn node: see tests/e2e/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import time
from typing import Any, Callable, Optional, TypeVar

from tests.e2e import operator
from tests.e2e.node import Node, sh, wait_until

UNIT = "k3s-agentd.service"
POLICY = "/etc/k3s-agentd/policy.toml"
UNIT_FILE = "/lib/systemd/system/k3s-agentd.service"
DROPIN = "/etc/systemd/system/k3s-agentd.service.d/50-e2e.conf"
INTERVAL = 5  # seconds: the test policy's cycle; "within one interval" is measured against it
WATCHDOG_SEC = 10
RESTART_SEC = 1
ABORT_SEC = 5
# How late a heal may come beyond one interval: the daemon's 1 s wake-up
# debounce, one cycle's own duration, and our polling. Also added to the
# restart deadlines (a restarted daemon is active only after READY=1). The
# Vagrant suite widens it for its run: everything is ~10x slower under QEMU
# emulation.
SLACK = 4.0
# The sandbox must not regress past this systemd-analyze exposure score.
EXPOSURE_MAX = 3.5

TEST_POLICY = f"""# e2e: enforce, short interval
version = 1
extends = "auto"
mode = "enforce"
interval = {INTERVAL}
# commit-confirmed first enforcement has its own e2e (test_confirm.py):
# here nobody confirms, and a rollback mid-scenario would hold firewall and sshd
confirm_timeout = 0
"""
BROKEN_POLICY = """# e2e: refused on purpose (interval must be a number >= 1)
version = 1
extends = "auto"
mode = "enforce"
interval = "soon"
"""
UNIT_DROPIN = f"""# e2e: a short watchdog so the hung-daemon step is quick
[Service]
WatchdogSec={WATCHDOG_SEC}s
RestartSec={RESTART_SEC}s
TimeoutAbortSec={ABORT_SEC}s
"""

# sysctl drift: a net.* key (writable in a container's own network namespace).
SYSCTL_KEY = "net.ipv4.conf.all.log_martians"
SYSCTL_FILE = "/etc/sysctl.d/90-k3s-agentd.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/01-k3s-agentd.conf"
NFT_TABLE = ("inet", "k3s_agentd")
ENCRYPTION_CONFIG = "/var/lib/rancher/k3s/server/cred/encryption-config.json"
HEALTHY = ("ok", "healed")
SETTLED = (*HEALTHY, "absent", "unsupported", "manual")  # k3s_agent.model.COMPLIANT
PACKAGE = "k3s-hardening-agent"
# Controls with items only in the k3s-cis-server profile: silent on an agent node.
SERVER_ONLY = ("k3s_encryption",)
# The K3s fixture's unit per role (tests/support/k3s_fixture/install.sh ROOT server|agent).
K3S_UNITS = {"server": "k3s.service", "agent": "k3s-agent.service"}
PROFILES = {"server": "k3s-cis-server", "agent": "k3s-cis-agent"}
# What an agent-only node runs of K3s: its own flags, the kubelet and kube-proxy.
AGENT_PARTS = ("k3s", "kubelet", "kube-proxy")
# A kubelet setting the k3s-cis-* profiles forbid (CIS 4.2.1), made by a config drop-in.
LOOSE_DROPIN = "/etc/rancher/k3s/config.yaml.d/50-e2e-loose.yaml"
LOOSE_KEY = "kubelet:anonymous-auth"
EXIT_CODES = {"compliant": 0, "drift": 1, "failed": 2}
# Where a node implementation may leave the package file for the lifecycle step.
PACKAGE_DIR = "/var/cache/k3s-agentd-e2e"


T = TypeVar("T")


class Skipped(Exception):
    """The step cannot run on this build/node; the message says why."""


@dataclasses.dataclass
class Context:
    node: Node
    log: Callable[[str], None] = print
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


# -- reading the node ------------------------------------------------------------------


def unit_props(node: Node, *names: str) -> dict[str, str]:
    out = node.run(["systemctl", "show", UNIT, "-p", ",".join(names)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def status(node: Node) -> dict[str, Any]:
    """`k3s-agentctl status --json` (exit 0/1/2 are all answers; 3 = daemon down)."""
    done = node.run(["k3s-agentctl", "status", "--json"], check=False)
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"status --json exit {done.returncode}: {done.stderr.strip()}") from None


def control(doc: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
    for entry in doc.get("controls", []):
        if entry["name"] == name:
            return entry
    return None


def findings(doc: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    entry = control(doc, name)
    return {f["key"]: f for f in entry["findings"]} if entry else {}


def require_control(ctx: Context, name: str) -> dict[str, Any]:
    """Gate: the control must be in this build and in the status, else SKIPPED."""
    doc = status(ctx.node)
    if name not in ctx.notes.get("registry", []):
        raise Skipped(f"control {name!r} is not in this build (k3s_agent.controls.default_registry())")
    entry = control(doc, name)
    if entry is None:
        raise AssertionError(f"control {name!r} is built but missing from k3s-agentctl status")
    return entry


def read_sysctl(node: Node, key: str) -> str:
    return node.run(["sysctl", "-n", key]).stdout.strip()


def journal(node: Node, *args: str) -> str:
    return node.run(["journalctl", "--no-pager", "-o", "cat", *args], check=False).stdout


def node_now(node: Node) -> float:
    return float(node.run(["date", "+%s.%N"]).stdout.strip())


def timed(probe: Callable[[], Any], timeout: float, what: str) -> float:
    return timed_result(probe, timeout, what)[0]


def timed_result(probe: Callable[[], T], timeout: float, what: str) -> tuple[float, T]:
    """Seconds until probe() was truthy, and what it returned ("healed"/"reported" for drift steps)."""
    start = time.monotonic()
    result = wait_until(probe, timeout, what, every=0.25)
    return time.monotonic() - start, result


# -- the lock-out probe (issue 11; tests/e2e/operator.py) -------------------------------


def settled(ctx: Context, *names: str) -> None:
    """Wait until no finding of these controls (those in the build) is left to heal:
    each one compliant (ok, healed, or absent/unsupported on this node)."""
    node = ctx.node
    present = [n for n in names if n in ctx.notes.get("registry", [])]

    def all_settled() -> bool:
        doc = status(node)
        return all(f["status"] in SETTLED for n in present for f in findings(doc, n).values())

    wait_until(all_settled, INTERVAL + SLACK, f"every finding of {', '.join(present)} compliant")


def check_operator_access(ctx: Context, when: str, firewall_on: bool = True) -> None:
    """A NEW SSH login as the operator, from the peer, to every address of the node;
    and the firewall as the peer sees it: on (DROPPED_PORT shut) or off (open).

    A firewall that is merely absent would let the login through too: the
    closed port is what proves the login went through an enforcing firewall.
    """
    node = ctx.node
    peer = operator.peer_of(node)
    started = time.monotonic()
    for address in peer.addresses:
        failures = operator.login_failures(node, address)
        assert len(failures) < operator.LOGIN_ATTEMPTS, (
            f"{when}: operator login to {address} from the peer failed: " + " | ".join(failures)
        )
        if failures:
            ctx.log(f"{when}: login to {address} worked after {len(failures)} failure(s): {failures}")
    if "firewall" in ctx.notes.get("registry", []):
        operator.ensure_listener(node, operator.DROPPED_PORT)
        for address in peer.addresses:
            reached = operator.peer_reaches(node, operator.DROPPED_PORT, address)
            assert reached != firewall_on, (
                f"{when}: port {operator.DROPPED_PORT} on {address} is "
                f"{'reachable' if reached else 'dropped'} from the peer, but the firewall "
                f"should be {'on' if firewall_on else 'off'}"
            )
    took = time.monotonic() - started
    ctx.notes.setdefault("probe_seconds", []).append(took)
    ctx.log(f"{when}: operator login ok on {', '.join(peer.addresses)}, firewall "
            f"{'on' if firewall_on else 'off'} as seen from the peer ({took:.1f}s)")  # fmt: skip


# -- steps -----------------------------------------------------------------------------


def step_install_state(ctx: Context) -> None:
    """Enabled, audit-mode policy, and audit mode has changed nothing on the node.

    The package never starts the daemon; the unit is enabled, so it is running
    only if the node booted since the install (the nspawn node has; a VM
    provisioned by `apt install` has not). Either way nothing is healed.
    """
    node = ctx.node
    assert node.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    # The unit as this systemd reads it: no unknown or ignored directive.
    verify = node.run(["systemd-analyze", "verify", UNIT], check=False)
    complaints = [
        line
        for line in (verify.stdout + verify.stderr).splitlines()
        # minbase has no man(1) to resolve Documentation=man:...: not the unit's fault
        if "k3s-agentd" in line and "Command 'man " not in line
    ]
    assert not complaints, "systemd-analyze verify: " + "\n".join(complaints)
    policy = node.run(["cat", POLICY]).stdout
    assert re.search(r'^mode = "audit"', policy, re.M), "the shipped policy must be in audit mode"
    registry = node.run(
        [
            "python3",
            "-c",
            "import json; from k3s_agent.controls import default_registry as r; "
            "print(json.dumps(sorted(r())))",
        ]
    ).stdout
    ctx.notes["registry"] = json.loads(registry)
    ctx.log(f"controls in this build: {', '.join(ctx.notes['registry'])}")
    active = node.run(["systemctl", "is-active", UNIT], check=False).stdout.strip()
    ctx.log(f"after install (+ boot): k3s-agentd is {active}")
    if active == "active":
        doc = wait_until(lambda: control(status(node), "sysctl") and status(node), INTERVAL + SLACK, "status")
        assert doc["policy"]["mode"] == "audit", doc["policy"]
        got = findings(doc, "sysctl")
        assert got[SYSCTL_KEY]["status"] == "drift", got[SYSCTL_KEY]
    else:
        assert active == "inactive", f"k3s-agentd is {active} after install"
    # Audit mode wrote nothing: the persisted file does not exist, the kernel value is untouched.
    assert (
        node.run(["test", "-e", SYSCTL_FILE], check=False).returncode != 0
    ), f"{SYSCTL_FILE} written in audit"
    assert read_sysctl(node, SYSCTL_KEY) == "0", "audit mode changed a kernel parameter"


def step_sandbox_exposure(ctx: Context) -> None:
    """`systemd-analyze security k3s-agentd`: the shipped unit vs the same unit without its sandbox.

    Measured on the loaded unit (the unsandboxed copy is loaded from /run for
    the measurement, then removed) and offline on the two files.
    """
    node = ctx.node
    unit = node.run(["cat", UNIT_FILE]).stdout
    bare = re.sub(r"# --- sandboxing.*?(?=^\[Install\])", "", unit, flags=re.S | re.M)
    assert bare != unit, "the unit lost its '# --- sandboxing' section marker"
    node.copy_in(bare.encode(), "/root/e2e-unsandboxed/k3s-agentd.service")
    offline = (_exposure(node, "/root/e2e-unsandboxed/k3s-agentd.service"), _exposure(node, UNIT_FILE))
    runtime_unit = "/run/systemd/system/k3s-agentd.service"  # /run beats /lib: loaded instead
    node.copy_in(bare.encode(), runtime_unit)
    try:
        node.run(["systemctl", "daemon-reload"])
        before = _exposure(node, UNIT)
    finally:
        node.run(["rm", "-f", runtime_unit])
        node.run(["systemctl", "daemon-reload"])
    after = _exposure(node, UNIT)
    ctx.notes["exposure"] = {"loaded": (before, after), "offline": offline}
    ctx.log(f"systemd-analyze security {UNIT}: {before} without sandboxing, {after} shipped")
    ctx.log(f"  (offline on the unit files: {offline[0]} -> {offline[1]})")
    assert after < before and offline[1] < offline[0]
    assert after <= EXPOSURE_MAX, f"exposure {after} is above {EXPOSURE_MAX}: the sandbox regressed"


def _exposure(node: Node, unit: str) -> float:
    argv = ["systemd-analyze", "security", "--no-pager"]
    argv += ["--offline=yes", unit] if unit.startswith("/") else [unit]
    done = node.run(argv, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, f"no exposure level in systemd-analyze output: {done.stdout[-300:]}{done.stderr[-300:]}"
    return float(match.group(1))


def step_operator_baseline(ctx: Context) -> None:
    """The operator account with the peer's key. Before any enforcement a login works and
    DROPPED_PORT is open to the peer, so its being shut later is the firewall's doing."""
    operator.ensure_operator(ctx.node)
    check_operator_access(ctx, "before enforcement", firewall_on=False)


def step_start(ctx: Context) -> None:
    """Enforce-mode test policy, a short watchdog; start K3s (fixture) and the agent."""
    node = ctx.node
    node.copy_in(TEST_POLICY.encode(), POLICY, 0o644)
    node.copy_in(UNIT_DROPIN.encode(), DROPIN, 0o644)
    assert node.run(["k3s-agentctl", "validate"], check=False).returncode == 0
    node.run(["systemctl", "daemon-reload"])
    for role, unit in K3S_UNITS.items():  # a server node, or an agent-only node
        if node.run(["systemctl", "cat", unit], check=False).returncode == 0:
            node.run(["systemctl", "start", unit], timeout=60)
            ctx.notes.update(k3s=True, k3s_role=role, k3s_unit=unit)
            break
    # Type=notify: `systemctl restart` returns only once the daemon sent READY=1.
    node.run(["systemctl", "restart", UNIT], timeout=90)


def step_ready(ctx: Context) -> None:
    """active/running after READY=1, STATUS= from the first cycle, watchdog armed."""
    node = ctx.node
    props = unit_props(node, "Type", "ActiveState", "SubState", "MainPID", "WatchdogUSec", "NRestarts")
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["WatchdogUSec"] in (f"{WATCHDOG_SEC}s", str(WATCHDOG_SEC * 1_000_000)), props
    status_text = wait_until(
        lambda: re.match(r"(compliant|drift|failed): ", unit_props(node, "StatusText")["StatusText"]),
        INTERVAL + SLACK,
        "a STATUS= line from the first cycle",
    )
    ctx.log(f"StatusText: {status_text.string}")
    assert "started" in journal(node, "-u", UNIT, f"_PID={props['MainPID']}")
    # The sandbox as the daemon sees it (its own mount namespace): what it
    # manages is writable, /etc/rancher included (the package's tmpfiles.d
    # entry makes it before the first start, so K3s installed later is still
    # covered); the rest of /etc, the unit directory above all, is not.
    probe = "for p in /etc/rancher /etc/sysctl.d /etc/systemd/system; do test -w $p && echo $p; done; exit 0"
    writable = node.run(["nsenter", "-t", props["MainPID"], "-m", "--", "sh", "-c", probe]).stdout.split()
    assert writable == ["/etc/rancher", "/etc/sysctl.d"], f"writable in the daemon's sandbox: {writable}"


def step_every_control(ctx: Context) -> None:
    """status shows every control of this build, each with findings and no crash."""
    doc = status(ctx.node)
    names = [c["name"] for c in doc["controls"]]
    missing = sorted(set(ctx.notes["registry"]) - set(names))
    assert not missing, f"controls missing from status: {missing}"
    assert doc["daemon"].get("running") is True and doc["policy"]["mode"] == "enforce"
    agent_node = doc["policy"].get("profile") == "k3s-cis-agent"
    for entry in doc["controls"]:
        assert entry["error"] in (None, ""), f"{entry['name']}: {entry['error']}"
        if agent_node and entry["name"] in SERVER_ONLY:
            continue  # the agent profile gives it nothing to check (the Vagrant agent VM)
        assert entry["findings"], f"{entry['name']} reported no findings"


def step_first_cycle_enforced(ctx: Context) -> None:
    """In enforce mode every net.* sysctl is healed (kernel.* are read-only in a container)."""
    node = ctx.node

    def all_net_ok() -> bool:
        got = findings(status(node), "sysctl")
        net = {k: f for k, f in got.items() if k.startswith("net.")}
        return bool(net) and all(f["status"] in HEALTHY for f in net.values())

    wait_until(all_net_ok, INTERVAL + SLACK, "every net.* sysctl ok/healed")
    got = findings(status(node), "sysctl")
    assert got[SYSCTL_KEY]["status"] in HEALTHY
    assert read_sysctl(node, SYSCTL_KEY) == str(got[SYSCTL_KEY]["desired"])
    persisted = node.run(["cat", SYSCTL_FILE]).stdout
    assert re.search(rf"^{re.escape(SYSCTL_KEY)}\s*=\s*1\s*$", persisted, re.M), persisted
    settled(ctx, "firewall", "sshd")
    check_operator_access(ctx, "after the first enforcing cycle")


def step_drift_sysctl(ctx: Context) -> None:
    """sysctl -w on a net.* key, and a deleted sysctl.d file: both healed within one interval."""
    node = ctx.node
    desired = str(findings(status(node), "sysctl")[SYSCTL_KEY]["desired"])
    wrong = "0" if desired != "0" else "1"
    heals = status(node)["daemon"].get("heals_total", 0)
    node.run(["sysctl", "-w", f"{SYSCTL_KEY}={wrong}"])
    took = timed(lambda: read_sysctl(node, SYSCTL_KEY) == desired, INTERVAL + SLACK, f"{SYSCTL_KEY} healed")
    ctx.log(f"sysctl {SYSCTL_KEY} healed in {took:.1f}s (interval {INTERVAL}s)")
    wait_until(lambda: status(node)["daemon"].get("heals_total", 0) > heals, SLACK, "heals_total to grow")
    node.run(["rm", "-f", SYSCTL_FILE])
    took = timed(
        lambda: node.run(["test", "-s", SYSCTL_FILE], check=False).returncode == 0,
        INTERVAL + SLACK,
        f"{SYSCTL_FILE} rewritten",
    )
    ctx.log(f"{SYSCTL_FILE} rewritten in {took:.1f}s")


def step_drift_firewall(ctx: Context) -> None:
    """A deleted rule of the agent's own table/chain is put back (or reported) within one interval."""
    require_control(ctx, "firewall")
    node = ctx.node
    family, table = NFT_TABLE
    listing = node.run(["nft", "-a", "list", "table", family, table], check=False)
    if listing.returncode == 0:
        _drift_nft(ctx, family, table, listing.stdout)
    else:
        _drift_iptables(ctx)
    settled(ctx, "firewall")
    check_operator_access(ctx, "after the firewall heal")


def _strip_handles(text: str) -> str:
    return re.sub(r"\s*# handle \d+", "", text)


def first_nft_rule(listing: str) -> tuple[str, str]:
    """(chain, handle) of the first rule in an `nft -a list table` listing; ("", "") if none."""
    chain = ""
    for line in listing.splitlines():
        head = re.match(r"\s*chain (\S+) \{", line)
        if head:
            chain = head.group(1)
        rule = re.search(r"# handle (\d+)$", line)
        if chain and rule and not line.strip().startswith(("chain", "type", "policy", "set", "table")):
            return chain, rule.group(1)
    return "", ""


def _drift_nft(ctx: Context, family: str, table: str, listing: str) -> None:
    node = ctx.node
    chain, handle = first_nft_rule(listing)
    assert handle, f"no rule in nft table {family} {table}:\n{listing}"
    before = _strip_handles(listing)
    node.run(["nft", "delete", "rule", family, table, chain, "handle", handle])

    def back_or_reported() -> str:
        now = node.run(["nft", "-a", "list", "table", family, table], check=False).stdout
        if _strip_handles(now) == before:
            return "healed"
        bad = any(f["status"] not in HEALTHY for f in findings(status(node), "firewall").values())
        return "reported" if bad else ""

    took, how = timed_result(
        back_or_reported, INTERVAL + SLACK, f"the deleted rule in chain {chain} healed or reported"
    )
    ctx.log(f"nft rule deleted from chain {chain}: {how} in {took:.1f}s")


def _drift_iptables(ctx: Context) -> None:
    node = ctx.node
    saved = node.run(["iptables-save", "-t", "filter"]).stdout
    ours = [line for line in saved.splitlines() if line.startswith("-A K3S-AGENTD-")]
    assert ours, "firewall control present but neither nft table inet k3s_agentd nor K3S-AGENTD-* chains"
    rule = ours[0]
    node.run(["iptables", "-w", "-t", "filter", *shlex.split("-D" + rule[2:])])

    def back_or_reported() -> str:
        if rule in node.run(["iptables-save", "-t", "filter"]).stdout.splitlines():
            return "healed"
        bad = any(f["status"] not in HEALTHY for f in findings(status(node), "firewall").values())
        return "reported" if bad else ""

    took, how = timed_result(back_or_reported, INTERVAL + SLACK, f"iptables rule {rule!r} healed or reported")
    ctx.log(f"iptables rule deleted: {how} in {took:.1f}s")


def step_drift_sshd(ctx: Context) -> None:
    """An option edited in the agent's sshd drop-in is put back (or reported) within one interval."""
    require_control(ctx, "sshd")
    node = ctx.node
    if node.run(["test", "-f", SSHD_DROPIN], check=False).returncode != 0:
        raise AssertionError(f"sshd control present and enforcing, but {SSHD_DROPIN} was not written")
    original = node.run(["cat", SSHD_DROPIN]).stdout
    edited, option = _flip_one_option(original)
    assert option, f"no yes/no or numeric option to edit in {SSHD_DROPIN}:\n{original}"
    node.copy_in(edited.encode(), SSHD_DROPIN, 0o644)

    def back_or_reported() -> str:
        if node.run(["cat", SSHD_DROPIN]).stdout == original:
            return "healed"
        got = findings(status(node), "sshd")
        bad = any(k.lower() == option.lower() and f["status"] not in HEALTHY for k, f in got.items())
        return "reported" if bad else ""

    took, how = timed_result(back_or_reported, INTERVAL + SLACK, f"sshd option {option} healed or reported")
    effective = node.run(["sshd", "-T"], check=False).stdout.lower()
    ctx.log(f"sshd {option} edited: {how} in {took:.1f}s; sshd -T has {option.lower()}: "
            f"{option.lower() in effective}")  # fmt: skip
    settled(ctx, "sshd")
    check_operator_access(ctx, "after the sshd heal")


def step_lockout_caught(ctx: Context) -> None:
    """The probe can fail: with the agent stopped, tcp/22 dropped by hand on the node's NIC,
    the operator login must fail; with the drop gone and the agent back, it works again."""
    node = ctx.node
    peer = operator.peer_of(node)
    node.run(["systemctl", "stop", UNIT], timeout=90)
    try:
        with operator.ssh_dropped(node) as nic:
            started = time.monotonic()
            ok, output = operator.operator_login(node, timeout=peer.timeout)
            took = time.monotonic() - started
            assert not ok, f"operator login worked through a drop of tcp/22 on {nic}: the probe is blind"
            ctx.log(f"tcp/22 dropped on {nic} by hand: operator login failed in {took:.1f}s ({output})")
    finally:
        node.run(["systemctl", "start", UNIT], timeout=90)
    settled(ctx, "firewall", "sshd")
    check_operator_access(ctx, "with the by-hand drop gone")


def _flip_one_option(text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        match = re.match(r"\s*([A-Za-z]+)\s+(\S+)\s*$", line)
        if not match:
            continue
        name, value = match.groups()
        if value.lower() in ("yes", "no"):
            new = "no" if value.lower() == "yes" else "yes"
        elif value.isdigit():
            new = str(int(value) + 1)
        else:
            continue
        lines[i] = f"{name} {new}\n"
        return "".join(lines), name
    return text, ""


def step_drift_files(ctx: Context) -> None:
    """chmod 0644 on a key file: put back to its mode (or reported) within one interval.

    A K3s *.key from the fixture when there is one; otherwise another file the
    control keeps at 0600 (sshd_config), so the step never depends on K3s.
    """
    entry = require_control(ctx, "files")
    node = ctx.node
    healthy = [f for f in entry["findings"] if f["status"] in HEALTHY and not f["key"].endswith("/*")]
    keys = [f["key"] for f in healthy if f["key"].endswith(".key")]
    tight = [f["key"] for f in healthy if "0600" in str(f["desired"]) and _is_file(node, f["key"])]
    if not keys and not tight:
        raise AssertionError(f"files control reports no ok file kept at 0600: {healthy}")
    path = (keys or tight)[0]
    mode = node.run(["stat", "-c", "%a", path]).stdout.strip()
    node.run(["chmod", "0644", path])

    def back_or_reported() -> str:
        if node.run(["stat", "-c", "%a", path]).stdout.strip() == mode:
            return "healed"
        got = findings(status(node), "files").get(path)
        return "reported" if got and got["status"] not in HEALTHY else ""

    took, how = timed_result(back_or_reported, INTERVAL + SLACK, f"mode of {path} healed or reported")
    ctx.log(f"chmod 0644 {path} (was {mode}): {how} in {took:.1f}s")


def _is_file(node: Node, path: str) -> bool:
    return node.run(["sh", "-c", '[ -f "$1" ] && [ ! -L "$1" ]', "sh", path], check=False).returncode == 0


def step_drift_encryption(ctx: Context) -> None:
    """An edited encryption config is reported (verify-only) within one interval; then restored."""
    require_control(ctx, "k3s_encryption")
    node = ctx.node
    if node.run(["test", "-f", ENCRYPTION_CONFIG], check=False).returncode != 0:
        raise Skipped(f"no {ENCRYPTION_CONFIG} in this node (K3s fixture not installed)")
    original = node.run(["cat", ENCRYPTION_CONFIG]).stdout
    edited = original.rstrip("\n") + " \n"  # same JSON, other bytes: its hash no longer matches
    node.copy_in(edited.encode(), ENCRYPTION_CONFIG, 0o600)

    def reported() -> bool:
        return any(f["status"] not in HEALTHY for f in findings(status(node), "k3s_encryption").values())

    try:
        took = timed(reported, INTERVAL + SLACK, "the edited encryption config reported")
        ctx.log(f"encryption config edit reported in {took:.1f}s")
    finally:
        node.copy_in(original.encode(), ENCRYPTION_CONFIG, 0o600)
    wait_until(lambda: not reported(), INTERVAL + SLACK, "encryption findings ok again after the restore")


def step_k3s_args(ctx: Context) -> None:
    """The K3s argument verifier reads the (fixture) K3s and reports without failing."""
    entry = require_control(ctx, "k3s_args")
    if not ctx.notes.get("k3s"):
        raise Skipped("no K3s fixture in this node: nothing for k3s_args to verify")
    bad = [f for f in entry["findings"] if f["status"] == "failed"]
    assert not bad, f"k3s_args failed items: {bad[:3]}"


def step_k3s_role(ctx: Context) -> None:
    """The profile `auto` picked is the K3s role's, and k3s_args sees that role. On an
    agent-only node only agent parts are checked (K3s's own flags, kubelet,
    kube-proxy, the agent's files: all compliant on the fixture's hardened agent),
    nothing of a server's (no apiserver items, no server paths, no encryption)."""
    role = ctx.notes.get("k3s_role")
    if not role:
        raise Skipped("no K3s fixture in this node")
    doc = status(ctx.node)
    assert doc["policy"]["profile"] == PROFILES[role], (role, doc["policy"])
    entry = control(doc, "k3s_args")
    assert entry and (entry.get("facts") or {}).get("role") == role, entry and entry.get("facts")
    got = findings(doc, "k3s_args")
    assert got["k3s:service"]["status"] == "ok", got["k3s:service"]
    assert got["k3s:service"]["observed"].endswith(f"(k3s-{role})"), got["k3s:service"]
    if role != "agent":
        ctx.log(f"K3s server node: profile {doc['policy']['profile']}, k3s_args role server")
        return
    parts = {key.split(":", 1)[0] for key in got}
    assert parts <= set(AGENT_PARTS), f"server parts checked on an agent node: {sorted(parts)}"
    assert "kubelet:anonymous-auth" in got
    loose = {k: (f["status"], f["message"]) for k, f in got.items() if f["status"] not in SETTLED}
    assert not loose, f"the fixture's hardened agent is not compliant: {loose}"
    assert not findings(doc, "k3s_encryption"), "encryption findings on an agent node"
    server_paths = [k for k in findings(doc, "files") if k.startswith("/var/lib/rancher/k3s/server")]
    assert not server_paths, f"server files checked on an agent node: {server_paths}"
    ctx.log(f"agent-only node: profile k3s-cis-agent, k3s_args items {sorted(got)}")


def _check_code(node: Node) -> tuple[int, dict[str, Any]]:
    """`k3s-agentctl check --control k3s_args --json`: its exit code and document."""
    done = node.run(["k3s-agentctl", "check", "--control", "k3s_args", "--json"], check=False, timeout=180)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"check --json exit {done.returncode}: {done.stderr.strip()}") from None


def step_status_exit_codes(ctx: Context) -> None:
    """Exit codes say the verdict (0 compliant, 1 drift, 2 failed): `status` agrees with its
    own document; a kubelet setting loosened in a K3s config drop-in (not healable: the
    agent never restarts K3s) turns `check` and `status` to 1, and undoing it turns
    `check` back to what it was."""
    node = ctx.node
    if not ctx.notes.get("k3s"):
        raise Skipped("no K3s fixture in this node: no K3s setting to loosen")
    done = node.run(["k3s-agentctl", "status", "--json"], check=False)
    doc = json.loads(done.stdout)
    assert done.returncode == EXIT_CODES[doc["summary"]["verdict"]], (done.returncode, doc["summary"])
    before, report = _check_code(node)
    assert before == EXIT_CODES[report["summary"]["verdict"]], (before, report["summary"])
    node.copy_in(b'kubelet-arg+:\n  - "anonymous-auth=true"\n', LOOSE_DROPIN, 0o600)
    try:
        code, report = _check_code(node)
        assert code == 1, f"check exit {code} with {LOOSE_DROPIN}: {report['summary']}"
        assert findings(report, "k3s_args")[LOOSE_KEY]["status"] == "drift"

        def status_says_drift() -> bool:
            done = node.run(["k3s-agentctl", "status", "--json"], check=False)
            got = findings(json.loads(done.stdout), "k3s_args").get(LOOSE_KEY, {})
            return got.get("status") == "drift" and done.returncode >= 1

        took = timed(status_says_drift, INTERVAL + SLACK, f"status to report {LOOSE_KEY} (exit >= 1)")
    finally:
        node.run(["rm", "-f", LOOSE_DROPIN])
    after, _ = _check_code(node)
    assert after == before, f"check exit {after} after the drop-in was removed, {before} before"
    ctx.log(f"exit codes: check {before} -> 1 -> {after}; status reported the loose kubelet in {took:.1f}s")


def step_reload_broken_policy(ctx: Context) -> None:
    """systemctl reload with a refused policy: same process, old policy still enforced."""
    node = ctx.node
    pid = unit_props(node, "MainPID")["MainPID"]
    node.copy_in(BROKEN_POLICY.encode(), POLICY, 0o644)
    try:
        node.run(["systemctl", "reload", UNIT])
        doc = wait_until(
            lambda: (lambda d: d if d["daemon"].get("policy_error") else None)(status(node)),
            INTERVAL + SLACK,
            "the daemon to report the refused policy",
        )
        assert "interval" in doc["daemon"]["policy_error"], doc["daemon"]["policy_error"]
        props = unit_props(node, "MainPID", "ActiveState")
        assert props == {"MainPID": pid, "ActiveState": "active"}, props
        assert doc["policy"]["mode"] == "enforce" and doc["policy"]["interval_seconds"] == INTERVAL
        assert "policy refused" in journal(
            node, "-u", UNIT, f"_PID={pid}"
        ), "no 'policy refused' in the journal"
        # The old policy is still the one enforced: drift is still healed.
        node.run(["sysctl", "-w", f"{SYSCTL_KEY}=0"])
        took = timed(
            lambda: read_sysctl(node, SYSCTL_KEY) == "1", INTERVAL + SLACK, "heal under the old policy"
        )
        ctx.log(f"refused policy kept the old one; drift healed in {took:.1f}s")
    finally:
        node.copy_in(TEST_POLICY.encode(), POLICY, 0o644)
        node.run(["systemctl", "reload", UNIT])
    wait_until(
        lambda: not status(node)["daemon"].get("policy_error"), INTERVAL + SLACK, "policy_error cleared"
    )


def _restarted(node: Node, old_pid: str, restarts: int) -> Optional[dict[str, str]]:
    props = unit_props(node, "MainPID", "ActiveState", "SubState", "NRestarts")
    if (
        props["MainPID"] not in ("0", old_pid)
        and props["ActiveState"] == "active"
        and int(props["NRestarts"]) > restarts
    ):
        return props
    return None


def _clean_first_cycle(ctx: Context, pid: str) -> None:
    node = ctx.node

    def from_new_daemon() -> Optional[dict[str, Any]]:
        try:
            doc = status(node)
        except AssertionError:  # daemon still starting: no status yet
            return None
        return doc if str(doc.get("daemon", {}).get("pid")) == pid and "summary" in doc else None

    doc = wait_until(from_new_daemon, INTERVAL + SLACK, f"status from the restarted daemon (pid {pid})")
    assert doc["summary"]["by_status"].get("failed", 0) == 0, doc["summary"]
    assert all(c["error"] in (None, "") for c in doc["controls"])
    logs = journal(node, "-u", UNIT, f"_PID={pid}")
    assert "Traceback" not in logs, logs[-2000:]
    assert "started" in logs


def step_kill9(ctx: Context) -> None:
    """kill -9: systemd restarts it (Restart=on-failure) and the first cycle is clean."""
    node = ctx.node
    props = unit_props(node, "MainPID", "NRestarts")
    node.run(["kill", "-9", props["MainPID"]])
    new = wait_until(
        lambda: _restarted(node, props["MainPID"], int(props["NRestarts"])),
        RESTART_SEC + 26 + SLACK,
        "systemd to restart the killed daemon",
    )
    ctx.log(f"killed {props['MainPID']}, restarted as {new['MainPID']} (NRestarts {new['NRestarts']})")
    _clean_first_cycle(ctx, new["MainPID"])


def step_watchdog(ctx: Context) -> None:
    """A hung daemon (SIGSTOP) stops pinging; WatchdogSec fires and systemd restarts it."""
    node = ctx.node
    props = unit_props(node, "MainPID", "NRestarts")
    since = node_now(node)
    node.run(["kill", "-STOP", props["MainPID"]])
    start = time.monotonic()
    new = wait_until(
        lambda: _restarted(node, props["MainPID"], int(props["NRestarts"])),
        WATCHDOG_SEC + ABORT_SEC + RESTART_SEC + 16 + SLACK,
        "the watchdog to restart the stopped daemon",
    )
    took = time.monotonic() - start
    logs = journal(node, "-u", UNIT, "--since", f"@{since:.0f}")
    assert "Watchdog timeout" in logs, logs[-2000:]
    ctx.log(f"watchdog restarted the hung daemon after {took:.1f}s (WatchdogSec={WATCHDOG_SEC}s)")
    _clean_first_cycle(ctx, new["MainPID"])


def step_reboot(ctx: Context) -> None:
    """After a reboot the enabled unit starts by itself and heals the fresh kernel state."""
    node = ctx.node
    node.reboot()
    wait_until(
        lambda: node.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "active",
        26 + SLACK,
        "k3s-agentd active after boot",
    )
    wait_until(
        lambda: read_sysctl(node, SYSCTL_KEY) == "1", INTERVAL + SLACK, f"{SYSCTL_KEY} enforced after boot"
    )
    pid = unit_props(node, "MainPID")["MainPID"]
    _clean_first_cycle(ctx, pid)
    settled(ctx, "firewall", "sshd")
    check_operator_access(ctx, "after the reboot")


def step_package_lifecycle(ctx: Context) -> None:
    """remove keeps conffile and managed files; install does not start, upgrade restarts a running
    daemon; managed files are purged only when asked, K3s's never."""
    node = ctx.node
    if node.run(["sh", "-c", "command -v dpkg"], check=False).returncode != 0:
        raise Skipped("not a dpkg node (the rpm lifecycle is not driven here)")
    found = node.run(["sh", "-c", f"ls {PACKAGE_DIR}/*.deb"], check=False).stdout.split()
    if not found:
        raise Skipped(f"no package file in {PACKAGE_DIR} on this node to reinstall from")
    deb = found[0]
    k3s_files = ["/var/lib/rancher/k3s", "/etc/rancher/k3s/config.yaml"] if ctx.notes.get("k3s") else []
    assert node.run(["test", "-s", SYSCTL_FILE], check=False).returncode == 0, "no managed file to test with"
    node.run(["dpkg", "-r", PACKAGE], timeout=120)
    assert node.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() != "active"
    assert node.run(["cat", POLICY]).stdout == TEST_POLICY, "remove must keep the edited conffile"
    assert node.run(["test", "-s", SYSCTL_FILE], check=False).returncode == 0, "removed without being asked"
    node.run(["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", deb], timeout=120)
    assert node.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    active = node.run(["systemctl", "is-active", UNIT], check=False).stdout.strip()
    assert active == "inactive", f"install must not start the daemon, it is {active}"
    assert node.run(["cat", POLICY]).stdout == TEST_POLICY, "reinstall must keep the edited conffile"
    # Upgrade (here: the same version again) of a running daemon restarts it on the new files.
    node.run(["systemctl", "start", UNIT], timeout=90)
    pid = unit_props(node, "MainPID")["MainPID"]
    node.run(["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", deb], timeout=120)
    props = unit_props(node, "MainPID", "ActiveState")
    assert props["ActiveState"] == "active" and props["MainPID"] not in ("0", pid), props
    node.run(["env", "K3S_AGENTD_PURGE_MANAGED=yes", "dpkg", "--purge", PACKAGE], timeout=120)
    for gone in (SYSCTL_FILE, SSHD_DROPIN, "/etc/k3s-agentd", "/var/lib/k3s-agentd"):
        assert node.run(["test", "-e", gone], check=False).returncode != 0, f"{gone} left after purge"
    assert node.run(["nft", "list", "table", *NFT_TABLE], check=False).returncode != 0
    for kept in k3s_files:
        assert node.run(["test", "-e", kept], check=False).returncode == 0, f"purge removed K3s's {kept}"
    ctx.log(
        "remove/install/upgrade/purge: conffile kept, not started on install, restarted on upgrade,"
        " managed files purged on request"
    )


def step_operator_at_end(ctx: Context) -> None:
    """At the end the operator still logs in; the firewall is off if the package was purged."""
    purged = ctx.node.run(["systemctl", "cat", UNIT], check=False).returncode != 0
    check_operator_access(ctx, "at the end" + (" (package purged)" if purged else ""), firewall_on=not purged)
    probes = ctx.notes.get("probe_seconds", [])
    ctx.log(f"lock-out probe: {len(probes)} checks, {sum(probes):.1f}s in all")


STEPS: list[Callable[[Context], None]] = [
    step_install_state,
    step_sandbox_exposure,
    step_operator_baseline,
    step_start,
    step_ready,
    step_every_control,
    step_first_cycle_enforced,
    step_drift_sysctl,
    step_drift_firewall,
    step_drift_sshd,
    step_lockout_caught,
    step_drift_files,
    step_drift_encryption,
    step_k3s_args,
    step_k3s_role,
    step_status_exit_codes,
    step_reload_broken_policy,
    step_kill9,
    step_watchdog,
    step_reboot,
    step_package_lifecycle,
    step_operator_at_end,
]


def run_scenario(node: Node, log: Callable[[str], None] = print) -> dict[str, str]:
    """Every step in order; a failed step is recorded and the rest still run."""
    ctx = Context(node, log)
    results: dict[str, str] = {}
    for step in STEPS:
        name = step.__name__[len("step_") :]
        try:
            step(ctx)
            results[name] = "PASS"
        except Skipped as exc:
            results[name] = f"SKIPPED: {exc}"
        except Exception as exc:
            results[name] = f"FAIL: {type(exc).__name__}: {exc}"
        log(f"{name}: {results[name]}")
    return results


def diagnostics(node: Node) -> str:
    """What to print when a step fails: the unit, its journal, the status table."""
    parts = []
    for argv in (
        ["systemctl", "status", "--no-pager", UNIT],
        ["journalctl", "--no-pager", "-n", "60", "-u", UNIT],
        ["k3s-agentctl", "status"],
    ):
        done = sh(node, " ".join(shlex.quote(a) for a in argv) + " 2>&1", check=False)
        parts.append(f"$ {' '.join(argv)}\n{done.stdout}")
    return "\n".join(parts)
