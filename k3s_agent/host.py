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
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from typing import Optional

STATE_DIR = "/var/lib/k3s-agentd"
RUN_DIR = "/run/k3s-agentd"
BACKUPS_KEPT = 5
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
        try:
            fd = os.open(self.path(absolute), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
        target = self.path(absolute)
        parent, name = os.path.split(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
