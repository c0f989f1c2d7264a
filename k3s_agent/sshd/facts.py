"""Facts about the host's sshd: its effective config and the TCP ports it listens on.

- `sshd -T` (sshd(8) -T: the effective config) through `Answers`, a cache
  each caller owns: nothing is shared between controls behind their back.
- the ports sshd really listens on: `sshd -T`'s Port/ListenAddress, the
  listening sockets owned by an sshd process (psutil) and the ListenStream=
  ports of an enabled ssh.socket/sshd.socket. Each can miss one (a
  socket-activated sshd has no listening sshd process and systemd, not
  sshd_config, says where it listens; `sshd -T` cannot see a port given
  with -p), so a caller takes the union.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Optional

import psutil

from k3s_agent.host import CompletedProcess, Host, HostError, proc_pids, read_capped, transient_dir
from k3s_agent.k3s.unit import UNIT_DIRS, parse_ini
from k3s_agent.sshd.config import parse_effective

MAIN_CONFIG = "/etc/ssh/sshd_config"
CONFIG_DIR = "/etc/ssh/sshd_config.d"
# Compiled into sshd (_PATH_PRIVSEP_CHROOT_DIR); `sshd -t` and `-T` refuse to
# run without it. Debian's unit creates it (RuntimeDirectory=sshd) and its init
# script's check_config does the same mkdir before `sshd -t`.
PRIVSEP_DIR = "/run/sshd"
ANSWER_TTL = 300.0  # seconds; a safety net for Include files outside sshd_config.d
ANSWERS_KEPT = 8  # per cache: a control asks a handful of distinct questions

SOCKET_UNITS = ("ssh.socket", "sshd.socket")  # Debian/Ubuntu, Fedora/Arch
# Generators write units and drop-ins here (Ubuntu's sshd-socket-generator
# turns sshd_config's Port/ListenAddress into ssh.socket.d/addresses.conf);
# systemd.generator(7): generator.early > /etc > generator > /run > ... > generator.late.
_SOCKET_DIRS = (
    "/run/systemd/generator.early",
    *UNIT_DIRS[:1],
    "/run/systemd/generator",
    *UNIT_DIRS[1:],
    "/run/systemd/generator.late",
)
_WANTS = ("/etc/systemd/system/sockets.target.wants", "/usr/lib/systemd/system/sockets.target.wants")

Answer = CompletedProcess  # of str, as Host.run gives it


# -- sshd -T ------------------------------------------------------------------------------


@contextlib.contextmanager
def privsep_dir() -> Iterator[None]:
    """/run/sshd for the length of one sshd -t/-T call, removed again if we made it.

    sshd refuses -t/-T without it; the ssh unit creates it when sshd starts, so
    a node where it is missing runs no sshd, and a read-only check must leave
    the host as it found it.
    """
    with transient_dir(PRIVSEP_DIR, 0o755):
        yield


class Answers:
    """`sshd <args>` (e.g. -T) answers, each kept while sshd's binary and config files are unchanged.

    sshd -T costs ~13 ms a call and a control asks every cycle. Each caller
    holds its own cache (the sshd control one, the firewall another), so no
    module-global state ties two controls together. Keyed by the host root,
    the binary's and the config files' stat, a TTL window and the arguments;
    bounded: at most `limit` answers, the least recently used dropped first.
    """

    def __init__(self, host: Host, limit: int = ANSWERS_KEPT, ttl: float = ANSWER_TTL) -> None:
        self.host = host
        self.limit = limit
        self.ttl = ttl
        self._kept: OrderedDict[tuple[object, ...], Answer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, sshd: str, args: Sequence[str]) -> Optional[Answer]:
        """sshd's answer to `args`, run now or kept from before; None when sshd cannot be run."""
        key = (*self._fingerprint(sshd), *args)
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        try:
            with privsep_dir():
                answer = self.host.run([sshd, *args], timeout=20)
        except HostError:
            return None
        self._kept[key] = answer
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)
        return answer

    def _fingerprint(self, sshd: str) -> tuple[object, ...]:
        """What `sshd -T`'s answer depends on: the binary and the config files' stat."""
        marks: list[object] = [self.host.root, int(time.monotonic() // self.ttl)]
        try:  # the binary is a real path (as `which` gives it), not under the host root
            st = Host().lstat(sshd)
            marks.append((sshd, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            marks.append((sshd, None))
        paths = [MAIN_CONFIG]
        with contextlib.suppress(OSError):
            paths += [f"{CONFIG_DIR}/{n}" for n in self.host.listdir(CONFIG_DIR)]
        for path in paths:
            try:
                st = self.host.lstat(path)
                marks.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                marks.append((path, None))
        return tuple(marks)


# -- where sshd listens ---------------------------------------------------------------------


def sshd_config_ports(host: Host, answers: Optional[Answers] = None) -> list[int]:
    """Ports from `sshd -T` (empty when sshd is missing or its config does not parse)."""
    sshd = host.which("sshd")
    if sshd is None:
        return []
    argv = ["-T"] + (["-f", host.path(MAIN_CONFIG)] if host.root != "/" else [])
    result = (answers or Answers(host)).get(sshd, argv)
    if result is None or result.returncode != 0:
        return []
    effective = parse_effective(result.stdout)
    ports = {int(p) for p in effective.get("port", []) if p.isdigit()}
    ports.update(p for p in map(listen_address_port, effective.get("listenaddress", [])) if p)
    return sorted(ports)


def listen_address_port(value: str) -> int:
    """The port of one `sshd -T` listenaddress value; 0 if none.

    "[::]:2222" or "10.0.0.1:2222", then " rdomain NAME" when one is set
    (OpenSSH servconf.c, format_listen_addrs): a port at the very end only
    would miss a ListenAddress with an rdomain.
    """
    match = re.match(r"\S*:(\d+)(?:\s|$)", value)
    return int(match.group(1)) if match else 0


def sshd_listening_ports(proc: str = "/proc") -> list[int]:
    """TCP ports an sshd process listens on (in the network namespace of that sshd).

    Only sshd processes' own sockets are mapped: psutil.net_connections()
    resolves every descriptor of every process, which grows with the
    containers on a node; reading each process's comm grows only with their count.
    """
    ports = set()
    for pid in proc_pids(proc):
        try:
            name = read_capped(f"{proc}/{pid}/comm").decode(errors="replace").strip()
            if name != "sshd" and not name.startswith("sshd:"):
                continue
            connections = psutil.Process(pid).connections(kind="tcp")
        except (OSError, HostError, psutil.Error):
            continue  # gone meanwhile, or not ours to read
        ports.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    return sorted(ports)


def socket_unit_ports(host: Host) -> list[int]:
    """TCP ports of an enabled ssh.socket/sshd.socket (ListenStream=, drop-ins applied).

    systemd.socket(5): ListenStream= is a port, ADDRESS:PORT or [V6]:PORT (a
    path or @name is a UNIX socket); an empty value resets the list. Drop-ins
    apply in file-name order, the first directory of the load path winning a name.
    """
    ports: set[int] = set()
    for unit in SOCKET_UNITS:
        if not any(host.exists(f"{wants}/{unit}") for wants in _WANTS):
            continue  # installed but not enabled: systemd does not listen for it
        listen: list[str] = []
        for path in _unit_files(host, unit):
            try:
                text = host.read_text(path) or ""
            except (HostError, OSError):
                continue  # masked (a link to /dev/null) or unreadable
            for section, key, value in parse_ini(text):
                if section == "Socket" and key == "ListenStream":
                    listen = [] if not value else [*listen, value]
        ports.update(p for p in map(_stream_port, listen) if p)
    return sorted(ports)


def _stream_port(value: str) -> int:
    """The TCP port of one ListenStream= value; 0 for a UNIX or vsock socket."""
    match = re.fullmatch(r"(?:.*:)?(\d{1,5})", value)
    if value.startswith(("/", "@", "vsock:")) or not match:
        return 0
    port = int(match.group(1))
    return port if 1 <= port <= 65535 else 0


def _unit_files(host: Host, unit: str) -> list[str]:
    """The unit's fragment (first in the load path), then its drop-ins in file-name order."""
    fragment = next((f"{d}/{unit}" for d in _SOCKET_DIRS if host.exists(f"{d}/{unit}")), None)
    dropins: dict[str, str] = {}
    for folder in _SOCKET_DIRS:
        for name in host.glob(f"{folder}/{unit}.d", "*.conf"):
            dropins.setdefault(name, f"{folder}/{unit}.d/{name}")
    return ([fragment] if fragment else []) + [dropins[name] for name in sorted(dropins)]
