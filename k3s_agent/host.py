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
import glob
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

from k3s_agent import hostfs
from k3s_agent.hostfs import HostError, LinkPolicy

__all__ = ["Host", "HostError", "LinkPolicy", "TooLarge"]  # and the module functions below
# What Host.run gives back (named here so callers need not import subprocess).
CompletedProcess = subprocess.CompletedProcess
STATE_DIR = "/var/lib/k3s-agentd"
RUN_DIR = "/run/k3s-agentd"
BACKUPS_KEPT = 5
_SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every read is capped: config files the agent reads are a few KiB, and a root
# daemon must not spend seconds and hundreds of MiB on a planted 200 MB file.
READ_LIMIT = 1 << 20
PROC_LIMIT = 64 << 10  # /proc/sys values, comm, status: a page or two
_TEMP_SUFFIX = ".k3s-agentd.{pid}.tmp"
# Only names we make: "." + target name + ".k3s-agentd.<pid>.tmp".
_OUR_TEMP = re.compile(r"\..+\.k3s-agentd\.(\d+)\.tmp\Z", re.DOTALL)


class TooLarge(HostError):
    """A file is larger than the read cap: not read at all, never read in part."""

    def __init__(self, path: str, limit: int, size: Optional[int] = None):
        self.path, self.limit, self.size = path, limit, size
        seen = f"{_human(size)}, " if size is not None else ""
        super().__init__(f"{path}: larger than the {_human(limit)} read cap ({seen}not read)")


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


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

    def is_dir(self, absolute: str, follow: bool = False) -> bool:
        """A folder at this path (not a symlink to one unless `follow`)."""
        try:
            return stat.S_ISDIR(self.stat(absolute, follow).st_mode)
        except OSError:
            return False

    def is_file(self, absolute: str) -> bool:
        """A regular file at this path, a final symlink followed (as K3s and sshd would)."""
        try:
            return stat.S_ISREG(self.stat(absolute).st_mode)
        except OSError:
            return False

    def exists(self, absolute: str) -> bool:
        """Anything at this path, a dangling symlink included (nothing followed)."""
        return os.path.lexists(self.path(absolute))

    def stat(self, absolute: str, follow: bool = True) -> os.stat_result:
        """stat(2) of a host path (lstat(2) unless `follow`); OSError as the kernel says."""
        return os.stat(self.path(absolute), follow_symlinks=follow)

    def lstat(self, absolute: str) -> os.stat_result:
        return self.stat(absolute, follow=False)

    def readlink(self, absolute: str) -> str:
        """A symlink's target, as written (an absolute one means the host's path)."""
        return os.readlink(self.path(absolute))

    def listdir(self, absolute: str) -> list[str]:
        """Names in a folder, sorted; OSError (FileNotFoundError, NotADirectoryError) as listdir(2)."""
        return sorted(os.listdir(self.path(absolute)))

    def glob(self, folder: str, pattern: str = "*") -> list[str]:
        """Sorted names in a folder matching a one-component glob (glob(3): a wildcard does
        not match a leading dot); the folder is literal. Empty when it is missing."""
        found = glob.glob(os.path.join(glob.escape(self.path(folder)), pattern))
        return sorted(os.path.basename(p) for p in found)

    def glob_paths(self, pattern: str) -> list[str]:
        """Host-absolute paths matching an absolute glob (wildcards in any component), sorted."""
        prefix = "" if self.root == "/" else self.root.rstrip("/")
        return sorted(p[len(prefix) :] for p in glob.glob(glob.escape(prefix) + pattern))

    def read_bytes(self, absolute: str, limit: int = READ_LIMIT, follow: bool = False) -> Optional[bytes]:
        """Content of a regular file, None when missing; TooLarge beyond `limit` bytes.

        Never follows a final symlink unless `follow` (reading what K3s reads,
        which follows links; writes never do).
        """
        got = self.read_stat(absolute, limit, follow)
        return None if got is None else got[0]

    def read_stat(
        self, absolute: str, limit: int = READ_LIMIT, follow: bool = False
    ) -> Optional[tuple[bytes, os.stat_result]]:
        """As read_bytes, with the fstat of the file read (its owner and mode, not a later look's)."""
        # O_NONBLOCK: open(2) of a FIFO for reading blocks until a writer comes, so
        # a FIFO planted where we read (e.g. a user's ~/.ssh/authorized_keys) would
        # hang the agent; with it the open returns and the S_ISREG check refuses it.
        # O_NOCTTY: a tty must never become our controlling terminal.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(self.path(absolute), flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HostError(f"{absolute}: is a symlink, refusing to read through it") from exc
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise HostError(f"{absolute}: not a regular file")
            return read_fd(fd, absolute, limit), st
        finally:
            os.close(fd)

    def read_text(self, absolute: str, limit: int = READ_LIMIT, follow: bool = False) -> Optional[str]:
        data = self.read_bytes(absolute, limit, follow)
        return None if data is None else data.decode("utf-8", errors="replace")

    # -- walking without links (hostfs, LinkPolicy.REFUSE_ALL) ------------------

    def mounts(self) -> hostfs.MountTable:
        """The mount points of our mount namespace (this host's /proc/self/mountinfo, bounded)."""
        return hostfs.MountTable.read(self.root, self.proc_path("self/mountinfo"))

    def expand(self, pattern: str, mounts: Optional[hostfs.MountTable] = None) -> Iterator[hostfs.Entry]:
        """Existing paths matching an absolute glob, no link followed (hostfs.expand)."""
        return hostfs.expand(self.path("/"), pattern, mounts)

    def walk(self, top: hostfs.Entry, mounts: Optional[hostfs.MountTable] = None) -> Iterator[hostfs.Entry]:
        """Everything below a directory entry, capped, no link nor mount entered (hostfs.walk)."""
        return hostfs.walk(self.path("/"), top, mounts)

    def change(
        self,
        absolute: str,
        uid: int = -1,
        gid: int = -1,
        mode_for: Optional[hostfs.ModeFn] = None,
        mounts: Optional[hostfs.MountTable] = None,
    ) -> tuple[os.stat_result, os.stat_result]:
        """fchown/fchmod one file or directory reached without links; (before, after) (hostfs.change)."""
        if self.read_only:
            raise HostError(f"{absolute}: not changed, this is a read-only run")
        return hostfs.change(self.path("/"), absolute, uid, gid, mode_for, mounts)

    def read_no_links(self, absolute: str, limit: int = READ_LIMIT) -> tuple[bytes, os.stat_result]:
        """A regular file's first `limit` bytes and fstat, no symlink followed anywhere on
        its path (hostfs.read_file: LinkInPath, Refused, FileNotFoundError otherwise)."""
        return hostfs.read_file(self.path("/"), absolute, limit)

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
            _sweep_stale_temps(dfd)
            _replace(dfd, name, _BytesSource(data), mode, uid, gid)
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

    def ensure_dir(self, absolute: str, mode: int = 0o700, uid: int = 0, gid: int = 0) -> os.stat_result:
        """A directory, made with `mode` and owner when missing (its parents 0755 as in
        write_atomic); an existing one is left as it is. Returns its stat for the
        caller to judge. A symlink or non-directory in its place is refused."""
        if self.read_only:
            raise HostError(f"{absolute}: not created, this is a read-only run")
        if not absolute.startswith("/") or any(part in (".", "..") for part in absolute.split("/")):
            raise HostError(f"{absolute}: not a normalised absolute path, not created")
        parent, name = os.path.split(absolute.rstrip("/") or "/")
        dfd = self._open_parent(parent)
        try:
            if name and _lstat_at(name, dfd) is None:
                os.mkdir(name, mode, dir_fd=dfd)
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                os.chmod(name, mode, dir_fd=dfd)  # mkdir's mode is masked by the umask
                os.fsync(dfd)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False) if name else os.fstat(dfd)
        finally:
            os.close(dfd)
        if not stat.S_ISDIR(st.st_mode):
            raise HostError(f"{absolute}: exists and is not a directory")
        return st

    def rename(self, source: str, target: str) -> None:
        """rename(2) between two host paths (a folder swapped into place whole)."""
        if self.read_only:
            raise HostError(f"{source}: not renamed, this is a read-only run")
        os.rename(self.path(source), self.path(target))

    def remove_tree(self, absolute: str) -> None:
        """Remove a file, a link (never its target) or a folder with its content
        (shutil.rmtree, which follows no link); nothing when it is missing."""
        if self.read_only:
            raise HostError(f"{absolute}: not removed, this is a read-only run")
        real = self.path(absolute)
        if os.path.islink(real) or os.path.isfile(real):
            os.unlink(real)
        elif os.path.isdir(real):
            shutil.rmtree(real)

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
            if not flock_within(fd, timeout, poll=0.05):
                raise HostError(f"{absolute}: still locked after {timeout:g}s")
            yield
        finally:
            os.close(fd)  # releases the flock

    def _open_parent(self, absolute: str) -> int:
        """An fd for a host directory of the agent's own, made (0755) where missing
        (hostfs.open_dir, LinkPolicy.ROOT_PLACED: a link only root could have placed is followed)."""
        return hostfs.open_dir(self.root, absolute, LinkPolicy.ROOT_PLACED, create=True)

    def _backup(self, absolute: str, dfd: int, name: str) -> str:
        """Copy the current file to the backup dir (streamed: it may be any size)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        try:
            return self._backup_from(absolute, fd)
        finally:
            os.close(fd)

    def _backup_from(self, absolute: str, fd: int) -> str:
        st = os.fstat(fd)
        folder = os.path.join(self.state_dir, "backup", absolute.strip("/").replace("/", "%"))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
        dest = os.path.join(folder, stamp)
        bfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # A new, unique name: the copy appears complete or not at all.
            _create_complete(
                bfd, stamp, _FdSource(fd), stat.S_IMODE(st.st_mode) & 0o600, st.st_uid, st.st_gid
            )
        finally:
            os.close(bfd)
        for stale in sorted(os.listdir(folder))[:-BACKUPS_KEPT]:
            _unlink_quietly(os.path.join(folder, stale))
        return dest

    # -- /proc ---------------------------------------------------------------

    def proc_read(self, relative: str, limit: int = PROC_LIMIT) -> bytes:
        """A file of this host's proc mount (e.g. "1234/comm"), whole, at most `limit`
        bytes (TooLarge beyond); OSError when it is gone (the process exited)."""
        return read_capped(self.proc_path(relative), limit)

    def proc_pids(self) -> list[int]:
        """Pids listed in this host's proc mount (see proc_pids)."""
        return proc_pids(self.proc)

    def signal(self, pid: int, sig: int) -> None:
        """Send a signal to a process (sshd's SIGHUP reload); OSError as kill(2) says."""
        if self.read_only:
            raise HostError(f"pid {pid}: not signalled, this is a read-only run")
        os.kill(pid, sig)

    # -- network -----------------------------------------------------------

    def net_interfaces(self) -> list[str]:
        """Names of the network interfaces of the calling thread's network namespace.

        if_nameindex(3) asks the kernel over a socket, so the answer is the
        namespace this thread is in (a test's netns, the node's in the daemon);
        /sys/class/net would show the namespace sysfs was mounted in instead.
        Empty when the kernel does not answer.
        """
        try:
            return [name for _, name in socket.if_nameindex()]
        except OSError:
            return []

    # -- commands ----------------------------------------------------------

    def which(self, name: str) -> Optional[str]:
        return shutil.which(name, path=_SEARCH_PATH)

    def program_exists(self, path: str) -> bool:
        """A program at this real path (as `which` gives it, or configured), not under the root."""
        return os.path.exists(path)

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

    def run_capped(
        self, argv: Sequence[str], timeout: float = 5.0, limit: int = PROC_LIMIT
    ) -> tuple[int, bytes]:
        """Run a command whose output we do not trust to be small or to end: argv
        only, no stdin, stdout and stderr together, at most `limit` bytes kept (the
        rest ends the command), killed with its whole session after `timeout`
        seconds (a child holding the pipe open cannot hang us). HostError when it
        does not start or does not finish in time; else (exit code, output)."""
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise HostError(f"{argv[0]}: cannot run ({exc.strerror})") from exc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            output = _read_until(proc.stdout.fileno(), deadline, limit)
            if output is None:
                raise HostError(f"{' '.join(argv)}: no answer within {timeout:g}s")
            if len(output) >= limit:
                _kill_session(proc)  # it would block writing the rest, never exit
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise HostError(f"{' '.join(argv)}: did not exit within {timeout:g}s") from None
            return code, output
        finally:
            _kill_session(proc)
            proc.stdout.close()

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


