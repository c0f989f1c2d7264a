"""A cheap sample of the legacy filter tables, for the firewall's fingerprint.

iptables-legacy sends no notification when a rule changes (nftables does,
over netlink). IPT_SO_GET_INFO answers in one getsockopt with the table's
size in bytes, its rule count and where each built-in chain starts and
ends (struct ipt_getinfo, include/uapi/linux/netfilter_ipv4/ip_tables.h):
a flushed or deleted chain, a deleted or inserted rule or jump all change
it. It does not see a rule replaced by one of the same size (`iptables -R`)
or a chain policy changed: the sweep finds those. Reading the whole table
instead (IPT_SO_GET_ENTRIES) would cost megabytes a sample on a kube-proxy
node with many rules.

Sample only a table the backend already uses: asking for a table that is
not loaded makes the kernel try to load its module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
from typing import Optional

SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO (IPT_BASE_CTL + 0)
_INFO_SIZE = 32 + 4 + 5 * 4 + 5 * 4 + 4 + 4  # name, valid_hooks, hook_entry, underflow, num_entries, size
_LEVEL = {4: (socket.AF_INET, socket.IPPROTO_IP), 6: (socket.AF_INET6, socket.IPPROTO_IPV6)}
_libc: Optional[ctypes.CDLL] = None


def _getsockopt() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def filter_info(family: int, table: str = "filter") -> bytes:
    """struct ipt_getinfo of `table` (raw bytes); raises OSError when the kernel refuses."""
    domain, level = _LEVEL[family]
    buf = ctypes.create_string_buffer(table.encode(), _INFO_SIZE)  # the kernel reads the name
    size = ctypes.c_uint32(_INFO_SIZE)
    with socket.socket(domain, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW) as sock:
        if _getsockopt().getsockopt(sock.fileno(), level, SO_GET_INFO, buf, ctypes.byref(size)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"IPT_SO_GET_INFO {table} (IPv{family}): {os.strerror(err)}")
    return buf.raw[32:]
