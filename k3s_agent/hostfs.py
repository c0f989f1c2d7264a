"""File-system safety of the host layer: one openat walk, two named link policies.

Every path is resolved one component at a time from the host root with
O_NOFOLLOW (open_dir). What a symlink on the way means is the caller's named
LinkPolicy: REFUSE_ALL (the files control, reading keys and keys' folders for
the sshd lint) never follows one, neither a planted link at the end of a path
nor one in the middle (a directory swapped for a link); ROOT_PLACED (the
agent's own writes: write_atomic, lock, ensure_dir) follows a link only root
could have placed. Host (host.py) is the way in; this module knows no Host.

Changes are made with fchmod/fchown on a descriptor whose type and identity
were checked with fstat after opening it, so a file swapped between check and
apply is refused rather than changed through a link (open(2): O_NOFOLLOW
fails with ELOOP on a final symlink; with O_DIRECTORY it fails with ENOTDIR).

Mount points are marked on every entry (a different st_dev from the parent
directory, or a mount point listed in /proc/self/mountinfo: a bind mount of the
same file system keeps st_dev; os.statx, for STATX_ATTR_MOUNT_ROOT, only
comes with Python 3.15, gh-83714) so that nothing is changed through a mount and
no walk enters one. Walks are iterative and capped (MAX_DEPTH, MAX_ENTRIES);
an entry that changes between two looks is marked, never fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from typing import Callable, Optional, Union

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The root itself is opened following links: --root is the operator's word.
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# A ROOT_PLACED walk follows at most this many links (as the kernel's MAXSYMLINKS).
MAX_HOPS = 40
# O_NONBLOCK: opening a FIFO that raced into place must not hang; O_NOCTTY: a
# tty must never become our controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAGIC = frozenset("*?[")
# A walk goes this many levels below its top and looks at this many entries per
# item (matches of a glob, or a tree), then stops with a note. K3s's trees are a
# few levels deep and a few thousand entries wide; a 1,200-level tree or a
# million files is someone's mistake or attack, and must neither recurse nor stall a cycle.
MAX_DEPTH = 64
MAX_ENTRIES = 100_000
# /proc/self/mountinfo on a busy node (a few hundred pods, a dozen mounts each)
# is well under 1 MiB; past this cap the tail is dropped (st_dev still works).
MOUNTINFO_LIMIT = 8 << 20
NEXT_CYCLE = "checked again next cycle"

ModeFn = Callable[[os.stat_result], Optional[int]]


class HostError(Exception):
    """A host operation was refused or failed; the message says which path and why.

    Defined here so that a ROOT_PLACED walk raises it; host.py exports it."""


class Refused(Exception):
    """We will not touch this path (a link, an odd file type, a swap under our feet)."""


class LinkInPath(Refused):
    """A path component is a symlink: the walk stops there and never follows it."""


class Raced(Refused):
    """An entry changed between two looks (a link swapped in or out, removed and remade)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One existing path found under a pattern, with its lstat at the time we saw it."""

    path: str  # host-absolute
    st: os.stat_result
    link: Optional[str] = None  # readlink() when the entry is a symlink
    mount: bool = False  # a mount point: never changed through, never entered
    # Why this entry cannot be judged this cycle: it changed while we looked,
    # or a walk stopped here (a cap). Set on the entry itself or on a marker.
    problem: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class MountTable:
    """The mount points of our mount namespace, as host-rooted real paths."""

    points: frozenset[str] = frozenset()
    root: str = "/"
    truncated: bool = False

    @classmethod
    def read(cls, root: str, mountinfo: str) -> MountTable:
        """A mountinfo file (/proc/self/mountinfo), read bounded; empty when there is none
        (st_dev still works). Mount points under `root` are mapped to host paths."""
        root = os.path.realpath(root)
        try:
            data, truncated = read_head(mountinfo, MOUNTINFO_LIMIT)
        except OSError:
            return cls(root=root)
        lines = data.split(b"\n")
        if truncated:
            lines = lines[:-1]  # the last line may be cut
        return cls(frozenset(_mount_points(lines)), root, truncated)

    def has(self, path: str) -> bool:
        """Is this host path a mount point?"""
        real = path if self.root == "/" else self.root + path
        return real in self.points


def _mount_points(lines: list[bytes]) -> Iterator[str]:
    # proc(5): field 5 is the mount point, with space, tab, newline and
    # backslash escaped as \ooo octal.
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            yield _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4].decode("utf-8", "surrogateescape"))


_OCTAL = re.compile(r"\\([0-7]{3})")


def read_head(path: str, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a regular or proc file (no final symlink); and whether it was cut."""
    fd = os.open(path, _FILE_FLAGS)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[:limit], len(data) > limit


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


