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
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
    | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)  # fmt: skip
_EVENT = struct.Struct("iIII")


class PathWatcher:
    """Watches files/directories; calls wake(path) (debounced by the caller's loop)."""

    def __init__(self, paths: Iterable[str], wake: Callable[[str], None]):
        self.wake = wake
        self.fd: Optional[int] = None
        self.wds: dict[int, str] = {}
        self._stop = threading.Event()
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

    @property
    def watching(self) -> list[str]:
        return sorted(self.wds.values())

    def start(self) -> None:
        if self.fd is not None:
            threading.Thread(target=self._run, name="inotify", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        assert self.fd is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                self.wake(self.wds.get(wd, "?"))

    def close(self) -> None:
        self.stop()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
