"""kubelet settings K3s writes to a config drop-in directory instead of flags.

From K3s 1.32 (k3s-io/k3s pkg/daemons/agent: kubelet config file) many kubelet
settings live in <data-dir>/agent/etc/kubelet.conf.d/*.conf (KubeletConfiguration
YAML) and the Running kubelet line carries only --config-dir. Kubelet merges the
drop-ins in file-name order, later files overriding earlier ones, and command-line
flags override them all (kubernetes.io/docs/tasks/administer-cluster/kubelet-config-file,
"kubelet configuration merging order").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import yaml

from k3s_agent.host import Host, HostError
from k3s_agent.k3s import yamlcap
from k3s_agent.k3s.config import go_string

DROPIN_DIR = "agent/etc/kubelet.conf.d"
# kubelet flag -> KubeletConfiguration field path (k8s.io/kubelet/config/v1beta1).
FLAG_FIELDS = {
    "protect-kernel-defaults": "protectKernelDefaults",
    "streaming-connection-idle-timeout": "streamingConnectionIdleTimeout",
    "read-only-port": "readOnlyPort",
    "make-iptables-util-chains": "makeIPTablesUtilChains",
    "tls-cipher-suites": "tlsCipherSuites",
    "tls-min-version": "tlsMinVersion",
    "tls-cert-file": "tlsCertFile",
    "tls-private-key-file": "tlsPrivateKeyFile",
    "anonymous-auth": "authentication.anonymous.enabled",
    "authentication-token-webhook": "authentication.webhook.enabled",
    "client-ca-file": "authentication.x509.clientCAFile",
    "authorization-mode": "authorization.mode",
    "event-qps": "eventRecordQPS",
    "rotate-certificates": "rotateCertificates",
    "pod-max-pids": "podPidsLimit",
    "healthz-bind-address": "healthzBindAddress",
    "address": "address",
    "cgroup-driver": "cgroupDriver",
    "fail-swap-on": "failSwapOn",
    "feature-gates": "featureGates",
}


def read_dropins(host: Host, data_dir: str) -> tuple[dict[str, Any], list[str]]:
    """(merged config, problems) of every *.conf in the drop-in dir, in name order."""
    folder = f"{data_dir.rstrip('/')}/{DROPIN_DIR}"
    merged: dict[str, Any] = {}
    problems = []
    for name in host.glob(folder, "*.conf"):
        path = f"{folder}/{name}"
        try:
            data = yamlcap.safe_load(host.read_text(path) or "") or {}
        except HostError as exc:  # its message starts with the path
            problems.append(str(exc))
            continue
        except yaml.YAMLError as exc:
            problems.append(f"{path}: {exc}")
            continue
        if isinstance(data, dict):
            _deep_merge(merged, data)
    return merged, problems


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def flag_from_config(config: Mapping[str, Any], flag: str) -> Optional[list[str]]:
    """The value a kubelet flag takes from the merged config, as flag text."""
    path = FLAG_FIELDS.get(flag)
    if path is None:
        return None
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [",".join(go_string(v) for v in node)]
    if isinstance(node, Mapping):  # featureGates: {Name: bool} -> the flag's "Name=bool,..."
        return [",".join(f"{k}={go_string(v)}" for k, v in node.items())]
    return [go_string(node)]