class LinkPolicy(enum.Enum):
    """What a walk does with a symlink where it expects a directory."""

    # Never follow one: LinkInPath names it. For paths others may write below
    # (the files control's items, a user's ~/.ssh): a link there is drift for a human.
    REFUSE_ALL = "refuse-all"
    # Follow one only root could have placed: root owns the link and its directory is
    # root-owned and not group/other-writable, or sticky (/tmp). For the agent's own
    # files in system folders a distribution may link (/var/run -> /run); elsewhere (a
    # node_exporter textfile folder owned by another user) a link swapped in for a
    # directory would send a root write anywhere, so it is refused (HostError).
    # Absolute link targets resolve under the host root.
    ROOT_PLACED = "root-placed"


def open_dir(
    root: str, absolute: str, policy: LinkPolicy = LinkPolicy.REFUSE_ALL, create: bool = False
) -> int:
    """An O_DIRECTORY fd for a host directory, walked one component at a time from `root`.

    A symlink on the way is handled by `policy` (REFUSE_ALL: LinkInPath naming the
    first link, Refused or Raced for another type; ROOT_PLACED: HostError unless
    root placed it). A missing component is made (0755) with `create`, else
    FileNotFoundError.
    """
    fd = os.open(root, _ROOT_FLAGS)
    parts = _parts(absolute)
    walked, hops = "", 0
    try:
        while parts:
            part = parts.pop(0)
            walked += "/" + part
            try:
                child = _open_child(fd, part, create)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if policy is LinkPolicy.REFUSE_ALL:
                    raise _not_a_directory(fd, part, walked) from None
                hops += 1
                target = _root_placed_link(fd, part, absolute, hops)
                parts = _parts(target) + parts
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open(root, _ROOT_FLAGS)
                continue
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _open_child(fd: int, part: str, create: bool) -> int:
    """Open (with `create`, making it when missing) one child directory of fd, never through a link."""
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)


def _root_placed_link(fd: int, part: str, absolute: str, hops: int) -> str:
    """The target of the link `part` in fd when only root could have placed it (ROOT_PLACED)."""
    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise HostError(f"{absolute}: {part} is not a directory")
    if hops > MAX_HOPS or st.st_uid != 0 or not only_root_writes(os.fstat(fd)):
        raise HostError(f"{absolute}: {part} is a symlink in a directory others can write; not followed")
    return os.readlink(part, dir_fd=fd)


def only_root_writes(st: os.stat_result) -> bool:
    """Only root can add, remove or replace entries of this directory."""
    return st.st_uid == 0 and (not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX))


def open_child(fd: int, part: str, walked: str) -> int:
    """Open one child directory of fd with O_NOFOLLOW (fd stays open); raise on a link (REFUSE_ALL)."""
    try:
        return _open_child(fd, part, create=False)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _not_a_directory(fd, part, walked) from None
        raise


def _not_a_directory(fd: int, part: str, walked: str) -> Refused:
    """Why opening `part` as a directory failed: a link, another type, or a race."""
    try:
        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(part, dir_fd=fd)
            return LinkInPath(f"{walked} is a symlink (-> {target}); not followed")
    except OSError:  # gone, or a link no more (readlink: EINVAL)
        return Raced(f"{walked} changed while we looked; {NEXT_CYCLE}")
    if stat.S_ISDIR(st.st_mode):  # a link when we opened it, a directory again now
        return Raced(f"{walked} changed while we looked; {NEXT_CYCLE}")
    return Refused(f"{walked} is a {kind_of(st.st_mode)}, not a directory")


