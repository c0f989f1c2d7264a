"""The CNI's ports, for real: open from a @nodes peer, closed from any other, in network namespaces.

The server namespace runs the profile's ruleset (nftables and iptables);
the client namespace holds two addresses on one veth: NODE_PEER is the only
@nodes address (node_cidrs), OTHER_PEER is not. Each probe binds its source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3s_agent.controls.firewall import cni
from k3s_agent.model import Status
from tests.support.fwcontrol import drift, facts, heal, make_control
from tests.support.netns import LEGACY_MISSING, SERVER_IP, EchoServer, fresh_netns, run_in, sh, veth_pair

pytestmark = pytest.mark.root

NODE_PEER = "10.99.0.2"  # netns.CLIENT_IP
OTHER_PEER = "10.99.0.3"
BACKENDS = [
    "nftables",
    pytest.param("iptables", marks=pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)),
]


class UdpEcho:
    """A UDP socket in a namespace that answers every datagram with the same bytes."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
                self.sock.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def tcp_open(source: str, port: int) -> bool:
    try:
        with socket.create_connection((SERVER_IP, port), timeout=1.0, source_address=(source, 0)) as conn:
            conn.sendall(b"ping")
            return conn.recv(16) == b"ping"
    except OSError:
        return False


def udp_open(source: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        sock.sendto(b"ping", (SERVER_IP, port))
        try:
            return sock.recvfrom(16)[0] == b"ping"
        except OSError:
            return False


@contextlib.contextmanager
def listening(ns: str, tcp: tuple[int, ...], udp: tuple[int, ...]) -> Iterator[None]:
    servers = [run_in(ns, EchoServer, p) for p in tcp] + [run_in(ns, UdpEcho, p) for p in udp]
    try:
        yield
    finally:
        for server in servers:
            server.close()


@contextlib.contextmanager
def nodes_and_stranger() -> Iterator[tuple[str, str]]:
    with veth_pair() as (server, client):
        sh("ip", "addr", "add", f"{OTHER_PEER}/24", "dev", f"v{client[-8:]}", ns=client)  # veth_pair's name
        yield server, client


# policy cni -> (tcp, udp) ports open from @nodes only, and ports of other CNIs that stay shut.
TRAFFIC = {
    "flannel": ((), (8472,), (179, 4789)),
    "calico": ((179, 5473), (4789,), (8472,)),
    "cilium": ((4240,), (8472, 6081, 51871), (179, 4789)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("network", list(TRAFFIC))
def test_cni_ports_open_from_nodes_only(root: Path, backend: str, network: str) -> None:
    tcp, udp, shut = TRAFFIC[network]
    shut_tcp = tuple(p for p in shut if p in (179, 4240, 5473))
    shut_udp = tuple(p for p in shut if p not in shut_tcp)
    with nodes_and_stranger() as (server, client):
        control = make_control(root, backend, node_cidrs=[f"{NODE_PEER}/32"], cni=network)
        results, after = run_in(server, heal, control)
        assert results and all(r.status is Status.HEALED for r in results), results
        assert not drift(after), drift(after)
        assert control.describe()["cni"] == network
        with listening(server, tcp + shut_tcp, udp + shut_udp):
            for port in tcp:
                assert run_in(client, tcp_open, NODE_PEER, port), f"tcp {port} from a node"
                assert not run_in(client, tcp_open, OTHER_PEER, port), f"tcp {port} from a stranger"
            for port in udp:
                assert run_in(client, udp_open, NODE_PEER, port), f"udp {port} from a node"
                assert not run_in(client, udp_open, OTHER_PEER, port), f"udp {port} from a stranger"
            for port in shut_tcp:
                assert not run_in(client, tcp_open, NODE_PEER, port), f"tcp {port}: another CNI's"
            for port in shut_udp:
                assert not run_in(client, udp_open, NODE_PEER, port), f"udp {port}: another CNI's"


def _unknown_cni(root: Path, backend: str, **options: object):
    control = make_control(root, backend, **options)
    fixed = control._fixed_inputs
    assert fixed is not None
    control._fixed_inputs = dataclasses.replace(fixed, k3s=facts(flannel_backend="none"))
    return control


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_cni_refuses_the_drop(root: Path, backend: str) -> None:
    with fresh_netns() as ns:
        control = _unknown_cni(root, backend)
        found = run_in(ns, control.check)
        assert found[0].key == "cni" and found[0].status is Status.DRIFT
        assert found[0].message == cni.UNKNOWN
        results, _ = run_in(ns, heal, control)
        assert results and all(r.status is Status.FAILED and r.message == cni.UNKNOWN for r in results)
        assert sh("nft", "list", "table", "inet", "k3s_agentd", check=False, ns=ns).returncode != 0
        assert "K3S-AGENTD" not in sh("iptables-legacy", "-S", check=False, ns=ns).stdout
        assert control.describe()["cni"] == "unknown"
        # Naming it (here: no pod traffic between nodes) lets the drop through.
        named = _unknown_cni(root, backend, cni="none")
        results, after = run_in(ns, heal, named)
        assert results and all(r.status is Status.HEALED for r in results), results
        assert not drift(after)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipip_from_nodes_only(root: Path, backend: str) -> None:
    """IP protocol 4 (Calico IP-in-IP) reaches a raw socket from a node, not from a stranger."""
    with nodes_and_stranger() as (server, client):
        control = make_control(root, backend, node_cidrs=[f"{NODE_PEER}/32"], cni="calico")
        results, after = run_in(server, heal, control)
        assert results and all(r.status is Status.HEALED for r in results), results
        assert not drift(after), drift(after)
        # The kernel holds protocol 4 (/etc/protocols: ipencap), never 94 (which it calls ipip).
        if backend == "nftables":
            assert (
                "meta l4proto ipencap" in sh("nft", "list", "table", "inet", "k3s_agentd", ns=server).stdout
            )
        else:
            assert "-p ipencap" in sh("iptables-legacy", "-S", "K3S-AGENTD-INPUT", ns=server).stdout
        receiver = run_in(server, socket.socket, socket.AF_INET, socket.SOCK_RAW, 4)
        receiver.settimeout(1.0)
        try:
            for source, expected in ((NODE_PEER, True), (OTHER_PEER, False)):
                run_in(client, _send_ipip, source)
                try:
                    got = receiver.recvfrom(2048)
                    arrived = got[1][0] == source
                except OSError:
                    arrived = False
                assert arrived is expected, (source, expected)
        finally:
            receiver.close()


def _send_ipip(source: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 4) as sock:
        sock.bind((source, 0))
        sock.sendto(b"\x45" + b"\x00" * 19, (SERVER_IP, 0))  # an inner header's worth of bytes
