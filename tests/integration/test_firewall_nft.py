"""nftables backend against the real kernel, in fresh network namespaces."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import pytest
from fwcontrol import SSH_PORT, drift, heal, make_control
from fwnet import (
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

from k3s_agent.model import Status

pytestmark = pytest.mark.root


def table_rules(ns: str) -> list[dict]:
    out = sh("nft", "-j", "list", "table", "inet", "k3s_agentd", ns=ns).stdout
    return [o["rule"] for o in json.loads(out)["nftables"] if "rule" in o]


def handle_of(ns: str, comment: str) -> int:
    return next(r["handle"] for r in table_rules(ns) if r.get("comment") == comment)


def handles_of(ns: str, comment: str) -> list[int]:
    return [r["handle"] for r in table_rules(ns) if r.get("comment") == comment]


def assert_clean(findings: list) -> None:
    bad = drift(findings)
    assert not bad, {k: (f.status.value, f.message, f.observed) for k, f in bad.items()}


def test_apply_from_scratch_then_in_sync(root: Path) -> None:
    with fresh_netns() as ns:
        control = make_control(root, "nftables")
        before = run_in(ns, control.check)
        assert drift(before)["table"].status is Status.DRIFT
        assert drift(before)["ssh"].message == "rule missing"
        results, after = run_in(ns, heal, control)
        assert results and all(r.status is Status.HEALED for r in results), results
        assert_clean(after)
        ruleset = sh("nft", "list", "ruleset", ns=ns).stdout
        assert "table inet k3s_agentd" in ruleset
        assert "hook input priority filter; policy drop;" in ruleset
        assert f"tcp dport {SSH_PORT} accept" in ruleset
        assert 'comment "etcd"' in ruleset  # embedded etcd: 2379-2380 open between servers
        assert control.describe()["backend"] == "nftables"


DRIFTS = {
    # kind of drift: (nft command(s) that cause it, findings that must report it)
    "table deleted": (lambda ns: [["nft", "delete", "table", "inet", "k3s_agentd"]], {"table", "ssh"}),
    "rule deleted": (
        lambda ns: [
            ["nft", "delete", "rule", "inet", "k3s_agentd", "input", "handle", str(handle_of(ns, "kubelet"))]
        ],
        {"kubelet"},
    ),
    "rule changed": (
        lambda ns: [
            [
                "nft",
                "replace",
                "rule",
                "inet",
                "k3s_agentd",
                "input",
                "handle",
                str(handle_of(ns, "ssh")),
                "tcp",
                "dport",
                "2223",
                "accept",
                "comment",
                '"ssh"',
            ],
        ],
        {"ssh"},
    ),
    "rules reordered": (
        lambda ns: [
            *[
                ["nft", "delete", "rule", "inet", "k3s_agentd", "input", "handle", str(handle)]
                for handle in handles_of(ns, "icmp")
            ],
            [
                "nft",
                "add",
                "rule",
                "inet",
                "k3s_agentd",
                "input",
                "meta",
                "l4proto",
                "icmp",
                "accept",
                "comment",
                '"icmp"',
            ],
            [
                "nft",
                "add",
                "rule",
                "inet",
                "k3s_agentd",
                "input",
                "meta",
                "l4proto",
                "ipv6-icmp",
                "accept",
                "comment",
                '"icmp"',
            ],
        ],
        {"icmp"},
    ),
    "foreign rule in our chain": (
        lambda ns: [["nft", "insert", "rule", "inet", "k3s_agentd", "input", "tcp", "dport", "23", "accept"]],
        {"foreign-rules"},
    ),
    "chain policy changed": (
        lambda ns: [["nft", "add", "chain", "inet", "k3s_agentd", "input", "{ policy accept ; }"]],
        {"policy"},
    ),
}


@pytest.mark.parametrize("kind", sorted(DRIFTS))
def test_each_drift_is_detected_and_healed(root: Path, kind: str) -> None:
    commands, expected = DRIFTS[kind]
    with fresh_netns() as ns:
        control = make_control(root, "nftables")
        run_in(ns, heal, control)
        for argv in commands(ns):
            sh(*argv, ns=ns)
        seen = drift(run_in(ns, control.check))
        assert expected <= set(seen), (kind, {k: f.message for k, f in seen.items()})
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results), [(r.key, r.message) for r in results]
        assert_clean(after)


FOREIGN = """
table inet kube-proxy {
  chain filter-input {
    type filter hook input priority -110; policy accept;
    ct state new jump firewall-check
  }
  chain firewall-check {
    ip daddr 10.43.0.99 tcp dport 80 reject
  }
}
"""
# What kube-proxy (iptables mode), flannel and a foreign admin leave in the
# iptables-nft tables: they live in `table ip filter` / `table ip nat`.
IPTABLES_NFT = [
    ["iptables-nft", "-w", "-N", "KUBE-FIREWALL"],
    [
        "iptables-nft",
        "-w",
        "-A",
        "KUBE-FIREWALL",
        "-d",
        "127.0.0.0/8",
        "!",
        "-s",
        "127.0.0.0/8",
        "-j",
        "DROP",
    ],
    ["iptables-nft", "-w", "-I", "INPUT", "-j", "KUBE-FIREWALL"],
    ["iptables-nft", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"],
    ["iptables-nft", "-w", "-t", "nat", "-N", "FLANNEL-POSTRTG"],
    ["iptables-nft", "-w", "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.42.0.0/16", "-j", "RETURN"],
    ["iptables-nft", "-w", "-N", "KUBE-ROUTER-INPUT"],
    ["iptables-nft", "-w", "-A", "KUBE-ROUTER-INPUT", "-s", "10.42.0.0/16", "-j", "RETURN"],
]


def foreign_text(ns: str) -> str:
    """Everything but our table, counters zeroed by listing without stateful info."""
    out = sh("nft", "-s", "list", "ruleset", ns=ns).stdout
    keep, skipping, depth = [], False, 0
    for line in out.splitlines():
        if line.startswith("table inet k3s_agentd"):
            skipping = True
        if not skipping:
            keep.append(line)
        depth += line.count("{") - line.count("}")
        if skipping and depth == 0:
            skipping = False
    return "\n".join(keep)


def test_foreign_tables_survive_every_apply(root: Path) -> None:
    with fresh_netns() as ns:
        sh("sh", "-c", f"nft -f - <<'EOF'\n{FOREIGN}\nEOF", ns=ns)
        for argv in IPTABLES_NFT:
            sh(*argv, ns=ns)
        before = foreign_text(ns)
        assert "KUBE-FIREWALL" in before and "FLANNEL-POSTRTG" in before and "firewall-check" in before
        control = make_control(root, "nftables")
        for _ in range(5):
            sh("nft", "delete", "table", "inet", "k3s_agentd", ns=ns, check=False)
            results, after = run_in(ns, heal, control)
            assert all(r.status is Status.HEALED for r in results)
            assert_clean(after)
            assert foreign_text(ns) == before


def heal_with_meddling(root: Path, meddle: Callable[[str, Callable[[list], None], list], None]) -> tuple:
    """One heal in a fresh netns whose commit goes through meddle(ns, run, commands)."""
    with fresh_netns() as ns:
        control = make_control(root, "nftables")
        backend = run_in(ns, control._backend)
        original = backend.runner.run
        backend.runner.run = lambda commands: meddle(ns, original, commands)
        return run_in(ns, heal, control)


def another_tool_commits_after_us(ns: str, run: Callable[[list], None], commands: list) -> None:
    run(commands)
    sh("nft", "add", "table", "ip", "kube-proxy-ish", ns=ns)


@pytest.fixture
def no_full_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full `list ruleset` costs ~0.3 s and ~90 MB with 10,000 foreign rules:
    checks and heals (change notifications, not snapshots) must not need one."""
    from k3s_agent.controls.firewall.nft import NftRunner

    original = NftRunner.list

    def only_ours(self: NftRunner, *what: str) -> list:
        assert what == ("table", "inet", "k3s_agentd"), f"listed {what}"
        return original(self, *what)

    def refuse(*_args: object) -> None:
        raise AssertionError("listed the whole ruleset")

    monkeypatch.setattr(NftRunner, "list", only_ours)
    monkeypatch.setattr(NftRunner, "ruleset_text", refuse)