def read_file(root: str, absolute: str, limit: int = 1 << 20) -> tuple[bytes, os.stat_result]:
    """A regular file's first `limit` bytes and its fstat, reached without following
    any symlink on the way (LinkInPath, Refused, FileNotFoundError otherwise)."""
    parent, name = os.path.split(absolute)
    dfd = open_dir(root, parent)
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


def entry_at(
    dirfd: int, name: str, path: str, parent_dev: Optional[int] = None, mounts: Optional[MountTable] = None
) -> Entry:
    """lstat (and readlink) one name in a directory. FileNotFoundError when it is gone;
    a link that is no link by the time we read it is marked, not raised."""
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    mount = is_mount(st, parent_dev, path, mounts)
    if not stat.S_ISLNK(st.st_mode):
        return Entry(path, st, mount=mount)
    try:
        return Entry(path, st, os.readlink(name, dir_fd=dirfd), mount=mount)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise  # ENOENT (FileNotFoundError): gone
        # EINVAL: a symlink at lstat, something else now (readlink(2)).
        problem = f"changed while we looked (a symlink, then not); {NEXT_CYCLE}"
        return Entry(path, st, mount=mount, problem=problem)


def is_mount(st: os.stat_result, parent_dev: Optional[int], path: str, mounts: Optional[MountTable]) -> bool:
    """A mount point: listed in mountinfo, or a directory on another device than its parent.

    st_dev is asked of directories only: on an overlayfs whose layers sit on
    different file systems a regular file reports its layer's st_dev
    (Documentation/filesystems/overlayfs.rst, "Overlay objects"), and a file
    can only be a mount point by a bind mount, which mountinfo lists.
    """
    if mounts is not None and mounts.has(path):
        return True
    return stat.S_ISDIR(st.st_mode) and parent_dev is not None and st.st_dev != parent_dev


def names_in(fd: int, pattern: Optional[str] = None, limit: int = -1) -> tuple[list[str], bool]:
    """Sorted names in a directory (matching a glob component, if given), at most `limit`
    of them (-1: one past MAX_ENTRIES, so a caller counting entries sees the cap passed),
    and whether some were left out. Read lazily: a directory of millions of names costs
    no more than the cap."""
    limit = MAX_ENTRIES + 1 if limit < 0 else limit
    names: list[str] = []
    with os.scandir(fd) as entries:
        for item in entries:
            if pattern is not None and not _glob_match(item.name, pattern):
                continue
            if len(names) >= limit:
                return sorted(names), True
            names.append(item.name)
    return sorted(names), False


def _glob_match(name: str, pattern: str) -> bool:
    # As in glob(3), a wildcard does not match a leading dot.
    return fnmatch.fnmatchcase(name, pattern) and (pattern.startswith(".") or not name.startswith("."))


def expand(root: str, pattern: str, mounts: Optional[MountTable] = None) -> Iterator[Entry]:
    """Existing paths matching an absolute glob (*, ?, [..] within one component).

    Like glob(3), a wildcard does not match a leading dot. Symlinked
    directories are never descended; a literal component that is a link
    raises LinkInPath. Each entry says whether it is a mount point.
    """
    parts = [p for p in pattern.split("/") if p]
    if not parts:
        return
    fd = os.open(root, _ROOT_FLAGS)
    try:
        yield from _expand_at(fd, "", parts, mounts)
    finally:
        os.close(fd)


