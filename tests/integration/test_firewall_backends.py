"""The firewall scenarios both backends must pass, against the real kernel, in fresh netns.

Each test runs once per backend ("nft": nftables; "iptables": python-iptables on
the legacy tables); what differs is in tests/support/fwbackend.py. What only one
backend has is in test_firewall_nft.py and test_firewall_iptables.py. If this
kernel has no legacy iptables (x_tables / ip_tables, iptable_filter: recent
kernels hide them behind CONFIG_IP_NF_IPTABLES_LEGACY), the iptables runs are
skipped with that reason -- never passed silently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from k3s_agent.model import Status
from tests.support.fwbackend import SIDES, Side
from tests.support.fwcontrol import SSH_PORT, assert_clean, drift, heal, make_control
from tests.support.netns import (
    CLIENT_IP,
    CLIENT_IP6,
    LEGACY_MISSING,
    SERVER_IP,
    SERVER_IP6,
    EchoServer,
    can_connect,
    connect,
    fresh_netns,
    run_in,
    sh,
    veth_pair,
)

pytestmark = pytest.mark.root
NEEDS_LEGACY = pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)


def _param(key: str, *values: object) -> object:
    """One parametrize row for backend `key`; the iptables rows need legacy iptables."""
    return pytest.param(
        *values,
        id="-".join([key, *[str(v) for v in values[1:]]]),
        marks=[NEEDS_LEGACY] if key == "iptables" else [],
    )


@pytest.fixture(params=[_param(key, key) for key in SIDES])
def side(request: pytest.FixtureRequest) -> Side:
    return SIDES[request.param]


def test_apply_from_scratch_then_in_sync(root: Path, side: Side) -> None:
    with fresh_netns() as ns:
        control = make_control(root, side.name)
        before = drift(run_in(ns, control.check))
        assert side.fresh_drift <= set(before), before
        assert all(before[key].status is Status.DRIFT for key in side.fresh_drift)
        assert before["ssh"].message == "rule missing"
        results, after = run_in(ns, heal, control)
        assert results and all(r.status is Status.HEALED for r in results), results
        assert_clean(after)
        side.assert_in_place(ns)
        assert control.describe()["backend"] == side.name


@pytest.mark.parametrize(
    "side,kind", [_param(key, side, kind) for key, side in SIDES.items() for kind in sorted(side.drifts)]
)
def test_each_drift_is_detected_and_healed(root: Path, side: Side, kind: str) -> None:
    commands, expected = side.drifts[kind]
    with fresh_netns() as ns:
        control = make_control(root, side.name)
        run_in(ns, heal, control)
        for argv in commands(ns):
            sh(*argv, ns=ns)
        seen = drift(run_in(ns, control.check))
        assert expected <= set(seen), (kind, {k: f.message for k, f in seen.items()})
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results), [(r.key, r.message) for r in results]
        assert_clean(after)


def test_foreign_rules_survive_every_apply(root: Path, side: Side) -> None:
    with fresh_netns() as ns:
        side.plant_foreign(ns)
        before = side.foreign_state(ns)
        assert all(name in before for name in side.foreign_markers), before
        control = make_control(root, side.name)
        for round_ in range(5):
            if round_:
                side.break_ours(ns)  # some drift each round, so every round commits
            results, after = run_in(ns, heal, control)
            assert results and all(r.status is Status.HEALED for r in results), results
            assert_clean(after)
            assert side.foreign_state(ns) == before


def test_traffic_allowed_blocked_and_established_survives(root: Path, side: Side) -> None:
    extra = {"web": {"proto": "tcp", "ports": [8080], "sources": [f"{CLIENT_IP}/32", f"{CLIENT_IP6}/128"]}}
    with veth_pair() as (server, client):
        servers = run_in(server, lambda: [EchoServer(p) for p in (SSH_PORT, 8080, 9090)])
        try:
            # An "SSH session" opened before the firewall exists ...
            session = run_in(client, connect, SERVER_IP, SSH_PORT)
            assert run_in(client, can_connect, SERVER_IP, 9090)  # open before
            control = make_control(root, side.name, items=extra)
            results, after = run_in(server, heal, control)
            assert all(r.status is Status.HEALED for r in results)
            assert_clean(after)
            assert run_in(client, can_connect, SERVER_IP, 8080)
            assert run_in(client, can_connect, SERVER_IP, SSH_PORT)
            assert not run_in(client, can_connect, SERVER_IP, 9090, 0.5)
            # IPv6 the same (ICMPv6 neighbour discovery must still pass for this to work)
            assert run_in(client, can_connect, SERVER_IP6, 8080)
            assert run_in(client, can_connect, SERVER_IP6, SSH_PORT)
            assert not run_in(client, can_connect, SERVER_IP6, 9090, 0.5)
            # ... still works after the apply and after a re-apply (ruleset rewritten).
            session.sendall(b"still here")
            assert session.recv(64) == b"still here"
            side.break_ours(server)
            run_in(server, heal, control)
            session.sendall(b"again")
            assert session.recv(64) == b"again"
            assert not run_in(client, can_connect, SERVER_IP, 9090, 0.5)
            session.close()
        finally:
            for echo in servers:
                echo.close()


def test_lockout_guard_refuses_ruleset_without_ssh(root: Path, side: Side) -> None:
    with fresh_netns() as ns:
        control = make_control(root, side.name)
        items = {k: v for k, v in control.policy.items.items() if k != "ssh"}
        control = make_control(root, side.name)
        control.policy = dataclasses.replace(control.policy, items=items)
        findings = run_in(ns, control.check)
        guard = next(f for f in findings if f.key == "lockout-guard")
        # (a fresh netns has no NIC but lo: the conservative probe's "(unknown)")
        assert f"ssh port {SSH_PORT} from 0.0.0.0/0 on (unknown) would be dropped" in guard.message
        results = run_in(ns, control.apply, [f for f in findings if f.status is Status.DRIFT])
        assert results and all(r.status is Status.FAILED for r in results)
        assert "lock-out guard refused" in results[0].message
        assert not side.ours_present(ns)  # nothing was committed
        # A drop item ordered before ssh is refused just the same.
        control = make_control(
            root,
            side.name,
            items={"deny-mgmt": {"action": "drop", "sources": ["192.0.2.0/28"], "order": 1}},
            management_sources=["192.0.2.0/24"],
        )
        results, _ = run_in(ns, heal, control)
        assert all(r.status is Status.FAILED for r in results)
        expected = "ssh port 2222 from 192.0.2.0/24 on (unknown) would be dropped by item 'deny-mgmt'"
        assert expected in results[0].message
        # ... unless the policy says so in so many words.
        control = make_control(root, side.name, allow_lockout=True)
        control.policy = dataclasses.replace(control.policy, items=items)
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results)
        assert_clean(after)


@NEEDS_LEGACY
@pytest.mark.parametrize("first,then", [("iptables", "nftables"), ("nftables", "iptables")])
def test_switching_backend_removes_our_old_ruleset(root: Path, first: str, then: str) -> None:
    with fresh_netns() as ns:
        sh("iptables-legacy", "-w", "-N", "KUBE-FIREWALL", ns=ns)  # foreign: must stay
        run_in(ns, heal, make_control(root, first))
        control = make_control(root, then)
        leftovers = drift(run_in(ns, control.check))["leftovers"]
        assert leftovers.observed == first and "still filters" in leftovers.message
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results)
        assert_clean(after)
        legacy = sh("iptables-legacy-save", "-t", "filter", ns=ns).stdout
        nft_tables = sh("nft", "list", "tables", ns=ns).stdout
        assert ":KUBE-FIREWALL" in legacy
        if then == "nftables":
            assert "K3S-AGENTD" not in legacy + sh("ip6tables-legacy-save", ns=ns).stdout
        else:
            assert "k3s_agentd" not in nft_tables
