"""A faithful K3s node for tests (see layout.py and the k3s program next to this file).

    node = K3sNode(root, role="server")      # lays down the files
    with node.start() as proc:               # a process whose cmdline reads
        proc.pid, proc.log_lines()           # "/usr/local/bin/k3s server", comm k3s-server
                                             # (role="agent": "... agent", comm k3s-agent)

Inside a booted node (nspawn e2e) run install.sh there instead and start
k3s.service (k3s-agent.service for the agent role): the unit runs the same
program, its log goes to journald.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from . import layout

HERE = Path(__file__).resolve().parent

DATA_DIR = layout.DATA_DIR
HASH = layout.HASH
HARDENED_CONFIG = layout.HARDENED_CONFIG
INSTALL_SH = HERE / "install.sh"
encryption_config = layout.encryption_config


class K3sProcess:
    def __init__(self, popen: subprocess.Popen, log: Path):
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def wait_running(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # "k3s is up and running" (server), "k3s agent is up and running" (agent-only node)
            if any("is up and running" in line for line in self.log_lines()):
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"k3s fixture exited {self.popen.returncode}: {self.log_lines()}")
            time.sleep(0.02)
        raise TimeoutError("k3s fixture did not start")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def __enter__(self) -> K3sProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class K3sNode:
    def __init__(
        self,
        root: Path,
        role: str = "server",
        config: Optional[str] = None,
        exec_flags: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        fixture: Optional[dict[str, object]] = None,
    ):
        self.root = Path(root)
        self.role = role
        self.exec_flags = list(exec_flags)
        self.env = env
        layout.install(str(self.root), role, config, self.exec_flags, env, fixture)

    @property
    def unit(self) -> str:
        return "k3s.service" if self.role == "server" else "k3s-agent.service"

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def write_config(self, text: str, name: Optional[str] = None) -> None:
        target = self.path(
            "/etc/rancher/k3s/config.yaml" if name is None else f"/etc/rancher/k3s/config.yaml.d/{name}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def unit_env(self) -> dict[str, str]:
        """The unit's env file (`KEY='value'` lines, as layout.py writes them): what
        systemd's EnvironmentFile= hands K3s, e.g. an agent's K3S_URL and K3S_TOKEN."""
        path = self.path(f"/etc/systemd/system/{self.unit}.env")
        lines = path.read_text().splitlines() if path.exists() else []
        pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        return {key.strip(): value.strip().strip("'\"") for key, value in pairs}

    def start(self, extra_env: Optional[dict[str, str]] = None) -> K3sProcess:
        log = self.root / f"k3s-fixture-{time.monotonic_ns()}.log"
        env = dict(os.environ, K3S_FIXTURE_ROOT=str(self.root), **self.unit_env())
        env.update(self.env or {}, **(extra_env or {}))
        env.pop("NOTIFY_SOCKET", None)
        argv = [str(self.path("/usr/local/bin/k3s")), self.role, *self.exec_flags]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )
        proc = K3sProcess(popen, log)
        proc.wait_running()
        return proc
