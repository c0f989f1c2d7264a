"""Host facts the firewall reads for real: sshd's ports, and backend auto-detection."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from k3s_agent.controls.firewall import detect, hostnet
from k3s_agent.host import Host
from k3s_agent.sshd import facts as sshd_facts
from k3s_agent.sshd.facts import privsep_dir
from tests.support.netns import LEGACY_MISSING, fresh_netns, in_netns, run_in, sh

pytestmark = pytest.mark.root
SSHD = "/usr/sbin/sshd"


def sshd_config(root: Path, ports: list[int]) -> Path:
    key = root / "hostkey"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = root / "etc/ssh/sshd_config"
    config.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Port {p}" for p in ports] + [f"HostKey {key}", f"PidFile {root}/sshd.pid"]
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is not installed")
def test_ssh_ports_from_sshd_T_and_from_listening_sockets(root: Path) -> None:
    config = sshd_config(root, [2200, 2201])
    host = Host(root=str(root))
    assert sshd_facts.sshd_config_ports(host) == [2200, 2201]

    def listening() -> list[int]:
        # -p adds a port sshd -T of the file cannot know about: only the socket shows it.
        with privsep_dir():
            return _listen_and_look()

    def _listen_and_look() -> list[int]:
        proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-p", "2300"])
        try:
            for _ in range(100):
                found = sshd_facts.sshd_listening_ports()
                if 2300 in found:
                    return found
                time.sleep(0.05)
            return sshd_facts.sshd_listening_ports()
        finally:
            proc.terminate()
            proc.wait()

    assert in_netns(listening) == [2300]
    ports, how = hostnet.ssh_ports(host, [22])
    assert set(ports) >= {22, 2200, 2201} and "sshd -T [2200, 2201]" in how


def test_local_subnets_skip_cni_interfaces() -> None:
    def subnets() -> list[str]:
        # (veth pairs: this kernel may lack the dummy driver)
        sh("ip", "link", "add", "eth9", "type", "veth", "peer", "name", "cni0")
        sh("ip", "addr", "add", "192.168.77.5/24", "dev", "eth9")
        sh("ip", "addr", "add", "10.42.0.1/24", "dev", "cni0")
        return [str(n) for n in hostnet.local_subnets()]

    assert in_netns(subnets) == ["192.168.77.0/24"]


@pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)
def test_auto_backend_follows_the_rules_k3s_would_see(root: Path) -> None:
    host = Host(root=str(root))
    with fresh_netns() as ns:
        empty = run_in(ns, detect.choose, host, "auto")
        # No rules anywhere: the system iptables variant decides (Debian 12: nf_tables).
        version = sh("iptables", "--version").stdout
        assert empty.backend == ("iptables" if "legacy" in version else "nftables"), empty
        for i in range(3):
            sh("iptables-nft", "-w", "-A", "INPUT", "-s", f"10.0.0.{i + 1}", "-j", "ACCEPT", ns=ns)
        nft = run_in(ns, detect.choose, host, "auto")
        assert nft.backend == "nftables" and "3 iptables-nft rules" in nft.reason
        for i in range(10):
            sh("iptables-legacy", "-w", "-A", "INPUT", "-s", f"10.1.0.{i + 1}", "-j", "ACCEPT", ns=ns)
        legacy = run_in(ns, detect.choose, host, "auto")
        assert legacy.backend == "iptables" and "10 rules in the legacy" in legacy.reason
    assert detect.choose(host, "nftables").reason == "set in the policy"


def test_alternatives_link_is_evidence(root: Path) -> None:
    (root / "etc/alternatives").mkdir(parents=True)
    os.symlink("/usr/sbin/iptables-legacy", root / "etc/alternatives/iptables")
    with fresh_netns() as ns:
        choice = run_in(ns, detect.choose, Host(root=str(root)), "auto")
    assert choice.backend == "iptables" and "legacy variant" in choice.reason


def test_iptables_nft_rules_counted_over_netlink_as_the_save_counts_them() -> None:
    """detect counts iptables-nft rules without iptables-nft-save: the same rules
    (ip and ip6, every xtables table, no other nft table), and it stops at limit."""
    from k3s_agent.controls.firewall.nftgen import xtables_rules

    with fresh_netns() as ns:
        assert run_in(ns, xtables_rules, 10) == 0
        sh("iptables-nft", "-w", "-A", "INPUT", "-j", "ACCEPT", ns=ns)
        sh("iptables-nft", "-w", "-t", "nat", "-A", "POSTROUTING", "-j", "RETURN", ns=ns)
        sh("ip6tables-nft", "-w", "-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT", ns=ns)
        sh("nft", "add table ip other; add chain ip other c; add rule ip other c accept", ns=ns)
        saved = sum(
            line.startswith("-A")
            for tool in ("iptables-nft-save", "ip6tables-nft-save")
            for line in sh(tool, ns=ns).stdout.splitlines()
        )
        assert saved == 3 and run_in(ns, xtables_rules, 10) == 3
        for i in range(30):
            sh("iptables-nft", "-w", "-A", "INPUT", "-s", f"10.2.0.{i + 1}", "-j", "ACCEPT", ns=ns)
        assert run_in(ns, xtables_rules, 10) == 10
        assert run_in(ns, xtables_rules, 1000) == 33
