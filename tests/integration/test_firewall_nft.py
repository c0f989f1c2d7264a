"""nftables-only behaviour against the real kernel, in fresh network namespaces: the
generation counter and what it attributes, listing only our table, the nft binary
fallback, the netlink watch. The scenarios both backends share are in
test_firewall_backends.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import pytest

from k3s_agent.model import Status
from tests.support.fwbackend import SIDES, handle_of
from tests.support.fwcontrol import assert_clean, drift, heal, make_control
from tests.support.netns import fresh_netns, run_in, sh

pytestmark = pytest.mark.root
NFT = SIDES["nft"]


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
        NFT.plant_foreign(ns)
        before = NFT.foreign_state(ns)
        control = make_control(root, "nftables")  # fresh: its first check probes nftables
        assert drift(run_in(ns, control.check))["table"].message.startswith("table missing")
        results, after = run_in(ns, heal, control)
        assert results and all(r.status is Status.HEALED for r in results)
        assert "changed meanwhile" not in results[0].message
        assert_clean(after)
        assert NFT.foreign_state(ns) == before
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
        "from pathlib import Path; from tests.support.fwcontrol import make_control\n"
        "found = make_control(Path(sys.argv[1]), 'auto').check()\n"
        "assert any(f.key == 'table' for f in found), found\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
    )
    with fresh_netns() as ns:
        sh("iptables-nft-restore", "-w", "--noflush", str(rules), ns=ns)
        assert sh("iptables-nft", "-w", "-L", "KUBE-SERVICES", "-n", ns=ns).stdout.count("ACCEPT") == 10000
        repo = str(Path(__file__).resolve().parents[2])
        peak_kb = int(sh(sys.executable, "-c", probe, str(root), repo, ns=ns).stdout)
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