def _expand_at(fd: int, prefix: str, parts: list[str], mounts: Optional[MountTable]) -> Iterator[Entry]:
    # Recursion is bounded by the pattern's depth (item keys are at most 64 levels).
    head, rest = parts[0], parts[1:]
    names = names_in(fd, head)[0] if has_magic(head) else [head]
    dev = os.fstat(fd).st_dev
    for name in names:
        path = f"{prefix}/{name}"
        if not rest:
            try:
                yield entry_at(fd, name, path, dev, mounts)
            except FileNotFoundError:
                continue
            continue
        try:
            child = open_child(fd, name, path)
        except FileNotFoundError:
            continue
        except LinkInPath:
            if has_magic(head):
                continue  # a wildcard never walks through a link; a literal one says so
            raise
        except Refused:
            continue
        try:
            yield from _expand_at(child, path, rest, mounts)
        finally:
            os.close(child)


def too_many() -> str:
    return f"more than {MAX_ENTRIES} entries; not all checked"


@dataclasses.dataclass
class _Level:
    """One open directory on the walk's stack."""

    fd: int
    path: str
    dev: int
    names: Iterator[str]
    depth: int


def walk(root: str, top: Entry, mounts: Optional[MountTable] = None) -> Iterator[Entry]:
    """Everything below a directory entry, depth first, never following a link nor
    entering a mount point. Iterative: one open fd per level. Stops with a marker
    entry (problem set) below MAX_DEPTH levels and after MAX_ENTRIES entries."""
    if not stat.S_ISDIR(top.st.st_mode) or top.mount:
        return
    stack: list[_Level] = []
    seen = 0
    try:
        stack.append(_level(open_dir(root, top.path), top.path, 1, MAX_ENTRIES + 1))
        while stack:
            level = stack[-1]
            name = next(level.names, None)
            if name is None:
                os.close(stack.pop().fd)
                continue
            try:
                entry = entry_at(level.fd, name, f"{level.path}/{name}", level.dev, mounts)
            except FileNotFoundError:
                continue  # gone since the listing
            seen += 1
            if seen > MAX_ENTRIES:
                yield Entry(level.path, os.fstat(level.fd), problem=too_many())
                return
            yield entry
            below = _descend(level, entry, MAX_ENTRIES - seen + 1)
            if isinstance(below, _Level):
                stack.append(below)
            elif below is not None:
                yield below
    finally:
        for level in stack:
            os.close(level.fd)


def _level(fd: int, path: str, depth: int, limit: int) -> _Level:
    try:
        names, _ = names_in(fd, limit=limit)  # the caller asks for one past the cap: enough to know
        return _Level(fd, path, os.fstat(fd).st_dev, iter(names), depth)
    except BaseException:
        os.close(fd)
        raise


def _descend(level: _Level, entry: Entry, limit: int) -> Union[_Level, Entry, None]:
    """The next level below a directory entry, a marker saying why not, or None."""
    if not stat.S_ISDIR(entry.st.st_mode) or entry.mount or entry.problem:
        return None
    if level.depth >= MAX_DEPTH:
        return dataclasses.replace(entry, problem=f"deeper than {MAX_DEPTH} levels; not checked below")
    try:
        child = open_child(level.fd, os.path.basename(entry.path), entry.path)
    except FileNotFoundError:
        return None  # removed since the lstat
    except Refused as exc:  # a link or a file now: not followed
        return dataclasses.replace(entry, problem=f"changed while we looked ({exc}); {NEXT_CYCLE}")
    return _level(child, entry.path, level.depth + 1, limit)


def change(
    root: str,
    path: str,
    uid: int = -1,
    gid: int = -1,
    mode_for: Optional[ModeFn] = None,
    mounts: Optional[MountTable] = None,
) -> tuple[os.stat_result, os.stat_result]:
    """fchown then fchmod one regular file or directory; returns (before, after) stat.

    mode_for(stat) gives the mode to set (or None to keep it); it is
    computed from the fstat of the descriptor we hold, after the chown (which
    may clear set-id bits), never from an earlier look. A mount point (by
    st_dev, or listed in `mounts`) is refused: a change there lands elsewhere.
    """
    parent, name = os.path.split(path)
    dfd = open_dir(root, parent or "/")
    try:
        seen = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        _refuse_kind(path, seen)
        if is_mount(seen, os.fstat(dfd).st_dev, path, mounts):
            raise Refused(f"{path} is a mount point; never changed through")
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
