"""The kernel side of each firewall backend, as the firewall tests see it.

A `Side` knows, for one backend, how to read our rules back, how to break them
(`drifts`: the kinds of drift a heal must repair), what other tools (kube-proxy,
flannel, a network-policy controller, an admin) leave beside them, and how to
compare that foreign state before and after our commits. `SIDES` holds the two
under the ids the parametrized tests use ("nft", "iptables"); the legacy
iptables side needs a kernel with legacy iptables (netns.LEGACY_MISSING).
"""

from __future__ import annotations

import json
import re
from typing import Callable

from tests.support.fwcontrol import SSH_PORT
from tests.support.netns import sh

# kind of drift -> (command lines that cause it in namespace ns, finding keys that must report it)
Drifts = dict[str, tuple[Callable[[str], list[list[str]]], set[str]]]


class Side:
    """One backend's kernel side; `name` is the policy's `backend` option."""

    name = ""
    # Finding keys a first check on an empty namespace reports as drift.
    fresh_drift: frozenset[str] = frozenset()
    # Names that must show in foreign_state() once plant_foreign() ran.
    foreign_markers: tuple[str, ...] = ()
    drifts: Drifts = {}

    def assert_in_place(self, ns: str) -> None:
        """Our whole ruleset is committed, as the built-in profile says."""
        raise NotImplementedError

    def ours_present(self, ns: str) -> bool:
        raise NotImplementedError

    def break_ours(self, ns: str) -> None:
        """One drift of ours, so that the next heal commits."""
        raise NotImplementedError

    def plant_foreign(self, ns: str) -> None:
        """What a K3s node's other tools leave in this backend's tables."""
        raise NotImplementedError

    def foreign_state(self, ns: str) -> str:
        """Everything of this backend's but ours, counters left out."""
        raise NotImplementedError


# -- nftables -----------------------------------------------------------------------


def table_rules(ns: str) -> list[dict]:
    out = sh("nft", "-j", "list", "table", "inet", "k3s_agentd", ns=ns).stdout
    return [o["rule"] for o in json.loads(out)["nftables"] if "rule" in o]


def handle_of(ns: str, comment: str) -> int:
    return next(r["handle"] for r in table_rules(ns) if r.get("comment") == comment)


def handles_of(ns: str, comment: str) -> list[int]:
    return [r["handle"] for r in table_rules(ns) if r.get("comment") == comment]


def _nft_rule(verb: str, *spec: str) -> list[str]:
    return ["nft", verb, "rule", "inet", "k3s_agentd", "input", *spec]


NFT_SSH_2223 = ("tcp", "dport", "2223", "accept", "comment", '"ssh"')
NFT_DRIFTS: Drifts = {
    "table deleted": (lambda ns: [["nft", "delete", "table", "inet", "k3s_agentd"]], {"table", "ssh"}),
    "rule deleted": (lambda ns: [_nft_rule("delete", "handle", str(handle_of(ns, "kubelet")))], {"kubelet"}),
    "rule changed": (
        lambda ns: [
            _nft_rule(
                "replace",
                "handle",
                str(handle_of(ns, "ssh")),
                "tcp",
                "dport",
                "2223",
                "accept",
                "comment",
                '"ssh"',
            )
        ],
        {"ssh"},
    ),
    "rules reordered": (
        lambda ns: [
            *[_nft_rule("delete", "handle", str(handle)) for handle in handles_of(ns, "icmp")],
            _nft_rule("add", "meta", "l4proto", "icmp", "accept", "comment", '"icmp"'),
            _nft_rule("add", "meta", "l4proto", "ipv6-icmp", "accept", "comment", '"icmp"'),
        ],
        {"icmp"},
    ),
    "foreign rule in our chain": (
        lambda ns: [_nft_rule("insert", "tcp", "dport", "23", "accept")],
        {"foreign-rules"},
    ),
    "chain policy changed": (
        lambda ns: [["nft", "add", "chain", "inet", "k3s_agentd", "input", "{ policy accept ; }"]],
        {"policy"},
    ),
}

