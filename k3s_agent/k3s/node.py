"""One observation of the K3s on this node, shared by the k3s_args and
k3s_encryption controls: the service, its configured arguments, and the
arguments its components really run with."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from k3s_agent.host import Host, HostError
from k3s_agent.k3s import etcd, kubelet
from k3s_agent.k3s.args import Args, configured_component_args
from k3s_agent.k3s.config import ConfigError, Configured, configured
from k3s_agent.k3s.discovery import K3sService, ScanFn, ShowFn, discover, scan_processes, systemctl_show
from k3s_agent.k3s.facts import DEFAULT_DATA_DIR, data_dir
from k3s_agent.k3s.journal import RunningArgs, RunningArgsReader


@dataclasses.dataclass(frozen=True)
class K3sNode:
    service: K3sService
    configured: Optional[Configured]
    config_error: str
    running: Optional[RunningArgs]
    kubelet_config: dict[str, Any]
    problems: tuple[str, ...]
    # Embedded etcd's config file (servers only); None: none here (SQLite/kine, external DB).
    etcd_config: Optional[etcd.EtcdConfig] = None

    @property
    def data_dir(self) -> str:
        return data_dir(self.configured) if self.configured else DEFAULT_DATA_DIR

    def configured_args(self, component: str) -> Optional[Args]:
        if self.configured is None:
            return None
        return configured_component_args(component, self.configured.flags)

    def running_args(self, component: str) -> Optional[Args]:
        """Flags of the component's last Running line, plus (kubelet) its config drop-ins."""
        if self.running is None:
            return None
        args = self.running.get(component)
        if args is None:
            return None
        if component != "kubelet" or not self.kubelet_config:
            return args
        merged = dict(args)
        for flag in kubelet.FLAG_FIELDS:
            if flag not in merged:
                value = kubelet.flag_from_config(self.kubelet_config, flag)
                if value is not None:
                    merged[flag] = value
        return merged


class Observer:
    """Observes K3s; keeps the journal reader's progress between cycles."""

    def __init__(
        self,
        host: Host,
        reader: Optional[RunningArgsReader] = None,
        show: ShowFn = systemctl_show,
        scan: ScanFn = scan_processes,
    ):
        self.host = host
        self.reader = reader or RunningArgsReader(host)
        self.show = show
        self.scan = scan

    def observe(self) -> K3sNode:
        service = discover(self.host, self.show, self.scan)
        problems = list(service.unit.problems) if service.unit else []
        conf: Optional[Configured] = None
        error = ""
        if service.unit is not None:
            try:
                conf = configured(self.host, service.unit.exec_start, service.unit.environment)
            except (ConfigError, HostError, OSError) as exc:
                error = str(exc)
        running = None
        if service.running and service.unit_name:
            running = self.reader.read(service.unit_name, service.invocation_id, service.started_at)
        node = K3sNode(service, conf, error, running, {}, tuple(problems))
        dropins, dropin_problems = kubelet.read_dropins(self.host, node.data_dir)
        etcd_config = etcd.read_config(self.host, node.data_dir) if service.role == "server" else None
        return dataclasses.replace(
            node, kubelet_config=dropins, problems=(*problems, *dropin_problems), etcd_config=etcd_config
        )