@contextlib.contextmanager
def flocked(path: str, timeout: float) -> Iterator[bool]:
    """An exclusive flock on a lock file at a real path (another tool's, e.g. the xtables
    lock), created 0600 when missing, never through a final symlink. Yields whether
    the lock was taken within `timeout` seconds; released when the block ends."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        yield flock_within(fd, timeout)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A private (0700) temporary folder of the real /tmp, removed with its content
    afterwards: for files another program must read (sshd -t's candidate config)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield folder


@contextlib.contextmanager
def transient_dir(path: str, mode: int) -> Iterator[None]:
    """A folder at a real path for the length of the block, removed again if we made it
    (only root makes it; e.g. sshd's privilege-separation folder /run/sshd)."""
    created = False
    if os.geteuid() == 0:
        try:
            os.mkdir(path, mode)
            created = True
        except FileExistsError:
            pass
    try:
        yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def flock_within(fd: int, timeout: float, poll: float = 0.01) -> bool:
    """Take an exclusive flock on fd, waiting at most timeout seconds; False if still held.

    Polls with LOCK_NB: a blocking flock cannot be given a deadline, and a
    holder that hangs must cost us one failed cycle, not the loop."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)


def _read_until(fd: int, deadline: float, limit: int) -> Optional[bytes]:
    """Up to `limit` bytes from fd until EOF or `limit`; None when the deadline passes first."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _kill_session(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGKILL the command's session (it was started in its own) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def read_capped(path: str, limit: int = PROC_LIMIT) -> bytes:
    """A file outside any Host root (/proc of a pid, our own run dir), at most `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


def read_head(path: str, limit: int) -> bytes:
    """The first `limit` bytes of a file outside any Host root (another process's
    /proc/<pid>/environ): as read_capped, but the rest is dropped, not refused."""
    return hostfs.read_head(path, limit)[0]


def proc_writable(path: str) -> bool:
    """Whether we may write this /proc file (access(2): a read-only /proc/sys in a container says no)."""
    return os.access(path, os.W_OK)


def write_proc(path: str, text: str) -> None:
    """Write a value to a /proc file (a sysctl) in one write(2), as the kernel wants it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)  # TRUNC: as open("w")
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def proc_pids(proc: str = "/proc") -> list[int]:
    """Pids listed in a proc mount (read once; a process may exit right after)."""
    with os.scandir(proc) as entries:
        return [int(e.name) for e in entries if e.name.isdigit()]