NFT_FOREIGN = """
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
    ["-N", "KUBE-FIREWALL"],
    ["-A", "KUBE-FIREWALL", "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-j", "DROP"],
    ["-I", "INPUT", "-j", "KUBE-FIREWALL"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"],
    ["-t", "nat", "-N", "FLANNEL-POSTRTG"],
    ["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.42.0.0/16", "-j", "RETURN"],
    ["-N", "KUBE-ROUTER-INPUT"],
    ["-A", "KUBE-ROUTER-INPUT", "-s", "10.42.0.0/16", "-j", "RETURN"],
]


class NftSide(Side):
    name = "nftables"
    fresh_drift = frozenset({"table", "ssh"})
    foreign_markers = ("KUBE-FIREWALL", "FLANNEL-POSTRTG", "firewall-check")
    drifts = NFT_DRIFTS

    def assert_in_place(self, ns: str) -> None:
        ruleset = sh("nft", "list", "ruleset", ns=ns).stdout
        assert "table inet k3s_agentd" in ruleset
        assert "hook input priority filter; policy drop;" in ruleset
        assert f"tcp dport {SSH_PORT} accept" in ruleset
        assert 'comment "etcd"' in ruleset  # embedded etcd: 2379-2380 open between servers

    def ours_present(self, ns: str) -> bool:
        return sh("nft", "list", "table", "inet", "k3s_agentd", ns=ns, check=False).returncode == 0

    def break_ours(self, ns: str) -> None:
        sh("nft", "delete", "table", "inet", "k3s_agentd", ns=ns)

    def plant_foreign(self, ns: str) -> None:
        sh("sh", "-c", f"nft -f - <<'EOF'\n{NFT_FOREIGN}\nEOF", ns=ns)
        for argv in IPTABLES_NFT:
            sh("iptables-nft", "-w", *argv, ns=ns)

    def foreign_state(self, ns: str) -> str:
        """The ruleset but our table, counters zeroed by listing without stateful info."""
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


# -- iptables (legacy tables, python-iptables) ---------------------------------------

CHAIN = "K3S-AGENTD-INPUT"


def save(ns: str, v6: bool = False) -> str:
    tool = "ip6tables-legacy-save" if v6 else "iptables-legacy-save"
    return sh(tool, "-t", "filter", ns=ns).stdout


def ipt(ns: str, *args: str) -> None:
    sh("iptables-legacy", "-w", *args, ns=ns)


def ours(ns: str) -> list[str]:
    return [line for line in save(ns).splitlines() if line.startswith(f"-A {CHAIN}")]


def _nth(ns: str, name: str) -> str:
    lines = ours(ns)
    return str(next(i for i, line in enumerate(lines, 1) if f'"k3s-agentd:{name}"' in line))


def _ipt(*args: str) -> list[str]:
    return ["iptables-legacy", "-w", *args]


def _ipt_rule(name: str, *match: str) -> tuple[str, ...]:
    return (*match, "-m", "comment", "--comment", f"k3s-agentd:{name}", "-j", "ACCEPT")


IPT_DRIFTS: Drifts = {
    "chain deleted": (
        lambda ns: [_ipt("-D", "INPUT", "-j", CHAIN), _ipt("-F", CHAIN), _ipt("-X", CHAIN)],
        {"chain", "jump", "ssh"},
    ),
    "rule deleted": (lambda ns: [_ipt("-D", CHAIN, _nth(ns, "kubelet"))], {"kubelet"}),
    "rule changed": (
        lambda ns: [
            _ipt(
                "-R",
                CHAIN,
                _nth(ns, "ssh"),
                *_ipt_rule("ssh", "-p", "tcp", "-m", "multiport", "--dports", "2223"),
            )
        ],
        {"ssh"},
    ),
    "rules reordered": (
        lambda ns: [
            _ipt("-D", CHAIN, _nth(ns, "loopback")),
            _ipt("-I", CHAIN, _nth(ns, "kubelet"), *_ipt_rule("loopback", "-i", "lo")),
        ],
        {"loopback"},
    ),
    "foreign rule in our chain": (
        lambda ns: [_ipt("-I", CHAIN, "2", "-p", "tcp", "--dport", "23", "-j", "ACCEPT")],
        {"foreign-rules"},
    ),
    "jump missing": (lambda ns: [_ipt("-D", "INPUT", "-j", CHAIN)], {"jump"}),
    "jump below an accept-all rule": (lambda ns: [_ipt("-I", "INPUT", "1", "-j", "ACCEPT")], {"jump"}),
}

# A fake kube-proxy / flannel / network-policy controller, as iptables-save shows them.
IPT_FOREIGN = [
    ["-N", "KUBE-FIREWALL"],
    ["-A", "KUBE-FIREWALL", "!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-j", "DROP"],
    ["-N", "KUBE-NODEPORTS"],
    ["-A", "KUBE-NODEPORTS", "-p", "tcp", "--dport", "30080", "-j", "ACCEPT"],
    ["-N", "KUBE-ROUTER-INPUT"],
    ["-A", "KUBE-ROUTER-INPUT", "-s", "10.42.0.0/16", "-j", "RETURN"],
    ["-I", "INPUT", "1", "-j", "KUBE-FIREWALL"],
    ["-I", "INPUT", "1", "-j", "KUBE-NODEPORTS"],
    ["-I", "INPUT", "1", "-j", "KUBE-ROUTER-INPUT"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"],
    ["-N", "FLANNEL-FWD"],
    ["-A", "FLANNEL-FWD", "-s", "10.42.0.0/16", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-j", "FLANNEL-FWD"],
    ["-t", "nat", "-N", "FLANNEL-POSTRTG"],
    ["-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.42.0.0/16", "-d", "10.42.0.0/16", "-j", "RETURN"],
    ["-t", "nat", "-A", "POSTROUTING", "-j", "FLANNEL-POSTRTG"],
]


class IptSide(Side):
    name = "iptables"
    fresh_drift = frozenset({"chain", "jump", "ssh"})
    foreign_markers = ("KUBE-FIREWALL", "FLANNEL-POSTRTG", "KUBE-ROUTER-INPUT")
    drifts = IPT_DRIFTS

    def assert_in_place(self, ns: str) -> None:
        text = save(ns)
        lines = text.splitlines()
        assert f"-A INPUT -j {CHAIN}" in lines[lines.index(f":{CHAIN} - [0:0]") + 1]
        assert f'--dports {SSH_PORT} -m comment --comment "k3s-agentd:ssh" -j ACCEPT' in text
        assert ours(ns)[-1] == f'-A {CHAIN} -m comment --comment "k3s-agentd:default-drop" -j DROP'
        six = save(ns, v6=True)
        assert f"-A INPUT -j {CHAIN}" in six and "-p ipv6-icmp" in six and "k3s-agentd:ssh" in six

    def ours_present(self, ns: str) -> bool:
        return f":{CHAIN} " in save(ns) or f":{CHAIN} " in save(ns, v6=True)

    def break_ours(self, ns: str) -> None:
        ipt(ns, "-D", CHAIN, "1")

    def plant_foreign(self, ns: str) -> None:
        for argv in IPT_FOREIGN:
            ipt(ns, *argv)
        sh("ip6tables-legacy", "-w", "-L", ns=ns)  # the (empty) IPv6 filter table exists too

    def foreign_state(self, ns: str) -> str:
        """All legacy tables, v4 and v6, minus our chain and our jump, counters and comments dropped."""
        text = sh("iptables-legacy-save", ns=ns).stdout + sh("ip6tables-legacy-save", ns=ns).stdout
        keep = [
            re.sub(r"\[\d+:\d+\]", "", line)
            for line in text.splitlines()
            if CHAIN not in line and not line.startswith("#")
        ]
        return "\n".join(keep)


SIDES: dict[str, Side] = {"nft": NftSide(), "iptables": IptSide()}
