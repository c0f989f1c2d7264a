"""Commit-confirmed enforcement on a booted node (issue 11, part 3), step by step.

A deliberately locking policy (`allow_lockout = true`: tcp/22 dropped) is
enforced with a short `confirm_timeout` and nobody confirms: SSH from the
peer must come back within timeout + one interval, three times: plainly,
with a `kill -9` of the daemon in the window, and with a reboot in the
window. Then a change that does not lock anyone out is confirmed from a real
new SSH session and stays.

The SSH probe and the peer are the scenario's (tests/e2e/operator.py,
tests/e2e/peer.py): the node's ens3 lives in a namespace made before the
first boot, so a reboot finds the same wiring.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Optional

from tests.e2e.node import Node, wait_until
from tests.e2e.operator import SSH_OPTIONS, ensure_operator, operator_login, peer_of
from tests.e2e.peer import PEER4
from tests.e2e.scenario import UNIT, Context, journal, node_now, status, unit_props
from tests.support.confirmpolicy import LOCK_SSH, confirm_policy

CONFIRM = 20  # seconds: the test policy's confirm_timeout
INTERVAL = 5
# Beyond timeout + interval: the daemon's own cycle, sshd's reload, our polling.
SLACK = 5.0
BOOT_SLACK = 30.0  # a reboot in the window: nspawn down and up again
POLICY = "/etc/k3s-agentd/policy.toml"
RECORD = "/var/lib/k3s-agentd/confirm.json"
DROPIN = "/etc/ssh/sshd_config.d/01-k3s-agentd.conf"

LOCKING_POLICY = confirm_policy(
    INTERVAL,
    CONFIRM,
    "accept",
    f"""allow_lockout = true
{LOCK_SSH}[controls.sshd]
[controls.sshd.items.X11Forwarding]
value = "no"
""",
    comment="e2e: locks SSH out on purpose, rolled back because nobody confirms",
)
SAFE_POLICY = confirm_policy(
    INTERVAL,
    CONFIRM,
    "drop",
    """[controls.firewall.items.ssh]
action = "accept"
proto = "tcp"
ports = ["@ssh"]
sources = ["@management"]
order = 10
""",
    comment="e2e: a change that locks nobody out, confirmed from a new SSH session",
)


# -- the probe's peer, and root's key for `confirm` --------------------------------------------


def ssh_from_peer(
    node: Node, user: str, command: Sequence[str], timeout: float = 10.0, address: Optional[str] = None
) -> tuple[bool, str]:
    peer = peer_of(node)
    connect = ["-o", f"ConnectTimeout={max(3, int(timeout // 3))}"]
    argv = ["ssh", *SSH_OPTIONS, *connect, "-i", peer.key_path, f"{user}@{address or peer.address}", *command]
    try:
        done = peer.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"ssh {user}@{address or peer.address}: no answer within {timeout:.0f}s"
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def ensure_root_key(node: Node) -> None:
    """The peer's key for root too: `k3s-agentctl confirm` runs as root, from a new SSH session."""
    key = peer_of(node).public_key + "\n"
    node.run(["install", "-d", "-m", "0700", "/root/.ssh"])
    node.copy_in(key.encode(), "/root/.ssh/authorized_keys", 0o600)


# -- reading the node -----------------------------------------------------------------------


def record(node: Node) -> dict[str, Any]:
    done = node.run(["cat", RECORD], check=False)
    return json.loads(done.stdout)["controls"] if done.returncode == 0 else {}


def states(node: Node) -> set[str]:
    return {entry["state"] for entry in record(node).values()}


def armed_at(node: Node) -> float:
    """Node wall-clock time the pending firewall change was armed (waits for it)."""
    entry = wait_until(
        lambda: record(node).get("firewall", {}).get("state") == "pending" and record(node)["firewall"],
        INTERVAL + 30,
        "the firewall change to await confirmation",
    )
    return float(entry["at"])


def locked_out(node: Node) -> str:
    ok, output = operator_login(node, timeout=peer_of(node).timeout)
    assert not ok, "the locking policy is in force, yet the operator logged in"
    return output


def back_in(ctx: Context, since: float, budget: float, what: str) -> float:
    """Wait until the operator logs in again; seconds after `since` (node wall clock)."""
    node = ctx.node
    wait_until(lambda: operator_login(node, timeout=5)[0], budget + 15, f"SSH back after {what}", every=0.5)
    took = node_now(node) - since
    ctx.log(f"{what}: SSH back {took:.1f}s after the change was armed (budget {budget:.0f}s)")
    assert took <= budget, f"{what}: SSH came back after {took:.1f}s, more than {budget:.0f}s"
    return took