def pid_namespace(pid: Union[int, str], proc: str = "/proc") -> Optional[str]:
    """The PID namespace a process is in ("pid:[4026531836]"), None when it cannot be read
    (gone, or not ours to inspect). pid "self" is this process."""
    try:
        return os.readlink(f"{proc}/{pid}/ns/pid")
    except OSError:
        return None


def systemd_booted() -> bool:
    """Whether systemd runs this machine (sd_booted(3): /run/systemd/system is a directory)."""
    return os.path.isdir("/run/systemd/system")


def journald_listening() -> bool:
    """Whether journald's native socket is there to log to."""
    return os.path.exists("/run/systemd/journal/socket")


# PROC_NET_INIT_INO (include/linux/proc_ns.h): the initial network namespace's
# fixed inode on current kernels; older ones number it dynamically, then only
# PID 1's link tells (not readable everywhere, e.g. in some sandboxes).
INIT_NET_INO = 0xEFFFFFF9


def in_initial_netns(proc: str = "/proc") -> bool:
    """Whether this thread is in the host's network namespace (True when it cannot tell).

    netfilter has no root prefix: a Host(root=tmpdir) run -- tests, benches,
    a dry run -- would change the real host's rules unless it runs in a
    network namespace of its own.
    """
    try:
        mine = os.stat(f"{proc}/thread-self/ns/net").st_ino
    except OSError:
        return True
    try:
        return mine == os.stat(f"{proc}/1/ns/net").st_ino
    except OSError:
        return mine == INIT_NET_INO


