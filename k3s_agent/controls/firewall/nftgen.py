"""nf_tables' ruleset generation: a counter the kernel bumps once per committed
transaction (any table, any tool: nft, iptables-nft, kube-proxy's nft mode).

Read with NFT_MSG_GETGEN over netlink (linux/netfilter/nf_tables.h: the reply
carries NFTA_GEN_ID, big-endian u32; nft itself uses it to keep its cache
consistent). The firewall control brackets its commit with it and with the
change notifications of NFNLGRP_NFTABLES (TransactionLog), to tell a foreign
table changed by our transaction from one changed by somebody else's.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from typing import Optional, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSG = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id
_NLA = struct.Struct("=HH")


def generation() -> Optional[int]:
    """The current generation in this network namespace, None if nf_tables does not answer."""
    request_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    message = _NLMSG.pack(_NLMSG.size + len(body), request_type, NLM_F_REQUEST, 1, 0) + body
    try:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        with socket.socket(socket.AF_NETLINK, kind, NETLINK_NETFILTER) as sock:
            sock.settimeout(2)
            sock.sendto(message, (0, 0))
            reply = sock.recv(8192)
    except OSError:
        return None
    return parse_generation(reply)


def transactions_between(first: int, last: int) -> int:
    """Commits from generation first to last (a u32: it wraps)."""
    return (last - first) & 0xFFFFFFFF


def parse_generation(reply: bytes) -> Optional[int]:
    if len(reply) < _NLMSG.size + _NFGENMSG.size:
        return None
    length, kind = _NLMSG.unpack_from(reply)[:2]
    if kind == NLMSG_ERROR:
        return None
    attrs = _attributes(reply, _NLMSG.size + _NFGENMSG.size, min(length, len(reply)))
    return _gen_id(attrs)


def _gen_id(attrs: dict[int, bytes]) -> Optional[int]:
    value = attrs.get(NFTA_GEN_ID, b"")
    return int(struct.unpack_from(">I", value)[0]) if len(value) >= 4 else None


# -- what each committed transaction changed ---------------------------------------------

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7  # linux/netfilter/nfnetlink.h
SO_RCVBUFFORCE = 33
RCVBUF = 8 << 20  # room for a big foreign transaction's notifications (only used while queued)
NFT_MSG_NEWGEN = 15
# linux/netfilter/nf_tables.h: message type -> what nft would call the change.
_KINDS = {
    0: "table added",
    2: "table deleted",
    3: "chain added",
    5: "chain deleted",
    6: "rule added",
    8: "rule deleted",
    9: "set added",
    11: "set deleted",
    12: "element added",
    14: "element deleted",
    18: "object added",
    20: "object deleted",
    22: "flowtable added",
    24: "flowtable deleted",
}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
Notification = Tuple[Optional[int], Tuple[str, str]]


@dataclasses.dataclass
class Transaction:
    """One committed transaction: its generation and (kind, "table <family> <name>") per object."""

    generation: int
    changes: list[tuple[str, str]]

    def tables(self) -> set[str]:
        return {table for _, table in self.changes}

    def describe(self, skip: str) -> list[str]:
        """One line per table but skip, as diff_snapshots words it."""
        lines = []
        for table in sorted(self.tables() - {skip}):
            kinds = [kind for kind, t in self.changes if t == table]
            if kinds.count("table added") > kinds.count("table deleted"):
                lines.append(f"{table} appeared")
            elif kinds.count("table deleted") > kinds.count("table added"):
                lines.append(f"{table} disappeared")
            else:
                counts = ", ".join(f"{k} x{kinds.count(k)}" for k in sorted(set(kinds)))
                lines.append(f"{table} changed ({counts})")
        return lines


class TransactionLog:
    """nf_tables' change notifications (NFNLGRP_NFTABLES, what `nft monitor` reads):
    every committed transaction sends one message per object it changed, naming the
    table, then NFT_MSG_NEWGEN with the generation it committed as. Subscribed
    before a commit, it tells exactly which tables each transaction in between
    touched, without listing any ruleset (a full listing costs ~0.3 s and ~90 MB
    with 10,000 iptables-nft rules: docs/performance.md)."""

    def __init__(self) -> None:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        self.sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_NETFILTER)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> TransactionLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def until(self, first: int, last: int, timeout: float = 1.0) -> Optional[list[Transaction]]:
        """The transactions committed after generation first up to last, in order;
        None when notifications were lost (receive buffer overrun) or did not come."""
        items: list[Notification] = []
        deadline = time.monotonic() + timeout
        while not any(gen == last for gen, _ in items):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                items += parse_notifications(self.sock.recv(1 << 16))
            except OSError:  # ENOBUFS (overrun) or the timeout
                return None
        return group(items, first, last)


def group(items: list[Notification], first: int, last: int) -> list[Transaction]:
    """Object changes grouped by the NEWGEN that ends their transaction; only the
    transactions committed after generation first up to last."""
    found: list[Transaction] = []
    pending: list[tuple[str, str]] = []
    for gen, change in items:
        if gen is None:
            pending.append(change)
            continue
        if 0 < transactions_between(first, gen) <= transactions_between(first, last):
            found.append(Transaction(gen, pending))
        pending = []
    return found


def parse_notifications(data: bytes) -> list[Notification]:
    """(None, (kind, table)) per object change, (generation, ("", "")) per NEWGEN."""
    out: list[Notification] = []
    offset = 0
    while offset + _NLMSG.size + _NFGENMSG.size <= len(data):
        length, kind = _NLMSG.unpack_from(data, offset)[:2]
        if length < _NLMSG.size:
            break
        end = min(offset + length, len(data))
        family = data[offset + _NLMSG.size]
        attrs = _attributes(data, offset + _NLMSG.size + _NFGENMSG.size, end)
        if kind >> 8 == NFNL_SUBSYS_NFTABLES:
            msg = kind & 0xFF
            if msg == NFT_MSG_NEWGEN and _gen_id(attrs) is not None:
                out.append((_gen_id(attrs), ("", "")))
            elif msg in _KINDS and 1 in attrs:  # attribute 1 is the table name in every one of them
                name = attrs[1].split(b"\0", 1)[0].decode(errors="replace")
                out.append((None, (_KINDS[msg], f"table {FAMILIES.get(family, family)} {name}")))
        offset += (length + 3) & ~3
    return out


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + _NLA.size <= end:
        nla_len, nla_type = _NLA.unpack_from(data, offset)
        if nla_len < _NLA.size or offset + nla_len > end:
            break
        attrs.setdefault(nla_type & 0x3FFF, data[offset + _NLA.size : offset + nla_len])
        offset += (nla_len + 3) & ~3
    return attrs


# -- how many iptables-nft rules ---------------------------------------------------------

NFT_MSG_GETRULE, NFT_MSG_NEWRULE = 7, 6
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
# The tables iptables-nft-save lists (xtables' built-in table names).
XTABLES = ("filter", "nat", "mangle", "raw", "security")
IP_FAMILIES = (2, 10)  # NFPROTO_IPV4 (iptables-nft), NFPROTO_IPV6 (ip6tables-nft)


def xtables_rules(limit: int) -> int:
    """Rules in iptables-nft's and ip6tables-nft's tables, counting stops at limit.

    What `iptables-nft-save` would print as `-A` lines, without it: the save
    fetches and formats every rule (~75 ms with 10,000), a dump filtered by table
    (NFTA_RULE_TABLE) is left after its first reply. 0 where nf_tables does not
    answer, as the save would print nothing there.
    """
    total = 0
    for family in IP_FAMILIES:
        for table in XTABLES:
            if total >= limit:
                return total
            total += _dump_rules(family, table, limit - total)
    return total


def _dump_rules(family: int, table: str, limit: int) -> int:
    name = table.encode() + b"\0"
    attr = _NLA.pack(_NLA.size + len(name), 1) + name + b"\0" * (-len(name) % 4)  # NFTA_RULE_TABLE
    body = _NFGENMSG.pack(family, 0, 0) + attr
    request_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE
    message = _NLMSG.pack(_NLMSG.size + len(body), request_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
    count = 0
    try:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        with socket.socket(socket.AF_NETLINK, kind, NETLINK_NETFILTER) as sock:
            sock.settimeout(2)
            sock.sendto(message, (0, 0))
            while count < limit:
                done, found = _count_replies(sock.recv(1 << 16), table)
                count += found
                if done:
                    break
    except OSError:
        pass  # what was counted stands; nothing when nf_tables does not answer
    return min(count, limit)


def _count_replies(data: bytes, table: str) -> tuple[bool, int]:
    """(dump finished, rules of table) in one reply datagram."""
    count, offset = 0, 0
    rule_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
    while offset + _NLMSG.size <= len(data):
        length, kind = _NLMSG.unpack_from(data, offset)[:2]
        if length < _NLMSG.size:
            return True, count
        if kind in (NLMSG_DONE, NLMSG_ERROR):  # an error: no such table (ENOENT) or no nf_tables
            return True, count
        if kind == rule_type:
            attrs = _attributes(data, offset + _NLMSG.size + _NFGENMSG.size, min(offset + length, len(data)))
            count += attrs.get(1, b"").split(b"\0", 1)[0] == table.encode()
        offset += (length + 3) & ~3
    return False, count
