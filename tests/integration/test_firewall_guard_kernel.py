"""Where the lock-out guard's model and the kernel could disagree: each row is a ruleset committed
for real (nft) in a namespace whose NIC is ens3 (altname enp0s3), then a real SSH login as the
operator over IPv4 and IPv6 with the neighbour caches flushed first, so neighbour discovery is
really needed. The guard must refuse exactly the rows the kernel locks out.

The one row the guard cannot see by walking (management written as IPv4-mapped IPv6: the guard
and the rule agree with each other, the kernel sees IPv4) is closed where the value is parsed:
the policy refuses such a network.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
import time
from pathlib import Path

import pytest

from k3s_agent.controls.firewall import desired, guard
from k3s_agent.controls.firewall.model import Network, Rule, Ruleset, parse_network
from k3s_agent.controls.firewall.nft import NftBackend
from k3s_agent.host import Host
from tests.support.fwcontrol import SSH_PORT
from tests.support.netns import SERVER_IP, SERVER_IP6, run_in, sh, veth_pair
from tests.support.sshnet import OPERATOR, SSHD, OperatorSshd

pytestmark = [pytest.mark.root, pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server missing")]
NIC, ALTNAME = "ens3", "enp0s3"
ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
MAPPED = ipaddress.ip_network("::ffff:10.99.0.0/120")  # the client 10.99.0.2 as `ss` shows it
SSH = Rule("ssh", proto="tcp", ports=((SSH_PORT, SSH_PORT),))
HEAD = tuple(desired.head_rules())


@dataclasses.dataclass(frozen=True)
class Row:
    rules: tuple[Rule, ...]
    v4: bool  # the kernel lets a v4 login in
    v6: bool
    management: tuple[Network, ...] = ANY


ROWS = {
    "profile head and ssh": Row((*HEAD, SSH), v4=True, v6=True),
    "no ICMPv6 accept: no neighbour discovery": Row(
        (*(r for r in HEAD if r.name != "icmp"), SSH), v4=True, v6=False
    ),
    "ssh narrowed to the NIC's altname": Row(
        (*HEAD, dataclasses.replace(SSH, interface=ALTNAME)), v4=False, v6=False
    ),
    "ssh narrowed to the NIC by prefix": Row((*HEAD, dataclasses.replace(SSH, interface="en*")), True, True),
    "management as IPv4-mapped IPv6": Row(
        (*HEAD, dataclasses.replace(SSH, sources=(MAPPED,))), v4=False, v6=False, management=(MAPPED,)
    ),
}


def logins(sshd: OperatorSshd, server: str, client: str) -> tuple[bool, bool]:
    for ns in (server, client):
        sh("ip", "-6", "neigh", "flush", "all", ns=ns)
        sh("ip", "-4", "neigh", "flush", "all", ns=ns)
    return sshd.login(client, SERVER_IP) == OPERATOR, sshd.login(client, SERVER_IP6) == OPERATOR


def test_guard_agrees_with_the_kernel() -> None:
    with veth_pair(server_if=NIC) as (server, client), OperatorSshd(server, SSH_PORT) as sshd:
        sh("ip", "link", "property", "add", "dev", NIC, "altname", ALTNAME, ns=server)
        interfaces = run_in(server, Host().net_interfaces)
        assert ALTNAME not in interfaces  # if_nameindex lists primary names only
        seen = {}
        for name, row in ROWS.items():
            ruleset = Ruleset(row.rules, default_input="drop")
            run_in(server, NftBackend(Host()).commit, ruleset)
            seen[name] = logins(sshd, server, client)
            refused = guard.lockout_problems(ruleset, [SSH_PORT], row.management, interfaces)
            kernel_ok = row.v4 and row.v6 if row.management == ANY else row.v4 or row.v6
            if row.management != (MAPPED,):
                assert bool(refused) == (not kernel_ok), (name, refused, seen[name])
            else:
                # walking agrees with the rule, not with the wire: refused where it is parsed
                assert refused == [], name
                with pytest.raises(ValueError, match="write 10.99.0.0/24"):
                    parse_network(str(MAPPED))
        assert seen == {name: (row.v4, row.v6) for name, row in ROWS.items()}


def dhcpv6_answer_arrives(node: str, peer: str, ruleset: Ruleset) -> bool:
    """The node asks ff02::1:2 from port 546 (a DHCPv6 client); the peer answers unicast from its
    link-local address. True when the answer gets through the node's committed ruleset."""
    peer_if = next(n for n in run_in(peer, Host().net_interfaces) if n != "lo")
    run_in(node, NftBackend(Host()).commit, ruleset)

    def listen() -> socket.socket:
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind(("::", 547))
        group = socket.inet_pton(socket.AF_INET6, "ff02::1:2") + struct.pack(
            "@I", socket.if_nametoindex(peer_if)
        )
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        server.settimeout(5)
        return server

    def ask() -> socket.socket:
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client.bind(("::", 546))
        client.sendto(b"solicit", ("ff02::1:2", 547, 0, socket.if_nametoindex(NIC)))
        client.settimeout(1.5)
        return client

    server = run_in(peer, listen)
    client = run_in(node, ask)
    try:
        _, asker = server.recvfrom(64)
        assert ipaddress.ip_address(asker[0].split("%")[0]).is_link_local
        server.sendto(b"advertise", asker)
        client.recvfrom(64)
        return True
    except socket.timeout:
        return False
    finally:
        server.close()
        client.close()


def test_dhcpv6_answers_pass_the_profile_head() -> None:
    without = Ruleset((*(r for r in HEAD if r.name != "dhcpv6-client"), SSH), default_input="drop")
    with veth_pair(server_if=NIC) as (node, peer):
        time.sleep(2.5)  # the link-local addresses must be past DAD to be used as sources
        assert not dhcpv6_answer_arrives(node, peer, without)
        assert guard.lockout_problems(without, [SSH_PORT], ANY, [NIC]) == [
            f"DHCPv6 answers on {NIC} would be dropped by the default policy (default_input = drop)"
        ]
        assert dhcpv6_answer_arrives(node, peer, Ruleset((*HEAD, SSH), default_input="drop"))