def read_fd(fd: int, path: str, limit: int = READ_LIMIT) -> bytes:
    """Read to the end, refusing beyond `limit` bytes (/proc files say size 0: the read decides)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise TooLarge(path, limit, size)
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, min(1 << 16, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise TooLarge(path, limit)


def _lstat_at(name: str, dfd: int) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _BytesSource:
    def __init__(self, data: bytes):
        self.data = data

    def write_to(self, fd: int) -> None:
        view = memoryview(self.data)
        while view:
            view = view[os.write(fd, view) :]


class _FdSource:
    """The content of an open file, copied in chunks (never whole in memory)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write_to(self, fd: int) -> None:
        os.lseek(self.fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return
            _BytesSource(chunk).write_to(fd)


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """The one writer of the agent's private files outside any Host root (status.json,
    metrics in the run dir, sshd's candidate config in a scratch dir): `path` is a real
    path. Atomic (O_TMPFILE, or an O_EXCL temp, then rename), fsynced, `mode` 0600 by
    default, our owner; no temp left by a crash. No link is followed: the folder is
    opened O_NOFOLLOW and a link at the name is replaced, never written through."""
    parent, name = os.path.split(path)
    dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _sweep_stale_temps(dfd)
        # The name earlier versions used for this file's temp: exactly ours, never anyone else's.
        _unlink_quietly(f"{name}.tmp", dfd)
        _replace(dfd, name, _BytesSource(data), mode, os.geteuid(), os.getegid())
    finally:
        os.close(dfd)


def _replace(dfd: int, name: str, source: Any, mode: int, uid: int, gid: int) -> None:
    """Write an unnamed file, give it our temp name, rename it over `name`, fsync the dir.

    With O_TMPFILE the content is written and fsynced before any name exists, so
    a kill -9 during the write leaves nothing; only the link-then-rename instant
    can leave a named temp, which the next write into the folder sweeps.
    """
    tmp = "." + name + _TEMP_SUFFIX.format(pid=os.getpid())
    _create_complete(dfd, tmp, source, mode, uid, gid)
    try:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _unlink_quietly(tmp, dfd)
        raise
    os.fsync(dfd)


def _create_complete(dfd: int, name: str, source: Any, mode: int, uid: int, gid: int) -> None:
    """Create `name` (which must not exist) in dfd with the full content, owner and mode."""
    fd, named = _open_new(dfd, name)
    try:
        source.write_to(fd)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
        if not named:
            # linkat(2) of an O_TMPFILE through /proc/self/fd with AT_SYMLINK_FOLLOW:
            # the documented way without CAP_DAC_READ_SEARCH (AT_EMPTY_PATH needs it); open(2).
            _link(fd, dfd, name)
    except BaseException:
        os.close(fd)
        if named:
            _unlink_quietly(name, dfd)
        raise
    os.close(fd)


def _link(fd: int, dfd: int, name: str) -> None:
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
    except FileExistsError:  # our own temp name, left by an earlier process with our pid
        _unlink_quietly(name, dfd)
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)


