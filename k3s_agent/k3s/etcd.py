"""Embedded etcd's configuration, as K3s writes it for etcd to read.

A K3s server with embedded etcd (`cluster-init`, or joined to such a server)
writes etcd's whole configuration to <data-dir>/server/db/etcd/config at every
start and starts etcd from it (k3s-io/k3s pkg/daemons/executor: ETCDConfig
ToConfigFile, `yaml.Marshal` of the config plus any `--etcd-arg`, mode 0600;
embed.ConfigFromFile). So the file is what etcd runs with, and the CIS etcd
checks 2.1-2.7 are audited on it (aquasecurity/kube-bench cfg/k3s-cis-1.8/
etcd.yaml: `audit_config: "cat $etcdconf"`, paths like
`{.client-transport-security.client-cert-auth}`; k3s-io/docs
docs/security/self-assessment-1.12.md shows the file of a hardened server).

A server on SQLite/kine or an external datastore has no such file: the etcd
checks do not apply there ("If running on with sqlite or a external DB, etcd
checks are Not Applicable", kube-bench's remediation text).

The agent only reads this file: K3s rewrites it at each start, so an edit
would be lost and the fix is in K3s's own configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import yaml

from k3s_agent.host import Host, HostError
from k3s_agent.k3s import yamlcap
from k3s_agent.k3s.config import go_string

COMPONENT = "etcd"
CONFIG = "server/db/etcd/config"
# The file is a few dozen lines; anything much bigger is not K3s's.
READ_LIMIT = 256 << 10
# etcd's own defaults for what the checks read (etcd.io/docs/v3.5/op-guide/configuration:
# --client-cert-auth, --auto-tls, --peer-client-cert-auth, --peer-auto-tls "default: false").
DEFAULTS = {
    "client-transport-security.client-cert-auth": "false",
    "client-transport-security.auto-tls": "false",
    "peer-transport-security.client-cert-auth": "false",
    "peer-transport-security.auto-tls": "false",
}


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    """The etcd config file of this node: `data` None with `error` when unreadable."""

    path: str
    data: Optional[Mapping[str, Any]]
    error: str = ""

    def values(self, field: str) -> Optional[list[str]]:
        """A dotted field ("peer-transport-security.cert-file") as flag text, None when unset."""
        node: Any = self.data
        for part in field.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if node is None or node == "":
            return None  # K3s marshals an unset string field as ""
        return [go_string(node)]


def config_path(data_dir: str) -> str:
    return f"{data_dir.rstrip('/')}/{CONFIG}"


def read_config(host: Host, data_dir: str) -> Optional[EtcdConfig]:
    """The node's etcd config; None when there is none (no embedded etcd here)."""
    path = config_path(data_dir)
    try:
        text = host.read_text(path, limit=READ_LIMIT)
    except (HostError, OSError) as exc:
        message = str(exc)
        return EtcdConfig(path, None, message if message.startswith(path) else f"{path}: {message}")
    if text is None:
        return None
    try:
        data = yamlcap.safe_load(text)
    except yaml.YAMLError as exc:
        return EtcdConfig(path, None, f"{path}: not valid YAML: {exc}")
    if not isinstance(data, Mapping):
        return EtcdConfig(path, None, f"{path}: not a YAML mapping")
    return EtcdConfig(path, data)


def default(field: str) -> Optional[str]:
    """What etcd runs with when the file leaves `field` out (None: not modelled)."""
    return DEFAULTS.get(field)
