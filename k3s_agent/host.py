"""The one place that touches the host.

Every path the agent reads or writes goes through a Host, so tests (and a
`--root` dry run against a copied tree) can point it at a temporary root.
/proc is separate from the root because the real kernel is often what a test
wants (net.* sysctls in a network namespace) while files live under a tmpdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Optional

STATE_DIR = "/var/lib/k3s-agentd"
RUN_DIR = "/run/k3s-agentd"
BACKUPS_KEPT = 5
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # --root is the operator's word, as in fsafe
_SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HostError(Exception):
    """A host operation was refused or failed; the message says which path and why."""


@dataclasses.dataclass(frozen=True)
class Host:
    root: str = "/"
    proc: str = "/proc"
    # A read-only host refuses every write through this layer: `k3s-agentctl
    # check`/`diff` run on one, so a control that caches state cannot change the host.
    read_only: bool = False

    def path(self, absolute: str) -> str:
        """Map an absolute host path into this host's root."""
        if not absolute.startswith("/"):
            raise ValueError(f"host paths are absolute, got {absolute!r}")
        if self.root == "/":
            return absolute
        return os.path.join(self.root, absolute.lstrip("/"))

    def proc_path(self, relative: str) -> str:
        return os.path.join(self.proc, relative)

    @property
    def state_dir(self) -> str:
        return self.path(STATE_DIR)

    @property
    def run_dir(self) -> str:
        return self.path(RUN_DIR)

    # -- reading -----------------------------------------------------------

    def read_bytes(self, absolute: str) -> Optional[bytes]:
        """Content of a regular file, None when missing. Never follows a final symlink."""
        # O_NONBLOCK: open(2) of a FIFO for reading blocks until a writer comes, so
        # a FIFO planted where we read (e.g. a user's ~/.ssh/authorized_keys) would
        # hang the agent; with it the open returns and the S_ISREG check refuses it.
        # O_NOCTTY: a tty must never become our controlling terminal.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(self.path(absolute), flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HostError(f"{absolute}: is a symlink, refusing to read through it") from exc
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostError(f"{absolute}: not a regular file")
            return _read_all(fd)
        finally:
            os.close(fd)

    def read_text(self, absolute: str) -> Optional[str]:
        data = self.read_bytes(absolute)
        return None if data is None else data.decode("utf-8", errors="replace")

    # -- writing -----------------------------------------------------------

    def write_atomic(
        self,
        absolute: str,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        backup: bool = True,
    ) -> Optional[str]:
        """Replace a file atomically (temp file, fsync, rename, fsync dir).

        The previous version is copied to the backup dir first; its path is
        returned. A symlink at the target is refused, never followed or replaced:
        a planted link is something an operator must look at.
        """
        if self.read_only:
            raise HostError(f"{absolute}: not written, this is a read-only run")
        if not absolute.startswith("/"):
            raise ValueError(f"host paths are absolute, got {absolute!r}")
        if any(part in (".", "..") for part in absolute.split("/")):
            # ".." would climb out of a --root tree, and mkdir the folders before it.
            raise HostError(f"{absolute}: not a normalised path (. or .. in it), not written")
        parent, name = os.path.split(absolute)
        dfd = self._open_parent(parent)
        try:
            old = _lstat_at(name, dfd)
            if old is not None and not stat.S_ISREG(old.st_mode):
                raise HostError(f"{absolute}: exists and is not a regular file, refusing to replace it")
            saved = self._backup(absolute, dfd, name) if (backup and old is not None) else None
            tmp = f".{name}.k3s-agentd.{os.getpid()}.tmp"
            _write_new(dfd, tmp, data, mode, uid, gid)
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                _unlink_quietly(tmp, dfd)
                raise
            os.fsync(dfd)
            return saved
        finally:
            os.close(dfd)

    def remove(self, absolute: str, backup: bool = True) -> Optional[str]:
        """Delete a regular file, a copy kept in the backup dir first.

        Returns the backup path, or None when nothing was removed. A symlink or
        anything but a regular file is refused, as in write_atomic.
        """
        if self.read_only:
            raise HostError(f"{absolute}: not removed, this is a read-only run")
        if any(part in (".", "..") for part in absolute.split("/")) or not absolute.startswith("/"):
            raise HostError(f"{absolute}: not a normalised absolute path, not removed")
        parent, name = os.path.split(absolute)
        dfd = self._open_parent(parent)
        try:
            old = _lstat_at(name, dfd)
            if old is None:
                return None
            if not stat.S_ISREG(old.st_mode):
                raise HostError(f"{absolute}: exists and is not a regular file, refusing to remove it")
            saved = self._backup(absolute, dfd, name) if backup else absolute
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)
            return saved
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def lock(self, absolute: str, timeout: float = 30.0) -> Iterator[None]:
        """An exclusive flock on a (0600, created when missing) lock file, for one
        read-modify-write of agent state shared between processes."""
        parent, name = os.path.split(absolute)
        dfd = self._open_parent(parent)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise HostError(f"{absolute}: still locked after {timeout:g}s") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _open_parent(self, absolute: str) -> int:
        """An fd for a host directory, made (0755) where missing, walked one component at a time.

        A symlink on the way is followed only when only root could have put it
        there: root owns it and its directory is root-owned and not group/other-
        writable, or sticky (/tmp). Elsewhere (e.g. a node_exporter textfile folder
        owned by another user) a link swapped in for a directory would send a root
        write anywhere, so it is refused. Absolute link targets resolve under the
        host root, as Host.path does.
        """
        fd = os.open(self.root, _ROOT_FLAGS)
        parts = [p for p in absolute.split("/") if p]
        hops = 0
        try:
            while parts:
                part = parts.pop(0)
                try:
                    child = _open_child(fd, part)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise HostError(f"{absolute}: {part} is not a directory") from None
                    hops += 1
                    if hops > 40 or st.st_uid != 0 or not _only_root_writes(os.fstat(fd)):
                        raise HostError(
                            f"{absolute}: {part} is a symlink in a directory others can write; not followed"
                        ) from None
                    target = os.readlink(part, dir_fd=fd)
                    parts = [p for p in target.split("/") if p] + parts
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open(self.root, _ROOT_FLAGS)
                    continue
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _backup(self, absolute: str, dfd: int, name: str) -> str:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            content = _read_all(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        folder = os.path.join(self.state_dir, "backup", absolute.strip("/").replace("/", "%"))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
        dest = os.path.join(folder, stamp)
        bfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _write_new(bfd, stamp, content, stat.S_IMODE(st.st_mode) & 0o600, st.st_uid, st.st_gid)
        finally:
            os.close(bfd)
        for stale in sorted(os.listdir(folder))[:-BACKUPS_KEPT]:
            _unlink_quietly(os.path.join(folder, stale))
        return dest

    # -- commands ----------------------------------------------------------

    def which(self, name: str) -> Optional[str]:
        return shutil.which(name, path=_SEARCH_PATH)

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: Optional[bytes] = None,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command: argv list only, never a shell, output captured as text."""
        try:
            return subprocess.run(
                list(argv),
                input=None if input is None else input.decode(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=env,
            )
        except FileNotFoundError as exc:
            raise HostError(f"{argv[0]}: not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{' '.join(argv)}: no answer within {timeout:g}s") from exc

    def spawn(self, argv: Sequence[str], env: Optional[dict[str, str]] = None) -> int:
        """Start a command detached from us and from our terminal (own session, no
        stdio, argv only); return its pid. It outlives us and a hung-up SSH session."""
        if self.read_only:
            raise HostError(f"{argv[0]}: not started, this is a read-only run")
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
        except FileNotFoundError as exc:
            raise HostError(f"{argv[0]}: not installed") from exc
        return proc.pid


def _open_child(fd: int, part: str) -> int:
    """Open (creating it when missing) one child directory of fd, never through a link."""
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)


def _only_root_writes(st: os.stat_result) -> bool:
    """Only root can add, remove or replace entries of this directory."""
    return st.st_uid == 0 and (not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX))


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _lstat_at(name: str, dfd: int) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_new(dfd: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    _unlink_quietly(name, dfd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(name, dfd)
        raise
    os.close(fd)


def _unlink_quietly(name: str, dfd: Optional[int] = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)