def _open_new(dfd: int, name: str) -> tuple[int, bool]:
    """(fd, named): an unnamed file in dfd, or `name` itself where O_TMPFILE is missing."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(".", os.O_WRONLY | tmpfile | os.O_CLOEXEC, 0o600, dir_fd=dfd), False
        except OSError as exc:
            # A filesystem without O_TMPFILE says EOPNOTSUPP (old kernels: EISDIR).
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    _unlink_quietly(name, dfd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, 0o600, dir_fd=dfd), True


def sweep_stale_temps(paths: Sequence[str]) -> None:
    """At start: our stale temps in these folders (or a file's folder) go, whatever else fails.

    write_atomic sweeps a folder each time it writes there; this covers folders
    a compliant node never writes to again (temps of an agent killed before).
    """
    folders = {p if os.path.isdir(p) else os.path.dirname(p) for p in paths}
    for folder in sorted(folders):
        try:
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            _sweep_stale_temps(dfd)
        except OSError:
            pass  # a folder we cannot list has nothing of ours to sweep
        finally:
            os.close(dfd)


def _sweep_stale_temps(dfd: int) -> None:
    """Remove temps a killed agent left in this folder: our exact name pattern, a dead pid, a regular file."""
    for entry in os.listdir(dfd):
        match = _OUR_TEMP.match(entry)
        if match is None or not _pid_gone(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mode):
                os.unlink(entry, dir_fd=dfd)


def _pid_gone(pid: int) -> bool:
    # A live pid keeps its temp: another agent (a one-shot apply) or another of
    # our threads may be writing it right now.
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _unlink_quietly(name: str, dfd: Optional[int] = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)
