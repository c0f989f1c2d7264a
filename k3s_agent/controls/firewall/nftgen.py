"""nf_tables' ruleset generation: a counter the kernel bumps once per committed
transaction (any table, any tool: nft, iptables-nft, kube-proxy's nft mode).

Read with NFT_MSG_GETGEN over netlink (linux/netfilter/nf_tables.h: the reply
carries NFTA_GEN_ID, big-endian u32; nft itself uses it to keep its cache
consistent). The firewall control brackets its commit with it, to tell a
foreign table changed by our transaction from one changed by somebody else's.
"""

from __future__ import annotations

import socket
import struct
from typing import Optional

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
    offset = _NLMSG.size + _NFGENMSG.size
    end = min(length, len(reply))
    while offset + _NLA.size <= end:
        nla_len, nla_type = _NLA.unpack_from(reply, offset)
        if nla_len < _NLA.size or offset + nla_len > end:
            return None
        if nla_type & 0x3FFF == NFTA_GEN_ID and nla_len >= _NLA.size + 4:
            return int(struct.unpack_from(">I", reply, offset + _NLA.size)[0])
        offset += (nla_len + 3) & ~3
    return None
