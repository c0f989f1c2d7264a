"""Find K3s on this node: its unit, its main process, its role and its start.

K3s runs as k3s.service (`k3s server`) or k3s-agent.service (`k3s agent`),
units written by the install script to /etc/systemd/system (docs.k3s.io,
installation). /usr/local/bin/k3s re-execs <data-dir>/data/<hash>/bin/k3s-server
(or k3s-agent) in the same PID and then overwrites its argv (gspt.SetProcTitle
in cmd/k3s/main.go), so the process has comm "k3s-server" and a cmdline of
"/usr/local/bin/k3s server", possibly NUL-padded: compare whitespace-split
words, never the raw cmdline.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import psutil

from k3s_agent.host import READ_LIMIT, Host, HostError, pid_namespace, proc_pids, read_capped, systemd_booted
from k3s_agent.k3s.unit import UnitFile, load_unit

UNITS = {"server": "k3s.service", "agent": "k3s-agent.service"}
COMMS = {"k3s-server": "server", "k3s-agent": "agent"}
BINARY = "/usr/local/bin/k3s"
SHOW_PROPERTIES = ("LoadState", "ActiveState", "SubState", "MainPID", "InvocationID", "FragmentPath")


@dataclasses.dataclass(frozen=True)
class K3sProcess:
    pid: int
    comm: str
    cmdline: tuple[str, ...]
    started_at: float  # epoch seconds


@dataclasses.dataclass(frozen=True)
class K3sService:
    role: Optional[str]  # server / agent / None (not installed)
    unit_name: Optional[str]
    unit: Optional[UnitFile]
    state: dict[str, str]  # systemctl show properties ({} when systemd is not running)
    process: Optional[K3sProcess]
    binary: Optional[str]

    @property
    def installed(self) -> bool:
        return self.unit is not None or self.binary is not None or self.process is not None

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def invocation_id(self) -> Optional[str]:
        return self.state.get("InvocationID") or None

    @property
    def started_at(self) -> Optional[float]:
        return self.process.started_at if self.process else None

    @property
    def under_unit(self) -> Optional[bool]:
        """Is the running process the unit's main PID? None when systemd cannot say."""
        if not self.process or not self.state:
            return None
        return self.state.get("MainPID") == str(self.process.pid)


ShowFn = Callable[[Host, str], dict[str, str]]
ScanFn = Callable[[], list[K3sProcess]]


def systemctl_show(host: Host, unit: str) -> dict[str, str]:
    """`systemctl show` of the unit, {} when systemd is not the running init here."""
    if host.root != "/" or not systemd_booted():
        return {}
    try:
        done = host.run(["systemctl", "show", unit, "--property=" + ",".join(SHOW_PROPERTIES)], timeout=10)
    except HostError:
        return {}
    if done.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def scan_processes() -> list[K3sProcess]:
    """K3s processes, found by comm. Reads /proc/<pid>/comm directly: a psutil
    process_iter() costs ~30 ms per cycle on a busy node, this ~1 ms.

    This is the fallback when systemd cannot name K3s's main PID, and any user
    can start a process named k3s-server: only root's count (real and
    effective uid 0), so a look-alike cannot stand in for K3s in the report.
    (Rootless K3s is not supported by this scan.) A K3s in another PID namespace
    is a container's (k3d, K3s in Docker, a systemd-nspawn machine), not this
    node's: only K3s in the agent's own PID namespace counts (systemd services
    share the host's; containers get their own)."""
    found = []
    ours = pid_namespace("self")
    for pid in proc_pids():
        try:
            comm = read_capped(f"/proc/{pid}/comm").strip().decode(errors="replace")
        except (OSError, HostError):
            continue
        if comm in COMMS and _runs_as_root(pid) and _in_namespace(pid, ours):
            process = process_by_pid(pid)
            if process is not None:
                found.append(process)
    return found


def _in_namespace(pid: int, ours: Optional[str]) -> bool:
    """In the PID namespace `ours` (unknown on either side: counted, as before)."""
    theirs = pid_namespace(pid)
    return ours is None or theirs is None or theirs == ours


def _runs_as_root(pid: int) -> bool:
    """Real and effective uid 0, from /proc/<pid>/status (the owner of /proc/<pid>
    is not enough: a non-dumpable process's entry is root-owned whoever runs it)."""
    try:
        for line in read_capped(f"/proc/{pid}/status").splitlines():
            if line.startswith(b"Uid:"):
                real, effective = line.split()[1:3]
                return real == effective == b"0"
    except (OSError, HostError, ValueError):
        pass
    return False


def _describe(proc: psutil.Process) -> K3sProcess:
    # A command line can be up to ARG_MAX (2 MiB by default); K3s's is a few hundred bytes.
    raw = read_capped(f"/proc/{proc.pid}/cmdline", READ_LIMIT)
    words = tuple(raw.replace(b"\0", b" ").decode("utf-8", errors="replace").split())
    return K3sProcess(proc.pid, proc.name(), words, proc.create_time())


def process_by_pid(pid: int) -> Optional[K3sProcess]:
    try:
        return _describe(psutil.Process(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError, HostError):
        return None


def discover(host: Host, show: ShowFn = systemctl_show, scan: ScanFn = scan_processes) -> K3sService:
    units = {role: load_unit(host, name) for role, name in UNITS.items()}
    states = {role: show(host, UNITS[role]) for role, unit in units.items() if unit is not None}
    # Prefer the unit whose main process is alive, then a server unit over an agent one.
    process: Optional[K3sProcess] = None
    role: Optional[str] = None
    for candidate in ("server", "agent"):
        pid = states.get(candidate, {}).get("MainPID", "0")
        if pid.isdigit() and int(pid) > 0:
            process = process_by_pid(int(pid))
            if process and process.comm in COMMS:
                role = candidate
                break
            process = None
    if process is None:
        for found in scan():
            if len(found.cmdline) >= 2 and found.cmdline[1] in ("server", "agent"):
                process, role = found, COMMS[found.comm]
                break
    if role is None:
        role = next((r for r in ("server", "agent") if units[r] is not None), None)
    unit = units.get(role) if role else None
    unit_role = unit.role if unit else None
    return K3sService(
        role=unit_role if (unit_role and not process) else role,
        unit_name=UNITS[role] if role else None,
        unit=unit,
        state=states.get(role, {}) if role else {},
        process=process,
        binary=BINARY if _exists(host, BINARY) else None,
    )


def _exists(host: Host, path: str) -> bool:
    return host.exists(path)
