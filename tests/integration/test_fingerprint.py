"""Fingerprints of state no event announces: each drift moves it, traffic and reads do not (real kernel)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence

import pytest

from k3s_agent.controls.firewall import iptinfo
from tests.support.netns import in_netns

pytestmark = pytest.mark.root

SETUP = [
    ["iptables-legacy", "-N", "K3S-AGENTD-INPUT"],
    ["iptables-legacy", "-A", "K3S-AGENTD-INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    ["iptables-legacy", "-A", "K3S-AGENTD-INPUT", "-j", "DROP"],
    ["iptables-legacy", "-I", "INPUT", "-j", "K3S-AGENTD-INPUT"],
    ["ip6tables-legacy", "-N", "K3S-AGENTD-INPUT"],
    ["ip6tables-legacy", "-A", "K3S-AGENTD-INPUT", "-j", "DROP"],
]

# (what happens, commands, whether the fingerprint moves)
CASES = [
    ("our chain flushed", [["iptables-legacy", "-F", "K3S-AGENTD-INPUT"]], True),
    ("one of our rules deleted", [["iptables-legacy", "-D", "K3S-AGENTD-INPUT", "1"]], True),
    ("the jump from INPUT deleted", [["iptables-legacy", "-D", "INPUT", "1"]], True),
    ("a rule inserted above ours", [["iptables-legacy", "-I", "INPUT", "-j", "ACCEPT"]], True),
    ("our IPv6 chain flushed", [["ip6tables-legacy", "-F", "K3S-AGENTD-INPUT"]], True),
    ("a listing (iptables -S)", [["iptables-legacy", "-S"]], False),
    ("traffic through the rules (counters move)", [], False),
]


def _moves(commands: Sequence[Sequence[str]]) -> bool:
    for argv in SETUP:
        subprocess.run(argv, check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    before = (iptinfo.filter_info(4), iptinfo.filter_info(6))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(20):
            sock.sendto(b"x", ("127.0.0.1", 9))
    for argv in commands:
        subprocess.run(list(argv), check=True, capture_output=True)
    return (iptinfo.filter_info(4), iptinfo.filter_info(6)) != before


@pytest.mark.parametrize(("commands", "moves"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_legacy_filter_fingerprint_sees_rule_changes(commands: list[list[str]], moves: bool) -> None:
    assert in_netns(_moves, commands) is moves


def test_a_table_that_is_not_there_is_an_error_naming_it() -> None:
    def probe() -> str:
        try:
            iptinfo.filter_info(4, table="no_such_table")
        except OSError as exc:
            return str(exc)
        return "no error"

    assert "IPT_SO_GET_INFO no_such_table (IPv4)" in in_netns(probe)
