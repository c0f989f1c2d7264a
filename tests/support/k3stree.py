"""A K3s data dir with the real layout, under a temporary root.

Names follow what a K3s v1.30 server writes (k3s-io/k3s pkg/daemons/control/
deps/deps.go for server/tls and server/cred, pkg/agent/config/config.go for
agent/); contents are placeholders. Modes are K3s's own defaults (0600 keys and
kubeconfigs, 0644 certificates) unless a caller loosens them.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = "var/lib/rancher/k3s"

SERVER_TLS = [
    "client-admin",
    "client-auth-proxy",
    "client-ca",
    "client-controller",
    "client-k3s-cloud-controller",
    "client-k3s-controller",
    "client-kube-apiserver",
    "client-kube-proxy",
    "client-scheduler",
    "client-supervisor",
    "request-header-ca",
    "server-ca",
    "serving-kube-apiserver",
]
SERVER_TLS_KEYS_ONLY = ["client-kubelet", "serving-kubelet", "service", "service.current"]
ETCD_TLS = ["client", "peer-ca", "peer-server-client", "server-ca", "server-client"]
CRED = [
    "admin.kubeconfig",
    "api-server.kubeconfig",
    "cloud-controller.kubeconfig",
    "controller.kubeconfig",
    "scheduler.kubeconfig",
    "supervisor.kubeconfig",
    "ipsec.psk",
    "passwd",
    "encryption-config.json",
    "encryption-state.json",
]
AGENT_TLS = [
    "client-k3s-controller",
    "client-kube-proxy",
    "client-kubelet",
    "serving-kubelet",
]
AGENT_FILES = {
    "client-ca.crt": 0o644,
    "server-ca.crt": 0o644,
    "kubelet.kubeconfig": 0o600,
    "kubeproxy.kubeconfig": 0o600,
    "k3scontroller.kubeconfig": 0o600,
    "etc/crictl.yaml": 0o600,
    "etc/containerd/config.toml": 0o600,
    "etc/flannel/net-conf.json": 0o600,
}


def _put(path: Path, mode: int, data: str = "x\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.chmod(path, mode)


def populate(root: Path, temporary_certs: int = 4, manifests: int = 2) -> Path:
    """Write a server + agent data dir; returns the data dir. Extra files scale the size."""
    data = root / DATA
    tls = data / "server/tls"
    for name in SERVER_TLS:
        _put(tls / f"{name}.crt", 0o644)
        _put(tls / f"{name}.key", 0o600)
    for name in SERVER_TLS_KEYS_ONLY:
        _put(tls / f"{name}.key", 0o600)
    _put(tls / "client-ca.nochain.crt", 0o644)
    _put(tls / "server-ca.nochain.crt", 0o644)
    _put(tls / "dynamic-cert.json", 0o600)
    for name in ETCD_TLS:
        _put(tls / "etcd" / f"{name}.crt", 0o644)
        _put(tls / "etcd" / f"{name}.key", 0o600)
    for index in range(temporary_certs):
        stem = tls / "temporary-certs" / f"apiserver-loopback-client__{index}"
        _put(stem.with_suffix(".crt"), 0o644)
        _put(stem.with_suffix(".key"), 0o600)
    for name in CRED:
        _put(data / "server/cred" / name, 0o600)
    _put(data / "server/token", 0o600)
    os.symlink("/var/lib/rancher/k3s/server/token", data / "server/node-token")
    (data / "server/db/etcd").mkdir(parents=True)
    os.chmod(data / "server/db/etcd", 0o700)
    for name in AGENT_TLS:
        _put(data / "agent" / f"{name}.crt", 0o644)
        _put(data / "agent" / f"{name}.key", 0o600)
    for rel, mode in AGENT_FILES.items():
        _put(data / "agent" / rel, mode)
    for index in range(manifests):
        _put(data / "agent/pod-manifests" / f"manifest-{index}.yaml", 0o644)
    _put(root / "etc/rancher/k3s/k3s.yaml", 0o600)
    _put(root / "etc/systemd/system/k3s.service.env", 0o600, "K3S_TOKEN=secret\n")
    _put(root / "var/lib/cni/networks/cbr0/10.42.0.2", 0o600)
    _put(root / "var/lib/cni/networks/cbr0/lock", 0o600)
    return data


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))