def held(node: Node) -> None:
    """Rolled back and held: drift that says so, nothing healed over it, still reachable."""
    assert states(node) >= {"rolled_back"}, record(node)
    time.sleep(2 * INTERVAL)
    ok, output = operator_login(node)
    assert ok, f"the daemon healed the rolled-back change again: {output}"
    doc = status(node)
    firewall = next(c for c in doc["controls"] if c["name"] == "firewall")
    drift = [f for f in firewall["findings"] if f["status"] == "drift"]
    assert drift and all("ROLLED BACK, NOT CONFIRMED" in f["message"] for f in drift), drift
    assert (doc.get("confirmation") or {}).get("message", "").startswith("rolled back, not confirmed")


def reload_and_rearm(ctx: Context) -> float:
    """A reload lifts the hold: the daemon applies the change again, armed again."""
    node = ctx.node
    node.run(["systemctl", "reload", UNIT])
    since = armed_at(node)
    wait_until(lambda: not operator_login(node, timeout=5)[0], INTERVAL + 15, "the lock-out to be back")
    return since


# -- steps ----------------------------------------------------------------------------------


def step_setup(ctx: Context) -> None:
    """Peer wired, operator account, a login works; the locking policy written."""
    node = ctx.node
    ensure_operator(node)
    ensure_root_key(node)
    ok, output = operator_login(node)
    assert ok, f"no operator login before any policy: {output}"
    node.copy_in(LOCKING_POLICY.encode(), POLICY, 0o644)
    assert node.run(["k3s-agentctl", "validate"], check=False).returncode == 0


def step_unconfirmed_rolls_back(ctx: Context) -> None:
    """Enforced, locked out, nobody confirms: SSH back within timeout + interval, then held."""
    node = ctx.node
    node.run(["systemctl", "restart", UNIT], timeout=90)
    since = armed_at(node)
    text = wait_until(
        lambda: "awaiting confirmation (rollback at" in unit_props(node, "StatusText")["StatusText"]
        and unit_props(node, "StatusText")["StatusText"],
        INTERVAL + SLACK,
        "STATUS= saying awaiting confirmation",
    )
    ctx.log(f"StatusText: {text}")
    assert "awaiting confirmation (rollback at" in node.run(["k3s-agentctl", "status"], check=False).stdout
    assert node.run(["test", "-e", DROPIN], check=False).returncode == 0, "the sshd change was not made"
    ctx.log(f"locked out as intended: {locked_out(node)}")
    back_in(ctx, since, CONFIRM + INTERVAL + SLACK, "no confirmation")
    wait_until(lambda: states(node) == {"rolled_back"}, 5, "sshd rolled back with the firewall")
    logs = journal(node, "-u", UNIT)
    assert "firewall: rolled back the change k3s-agentd applied at" in logs, logs[-2000:]
    assert "sshd: rolled back" in logs and f"removed {DROPIN}" in logs, logs[-2000:]
    assert node.run(["test", "-e", DROPIN], check=False).returncode != 0, "the sshd drop-in came back"
    held(node)


def step_kill9_in_the_window(ctx: Context) -> None:
    """The same with the daemon killed -9 while the rollback is pending."""
    node = ctx.node
    since = reload_and_rearm(ctx)
    pid = unit_props(node, "MainPID")["MainPID"]
    node.run(["kill", "-9", pid])
    ctx.log(f"killed the daemon ({pid}) while the rollback was pending")
    back_in(ctx, since, CONFIRM + INTERVAL + SLACK, "kill -9 in the window")
    assert unit_props(node, "MainPID")["MainPID"] != pid
    held(node)


def step_reboot_in_the_window(ctx: Context) -> None:
    """The same with a reboot while the rollback is pending."""
    node = ctx.node
    since = reload_and_rearm(ctx)
    node.reboot()
    back_in(ctx, since, CONFIRM + INTERVAL + SLACK + BOOT_SLACK, "a reboot in the window")
    held(node)


def step_confirmed_from_a_new_session_stays(ctx: Context) -> None:
    """A change that locks nobody out, confirmed over a real new SSH login: kept past the deadline."""
    node = ctx.node
    node.copy_in(SAFE_POLICY.encode(), POLICY, 0o644)
    node.run(["systemctl", "reload", UNIT])
    since = armed_at(node)
    ok, output = ssh_from_peer(node, "root", ["k3s-agentctl", "confirm"])
    assert ok and "confirmed: firewall" in output, output
    table = node.run(["nft", "list", "table", "inet", "k3s_agentd"]).stdout
    time.sleep(max(since + CONFIRM + INTERVAL + 1 - node_now(node), 0))
    assert node.run(["nft", "list", "table", "inet", "k3s_agentd"]).stdout == table
    assert states(node) == {"established"}, record(node)
    assert operator_login(node)[0]
    logs = journal(node, "-u", UNIT) + journal(node, "-t", "k3s-agentd")
    assert f"firewall: confirmed from ssh session {PEER4}" in logs, logs[-2000:]


STEPS = [
    step_setup,
    step_unconfirmed_rolls_back,
    step_kill9_in_the_window,
    step_reboot_in_the_window,
    step_confirmed_from_a_new_session_stays,
]
