"""The lock-out guard on a node whose NIC is ens3, not eth0: refused at validate and at apply, and a
real SSH login as a non-root operator with a key after every allowed heal.

The server namespace's NIC is a veth named ens3 (support.netns.veth_pair); sshd is the
real one (support.sshnet.OperatorSshd) on SSH_PORT; the client logs in from the peer
namespace over IPv4 and IPv6. Both backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.host import Host
from k3s_agent.model import Status
from k3s_agent.policy.loader import PolicyError, load_policy
from tests.support.fwcontrol import SSH_PORT, heal, make_control
from tests.support.netns import (
    LEGACY_MISSING,
    SERVER_IP,
    SERVER_IP6,
    EchoServer,
    can_connect,
    run_in,
    sh,
    veth_pair,
)
from tests.support.sshnet import OPERATOR, SSHD, OperatorSshd

pytestmark = [pytest.mark.root, pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server missing")]
NIC = "ens3"
BACKENDS = [
    "nftables",
    pytest.param("iptables", marks=pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)),
]
SSH_ITEM = {"proto": "tcp", "ports": ["@ssh"], "sources": ["@management"], "order": 10}
BY_DEFAULT = "the default policy (default_input = drop)"

# The policies of issue 11: each cuts SSH on a node whose NIC is ens3.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "drop on the real NIC": (
        {"drop-ens3": {"action": "drop", "interface": NIC, "order": 5}},
        f"ssh port {SSH_PORT} from 0.0.0.0/0 on {NIC} would be dropped by item 'drop-ens3'",
    ),
    "drop on en*": (
        {"drop-en": {"action": "drop", "interface": "en*", "order": 5}},
        f"ssh port {SSH_PORT} from ::/0 on {NIC} would be dropped by item 'drop-en'",
    ),
    "ssh narrowed to eth0": (
        {"ssh": {**SSH_ITEM, "interface": "eth0"}},
        f"ssh port {SSH_PORT} from 0.0.0.0/0 on {NIC} would be dropped by {BY_DEFAULT}",
    ),
    "reject ssh from the v6 management network": (
        {
            "no-v6": {
                "action": "reject",
                "proto": "tcp",
                "ports": [SSH_PORT],
                "sources": ["fd99::/64"],
                "order": 5,
            }
        },
        f"ssh port {SSH_PORT} from ::/0 on {NIC} would be rejected by item 'no-v6'",
    ),
}
# Interface-scoped items that keep the way in: the heal goes through, SSH still works.
ALLOWED: dict[str, dict[str, Any]] = {
    "profile as shipped": {},
    "ssh narrowed to the real NIC, drop on others": {
        "ssh": {**SSH_ITEM, "interface": NIC},
        "drop-eth": {"action": "drop", "interface": "eth*", "order": 5},
    },
    "ssh on en*, drop on ens3 after it": {
        "ssh": {**SSH_ITEM, "interface": "en*"},
        "drop-ens3": {"action": "drop", "interface": NIC, "order": 20},
    },
}


def policy_file(root: Path, items: dict[str, dict[str, Any]]) -> Path:
    """A local policy extending the server profile with these items (TOML from JSON values)."""
    # sshd in audit: its own lock-out guard (tested elsewhere) would refuse a
    # temp root that has no accounts; these tests are about the firewall's.
    lines = ['version = 1\nextends = "k3s-cis-server"\n[controls.sshd]\nmode = "audit"\n']
    for name, fields in items.items():
        lines.append(f"[controls.firewall.items.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path = root / "etc/k3s-agentd/policy.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def sshd_config(root: Path) -> None:
    """sshd_config under the root, so the load-time lint finds SSH_PORT with `sshd -T`."""
    key = root / "etc/ssh/hostkey"
    key.parent.mkdir(parents=True, exist_ok=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    (root / "etc/ssh/sshd_config").write_text(f"Port {SSH_PORT}\nHostKey {key}\n")


def nothing_written(ns: str, backend: str) -> bool:
    if backend == "nftables":
        return sh("nft", "list", "table", "inet", "k3s_agentd", ns=ns, check=False).returncode != 0
    saved = sh("iptables-legacy-save", ns=ns).stdout + sh("ip6tables-legacy-save", ns=ns).stdout
    return "K3S-AGENTD" not in saved


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_validate_refuses_on_the_real_nic(root: Path, case: str) -> None:
    items, expected = REFUSED[case]
    sshd_config(root)
    path = policy_file(root, items)
    with veth_pair(server_if=NIC) as (server, _):

        def load() -> str:
            try:
                load_policy(Host(root=str(root)), path=str(path))
            except PolicyError as exc:
                return str(exc)
            return ""

        message = run_in(server, load)
    assert f"{path}: controls.firewall: lock-out guard refused the ruleset" in message
    assert expected in message


def test_validate_lets_the_allowed_policies_through(root: Path) -> None:
    sshd_config(root)
    with veth_pair(server_if=NIC) as (server, _):
        for items in ALLOWED.values():
            path = policy_file(root, items)
            loaded = run_in(server, load_policy, Host(root=str(root)), str(path))
            assert set(items) <= set(loaded.controls["firewall"].items)


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_refuses_and_writes_nothing_then_allowed_heals_keep_ssh(root: Path, backend: str) -> None:
    with veth_pair(server_if=NIC) as (server, client), OperatorSshd(server, SSH_PORT) as sshd:
        echo = run_in(server, EchoServer, 9090)
        try:
            assert sshd.login(client, SERVER_IP) == OPERATOR, sshd.last_error
            for case in sorted(REFUSED):
                items, expected = REFUSED[case]
                results, _ = run_in(server, heal, make_control(root, backend, items=items))
                assert results and all(r.status is Status.FAILED for r in results), (case, results)
                assert expected in results[0].message, (case, results[0].message)
                assert nothing_written(server, backend), case
                assert sshd.login(client, SERVER_IP) == OPERATOR, (case, sshd.last_error)
            for case in sorted(ALLOWED):
                control = make_control(root, backend, items=ALLOWED[case])
                results, after = run_in(server, heal, control)
                assert all(r.status is Status.HEALED for r in results), (case, results)
                assert run_in(server, control.describe)["lockout_guard_interfaces"] == [NIC]
                assert not [f for f in after if f.status is not Status.OK], (case, after)
                # A real login over a new session, v4 and v6, as the operator with a key ...
                assert sshd.login(client, SERVER_IP) == OPERATOR, (case, sshd.last_error)
                assert sshd.login(client, SERVER_IP6) == OPERATOR, (case, sshd.last_error)
                # ... while the firewall is really there: a port no item opens is closed.
                assert not run_in(client, can_connect, SERVER_IP, 9090, 0.5), case
        finally:
            echo.close()
