"""What wakes the loop early: inotify on the paths controls care about.

The timer and signals live in the daemon; this module only turns "a watched
file changed" into a call of `wake()`. inotify through ctypes keeps us free of
another dependency; on a kernel without it the timer alone still heals.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Callable, Optional

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000  # the kernel dropped the watch: its inode is gone
# How often the reader threads look at their stop flag: close() joins them, and
# k3s-agentd must be out within 2 s of SIGTERM.
STOP_POLL = 0.5
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
    | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)  # fmt: skip
_EVENT = struct.Struct("iIII")


class PathWatcher:
    """Watches files/directories; calls wake(path) with each path it was asked to watch
    whose watch fired (debounced by the caller's loop), so the caller can tell whose it is."""

    def __init__(self, paths: Iterable[str], wake: Callable[[str], None]):
        self.wake = wake
        self.fd: Optional[int] = None
        self.wds: dict[int, str] = {}  # wd -> what it watches
        # wd -> the paths we were asked to watch: several share one wd when they resolve
        # to the same inode (a missing file watched through its folder, that folder itself).
        self.asked: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        self.fd = fd
        for path in sorted(set(paths)):
            self._add(path)

    def _add(self, path: str) -> None:
        # Watch the directory when the file itself does not exist yet, so its creation counts.
        target = path if os.path.exists(path) else os.path.dirname(path)
        if not target or not os.path.exists(target) or self.fd is None:
            return
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(target), MASK)
        if wd >= 0:
            self.wds[wd] = target
            self.asked.setdefault(wd, set()).add(path)

    @property
    def watching(self) -> list[str]:
        return sorted(self.wds.values())

    def start(self) -> None:
        if self.fd is not None:
            self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        fd = self.fd
        while not self._stop.is_set() and fd is not None:
            try:
                ready, _, _ = select.select([fd], [], [], STOP_POLL)
                if not ready:
                    continue
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                return  # closed under us: close() was called
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                for path in sorted(self.asked.get(wd, ())):
                    self.wake(path)
                if mask & IN_IGNORED and wd in self.asked:
                    # A file replaced by rename (write_atomic, sed -i, editors) or
                    # deleted loses its watch: watch the new file, or its folder.
                    self.wds.pop(wd, None)
                    for path in sorted(self.asked.pop(wd)):
                        self._add(path)

    def close(self) -> None:
        # The reader thread owns the fd while it runs: closing it under a select()
        # could let the number be reused by another open and read by mistake.
        self.stop()
        if self._thread is not None:
            self._thread.join(2.0)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- netlink -------------------------------------------------------------------------

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7  # linux/netfilter/nfnetlink.h
RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR = 1, 5, 9  # linux/rtnetlink.h
_NLMSG = struct.Struct("=IHHII")
_NFGENMSG_LEN = 4
_NLA = struct.Struct("=HH")
_ROUTE_GROUPS = {"link": RTNLGRP_LINK, "ipv4_addr": RTNLGRP_IPV4_IFADDR, "ipv6_addr": RTNLGRP_IPV6_IFADDR}


def nft_tables_in(data: bytes) -> set[str]:
    """Table names touched by a batch of nftables netlink notifications.

    Every NFT_MSG_NEW*/DEL* message starts, after nfgenmsg, with attribute 1
    holding the table name (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
    NFTA_SET_TABLE all equal 1 in linux/netfilter/nf_tables.h).
    """
    tables = set()
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length = _NLMSG.unpack_from(data, offset)[0]
        if length < _NLMSG.size:
            break
        attr = offset + _NLMSG.size + _NFGENMSG_LEN
        if attr + _NLA.size <= offset + length:
            nla_len, nla_type = _NLA.unpack_from(data, attr)
            if nla_type & 0x3FFF == 1 and nla_len > _NLA.size:
                raw = data[attr + _NLA.size : attr + nla_len]
                tables.add(raw.split(b"\0", 1)[0].decode(errors="replace"))
        offset += (length + 3) & ~3
    return tables


def netlink_kind(target: str) -> str:
    """What NetlinkWatcher passes to wake() for a target: "nftables" or "route"."""
    return "nftables" if target.partition(":")[0] == "nftables" else "route"


class NetlinkWatcher:
    """Wakes on kernel notifications: nftables changes (optionally only some tables),
    links and addresses coming and going.

    Targets: "nftables" (any table), "nftables:t1,t2" (only those tables),
    "link", "ipv4_addr", "ipv6_addr".
    """

    def __init__(self, targets: Iterable[str], wake: Callable[[str], None]):
        self.wake = wake
        self.nft_tables: Optional[set[str]] = None
        # Raw netlink sockets, not pyroute2: importing pyroute2 costs ~26 MB of RSS,
        # more than half the idle daemon, for what is a bind and a recv here.
        self.sockets: list[tuple[socket.socket, str]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        route_groups = set()
        nft = any_table = False
        for target in targets:
            name, _, tables = target.partition(":")
            if name == "nftables":
                nft = True
                # One unfiltered "nftables" target means every table counts.
                if not tables:
                    any_table = True
                else:
                    self.nft_tables = (self.nft_tables or set()) | set(tables.split(","))
            elif name in _ROUTE_GROUPS:
                route_groups.add(_ROUTE_GROUPS[name])
        if any_table:
            self.nft_tables = None
        if nft:
            self._open(NETLINK_NETFILTER, [NFNLGRP_NFTABLES], "nftables")
        if route_groups:
            self._open(NETLINK_ROUTE, sorted(route_groups), "route")

    def _open(self, protocol: int, groups: list[int], kind: str) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
            sock.bind((0, 0))
            for group in groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except OSError:
            return  # no such netlink family here: the timer still heals
        self.sockets.append((sock, kind))

    @property
    def watching(self) -> list[str]:
        return [kind for _, kind in self.sockets]

    def start(self) -> None:
        if self.sockets:
            self._thread = threading.Thread(target=self._run, name="netlink", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        by_fd = {sock.fileno(): (sock, kind) for sock, kind in self.sockets}
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(list(by_fd), [], [], STOP_POLL)
            except (OSError, ValueError):
                return
            for fd in ready:
                sock, kind = by_fd[fd]
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""  # ENOBUFS after a burst: something changed, wake
                wanted = self.nft_tables
                if kind == "nftables" and wanted is not None and not nft_tables_in(data) & wanted:
                    continue
                self.wake(kind)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for sock, _ in self.sockets:
            sock.close()
        self.sockets = []
