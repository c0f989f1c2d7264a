"""Symlink-proof file-system access (the files control; sshd's lock-out lint reads keys with it).

Every path is resolved one component at a time from the host root with
O_NOFOLLOW, so neither a planted link at the end of a path nor one in the
middle (a directory swapped for a link) is ever followed. Changes are made
with fchmod/fchown on a descriptor whose type and identity were checked with
fstat after opening it, so a file swapped between check and apply is refused
rather than changed through a link (open(2): O_NOFOLLOW fails with ELOOP on a
final symlink; with O_DIRECTORY it fails with ENOTDIR).
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from typing import Callable, Optional

from k3s_agent.host import Host

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that raced into place must not hang; O_NOCTTY: a
# tty must never become our controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAGIC = frozenset("*?[")

ModeFn = Callable[[os.stat_result], Optional[int]]


class Refused(Exception):
    """We will not touch this path (a link, an odd file type, a swap under our feet)."""


class LinkInPath(Refused):
    """A path component is a symlink: the walk stops there and never follows it."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One existing path found under a pattern, with its lstat at the time we saw it."""

    path: str  # host-absolute
    st: os.stat_result
    link: Optional[str] = None  # readlink() when the entry is a symlink


def has_magic(pattern: str) -> bool:
    return any(ch in _MAGIC for ch in pattern)


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def open_dir(host: Host, absolute: str) -> int:
    """An O_DIRECTORY fd for a host directory, reached without following any symlink.

    Raises LinkInPath naming the first component that is a link,
    FileNotFoundError when a component is missing.
    """
    fd = os.open(host.path("/"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = ""
    try:
        for part in [p for p in absolute.split("/") if p]:
            walked += "/" + part
            fd = _step(fd, part, walked)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _step(fd: int, part: str, walked: str) -> int:
    """Open one child directory of fd with O_NOFOLLOW, closing fd; raise on a link."""
    try:
        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(part, dir_fd=fd)
                raise LinkInPath(f"{walked} is a symlink (-> {target}); not followed") from None
            raise Refused(f"{walked} is a {kind_of(st.st_mode)}, not a directory") from None
        raise
    os.close(fd)
    return child


def read_file(host: Host, absolute: str, limit: int = 1 << 20) -> tuple[bytes, os.stat_result]:
    """A regular file's first `limit` bytes and its fstat, reached without following
    any symlink on the way (LinkInPath, Refused, FileNotFoundError otherwise)."""
    parent, name = os.path.split(absolute)
    dfd = open_dir(host, parent)
    try:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkInPath(f"{absolute} is a symlink; not followed") from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{absolute} is a {kind_of(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        while limit > 0 and (chunk := os.read(fd, min(limit, 1 << 16))):
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def entry_at(dirfd: int, name: str, path: str) -> Entry:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    link = os.readlink(name, dir_fd=dirfd) if stat.S_ISLNK(st.st_mode) else None
    return Entry(path, st, link)


def expand(host: Host, pattern: str) -> Iterator[Entry]:
    """Existing paths matching an absolute glob (*, ?, [..] within one component).

    Like glob(3), a wildcard does not match a leading dot. Symlinked
    directories are never descended; a literal component that is a link
    raises LinkInPath.
    """
    parts = [p for p in pattern.split("/") if p]
    if not parts:
        return
    fd = os.open(host.path("/"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _expand_at(fd, "", parts)
    finally:
        os.close(fd)


def _expand_at(fd: int, prefix: str, parts: list[str]) -> Iterator[Entry]:
    head, rest = parts[0], parts[1:]
    if has_magic(head):
        names = sorted(
            n
            for n in os.listdir(fd)
            if fnmatch.fnmatchcase(n, head) and (head.startswith(".") or not n.startswith("."))
        )
    else:
        names = [head]
    for name in names:
        path = f"{prefix}/{name}"
        if not rest:
            try:
                yield entry_at(fd, name, path)
            except FileNotFoundError:
                continue
            continue
        try:
            child = _step(os.dup(fd), name, path)
        except FileNotFoundError:
            continue
        except LinkInPath:
            if has_magic(head):
                continue  # a wildcard never walks through a link; a literal one says so
            raise
        except Refused:
            continue
        try:
            yield from _expand_at(child, path, rest)
        finally:
            os.close(child)


def walk(host: Host, top: Entry) -> Iterator[Entry]:
    """Everything below a directory entry, depth first, never following a link."""
    if not stat.S_ISDIR(top.st.st_mode):
        return
    fd = open_dir(host, top.path)
    try:
        yield from _walk_at(fd, top.path)
    finally:
        os.close(fd)


def _walk_at(fd: int, prefix: str) -> Iterator[Entry]:
    for name in sorted(os.listdir(fd)):
        try:
            entry = entry_at(fd, name, f"{prefix}/{name}")
        except FileNotFoundError:
            continue
        yield entry
        if not stat.S_ISDIR(entry.st.st_mode):
            continue
        try:
            child = _step(os.dup(fd), name, entry.path)
        except (FileNotFoundError, Refused):
            continue  # gone, or swapped for a link since the lstat: not followed
        try:
            yield from _walk_at(child, entry.path)
        finally:
            os.close(child)


def change(
    host: Host, path: str, uid: int = -1, gid: int = -1, mode_for: Optional[ModeFn] = None
) -> tuple[os.stat_result, os.stat_result]:
    """fchown then fchmod one regular file or directory; returns (before, after) stat.

    mode_for(stat) gives the mode to set (or None to keep it); it is
    computed from the fstat of the descriptor we hold, after the chown (which
    may clear set-id bits), never from an earlier look.
    """
    parent, name = os.path.split(path)
    dfd = open_dir(host, parent or "/")
    try:
        seen = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        _refuse_kind(path, seen)
        flags = _FILE_FLAGS | (os.O_DIRECTORY if stat.S_ISDIR(seen.st_mode) else 0)
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(f"{path} was replaced by a symlink or other file; not followed") from None
            raise
    finally:
        os.close(dfd)
    try:
        before = os.fstat(fd)
        if (before.st_dev, before.st_ino) != (seen.st_dev, seen.st_ino):
            raise Refused(f"{path} was swapped while we looked at it; left alone")
        _refuse_kind(path, before)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        if mode_for is not None:
            mode = mode_for(os.fstat(fd))
            if mode is not None:
                os.fchmod(fd, mode)
        return before, os.fstat(fd)
    finally:
        os.close(fd)


def _refuse_kind(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path} is a symlink; not followed")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise Refused(f"{path} is a {kind_of(st.st_mode)}, not a regular file or directory")
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        # Another name shares this inode (a planted hard link would let a
        # chmod here loosen a file elsewhere): left for an operator.
        raise Refused(f"{path} has {st.st_nlink} hard links; refusing to change a shared inode")