def test_check_and_heal_never_list_the_whole_ruleset(root: Path, no_full_listing: None) -> None:
    with fresh_netns() as ns:
        sh("sh", "-c", f"nft -f - <<'EOF'\n{FOREIGN}\nEOF", ns=ns)
        for argv in IPTABLES_NFT:
            sh(*argv, ns=ns)
        before = foreign_text(ns)
        control = make_control(root, "nftables")  # fresh: its first check probes nftables
        assert drift(run_in(ns, control.check))["table"].message.startswith("table missing")
        results, after = run_in(ns, heal, control)
        assert results and all(r.status is Status.HEALED for r in results)
        assert "changed meanwhile" not in results[0].message
        assert_clean(after)
        assert foreign_text(ns) == before
        snapshot = run_in(ns, control.snapshot)
        assert "k3s_agentd" in snapshot["nftables"]


def test_fresh_check_stays_small_with_10000_foreign_rules(root: Path, tmp_path: Path) -> None:
    """`k3s-agentctl check` and the daemon's first check build a fresh control:
    with a kube-proxy node's 10,000 iptables-nft rules its peak RSS stays what it
    is on an empty ruleset (a full JSON listing peaked at ~250 MB)."""
    rules = tmp_path / "rules"
    lines = ["*filter", ":KUBE-SERVICES - [0:0]"]
    lines += [f"-A KUBE-SERVICES -d 10.43.{i // 250}.{i % 250 + 1}/32 -j ACCEPT" for i in range(10000)]
    rules.write_text("\n".join([*lines, "COMMIT", ""]))
    probe = (
        "import sys; sys.path.insert(1, sys.argv[2])\n"
        "from pathlib import Path; from fwcontrol import make_control\n"
        "found = make_control(Path(sys.argv[1]), 'auto').check()\n"
        "assert any(f.key == 'table' for f in found), found\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    )
    with fresh_netns() as ns:
        sh("iptables-nft-restore", "-w", "--noflush", str(rules), ns=ns)
        assert sh("iptables-nft", "-w", "-L", "KUBE-SERVICES", "-n", ns=ns).stdout.count("ACCEPT") == 10000
        tests = str(Path(__file__).resolve().parent.parent)
        peak_kb = int(sh(sys.executable, "-c", probe, str(root), tests, ns=ns).stdout)
    assert peak_kb < 60 * 1024, f"peak RSS {peak_kb // 1024} MB"


def test_rule_added_by_another_tool_during_heal_is_named(root: Path, no_full_listing: None) -> None:
    def kube_proxy_sync(ns: str, run: Callable[[list], None], commands: list) -> None:
        run(commands)
        sh("iptables-nft", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "10250", "-j", "ACCEPT", ns=ns)

    results, after = heal_with_meddling(root, kube_proxy_sync)
    assert results and all(r.status is Status.HEALED for r in results), [r.message for r in results]
    assert "not ours" in results[0].message and "table ip filter" in results[0].message
    assert_clean(after)


@pytest.mark.usefixtures("no_full_listing")
def test_foreign_change_in_our_own_transaction_is_failed_loudly(root: Path) -> None:
    """A foreign table changed by the very transaction we committed (the
    generation moved by one: nobody else committed) is a bug of ours: FAILED."""

    def stowaway(ns: str, run: Callable[[list], None], commands: list) -> None:
        run([*commands, {"add": {"table": {"family": "ip", "name": "meddler"}}}])

    results, _ = heal_with_meddling(root, stowaway)
    assert results and all(r.status is Status.FAILED for r in results)
    assert "FOREIGN FIREWALL STATE CHANGED" in results[0].message
    assert "table ip meddler appeared" in results[0].message


@pytest.mark.usefixtures("no_full_listing")
def test_foreign_change_by_another_tool_during_heal_is_not_pinned_on_us(root: Path) -> None:
    """nftables has no lock: kube-proxy may commit between our two snapshots. Its
    own transaction moves the generation once more, so the heal stands, with the
    change named, not a false alarm."""
    results, after = heal_with_meddling(root, another_tool_commits_after_us)
    assert results and all(r.status is Status.HEALED for r in results), [r.message for r in results]
    assert "not ours" in results[0].message and "table ip kube-proxy-ish appeared" in results[0].message
    assert_clean(after)


def test_unknown_generation_counts_every_foreign_change_as_ours(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No generation (netlink refused): nothing tells another tool's commit from
    ours, so the change is reported loudly, as before the attribution existed."""
    import k3s_agent.controls.firewall.nft as nft_backend

    monkeypatch.setattr(nft_backend, "generation", lambda: None)
    results, _ = heal_with_meddling(root, another_tool_commits_after_us)
    assert results and all(r.status is Status.FAILED for r in results)
    assert "FOREIGN FIREWALL STATE CHANGED" in results[0].message


def test_generation_counts_committed_transactions() -> None:
    """The counter the attribution above rests on: +1 per transaction, whatever
    the tool and however many commands it carries; unchanged by listing."""
    probe = (
        "import subprocess\n"
        "from k3s_agent.controls.firewall.nftgen import generation\n"
        "g = [generation()]\n"
        "subprocess.run(['nft', 'list', 'ruleset'], check=True, capture_output=True)\n"
        "g.append(generation())\n"
        "batch = 'add table ip a\\nadd table ip b\\n'\n"
        "subprocess.run(['nft', '-f', '-'], input=batch, text=True, check=True)\n"
        "g.append(generation())\n"
        "subprocess.run(['iptables-nft', '-w', '-N', 'X'], check=True)\n"
        "g.append(generation())\n"
        "print(g)\n"
    )
    with fresh_netns() as ns:
        out = sh(sys.executable, "-c", probe, ns=ns).stdout
    first, listed, batch, iptables = json.loads(out)
    assert isinstance(first, int)
    assert (listed, batch, iptables) == (first, first + 1, first + 2)


def test_traffic_allowed_blocked_and_established_survives(root: Path) -> None:
    extra = {"web": {"proto": "tcp", "ports": [8080], "sources": [f"{CLIENT_IP}/32", f"{CLIENT_IP6}/128"]}}
    with veth_pair() as (server, client):
        servers = run_in(server, lambda: [EchoServer(p) for p in (SSH_PORT, 8080, 9090)])
        try:
            # An "SSH session" opened before the firewall exists ...
            session = run_in(client, connect, SERVER_IP, SSH_PORT)
            assert run_in(client, can_connect, SERVER_IP, 9090)  # open before
            control = make_control(root, "nftables", items=extra)
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
            # ... still works after the apply and after a re-apply (table replaced).
            session.sendall(b"still here")
            assert session.recv(64) == b"still here"
            sh("nft", "delete", "table", "inet", "k3s_agentd", ns=server)
            run_in(server, heal, control)
            session.sendall(b"again")
            assert session.recv(64) == b"again"
            assert not run_in(client, can_connect, SERVER_IP, 9090, 0.5)
            session.close()
        finally:
            for echo in servers:
                echo.close()


def test_lockout_guard_refuses_ruleset_without_ssh(root: Path) -> None:
    with fresh_netns() as ns:
        control = make_control(root, "nftables")
        items = {k: v for k, v in control.policy.items.items() if k != "ssh"}
        control = make_control(root, "nftables")
        control.policy = dataclasses.replace(control.policy, items=items)
        findings = run_in(ns, control.check)
        guard = next(f for f in findings if f.key == "lockout-guard")
        # (a fresh netns has no NIC but lo: the conservative probe's "(unknown)")
        assert f"ssh port {SSH_PORT} from 0.0.0.0/0 on (unknown) would be dropped" in guard.message
        results = run_in(ns, control.apply, [f for f in findings if f.status is Status.DRIFT])
        assert results and all(r.status is Status.FAILED for r in results)
        assert "lock-out guard refused" in results[0].message
        # nothing was committed
        assert sh("nft", "list", "table", "inet", "k3s_agentd", ns=ns, check=False).returncode != 0
        # A drop item ordered before ssh is refused just the same.
        control = make_control(
            root,
            "nftables",
            items={"deny-mgmt": {"action": "drop", "sources": ["192.0.2.0/28"], "order": 1}},
            management_sources=["192.0.2.0/24"],
        )
        results, _ = run_in(ns, heal, control)
        assert all(r.status is Status.FAILED for r in results)
        expected = "ssh port 2222 from 192.0.2.0/24 on (unknown) would be dropped by item 'deny-mgmt'"
        assert expected in results[0].message
        # ... unless the policy says so in so many words.
        control = make_control(root, "nftables", allow_lockout=True)
        control.policy = dataclasses.replace(control.policy, items=items)
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results)
        assert_clean(after)


@pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)
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


def test_nft_binary_fallback_without_python_module(root: Path) -> None:
    from k3s_agent.controls.firewall.detect import Choice
    from k3s_agent.controls.firewall.nft import NftBackend, NftRunner

    with fresh_netns() as ns:
        control = make_control(root, "nftables")
        control.backend = NftBackend(control.host, NftRunner(control.host, use_module=False))
        control.choice = Choice("nftables", "set in the policy")
        assert control.describe()["nftables_via"] == "nft -j"
        results, after = run_in(ns, heal, control)
        assert results and all(r.status is Status.HEALED for r in results)
        assert_clean(after)
        sh("nft", "delete", "rule", "inet", "k3s_agentd", "input", "handle", str(handle_of(ns, "ssh")), ns=ns)
        assert drift(run_in(ns, control.check))["ssh"].message == "rule missing"
        results, after = run_in(ns, heal, control)
        assert all(r.status is Status.HEALED for r in results)
        assert_clean(after)


def test_watch_wakes_on_our_table_only(root: Path) -> None:
    import threading

    from k3s_agent.watch import NetlinkWatcher

    with fresh_netns() as ns:
        control = make_control(root, "nftables", node_cidrs=["10.99.0.0/24"])
        targets = [w.target for w in control.watches() if w.kind == "netlink"]
        assert targets == ["nftables:k3s_agentd"]
        woke = threading.Event()
        watcher = run_in(ns, lambda: NetlinkWatcher(targets, lambda kind: woke.set()))
        watcher.start()
        try:
            sh("nft", "add", "table", "ip", "kube-proxy-sim", ns=ns)
            assert not woke.wait(0.5)  # someone else's table: not our business
            sh("nft", "add", "table", "inet", "k3s_agentd", ns=ns)
            assert woke.wait(2)
        finally:
            watcher.close()
