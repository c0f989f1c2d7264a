#!/usr/bin/env python3
"""Lay down a K3s node's files under ROOT, as the install script and K3s leave them.

Usage: layout.py ROOT [server|agent]   (install.sh wraps this)

Sources: the unit and env file are what get.k3s.io writes (install.sh
create_systemd_service_file / create_env_file: EnvironmentFile lines for
/etc/default/%N, /etc/sysconfig/%N and /etc/systemd/system/<unit>.env, 0600
env file); the data-dir layout and modes are those of a running K3s
(K3s CIS self-assessment guide file checks; pkg/daemons/control/deps).
Certificates and keys are PEM-shaped random bytes: nothing here parses them.

Role agent (`k3s agent`, an agent-only node): k3s-agent.service and its env
file with K3S_URL/K3S_TOKEN, the agent's part of the data dir only (no
server/, no /etc/rancher/k3s/k3s.yaml: the server writes those), kubeconfigs
through the agent's load balancer.
"""

import base64
import hashlib
import json
import os
import shutil
import sys

DATA_DIR = "/var/lib/rancher/k3s"
HASH = "9f2f4b5c0a1d7e3f6b8c2d4e1a5f7b9c0d2e4f6a8b1c3d5e7f9a0b2c4d6e8f01"
CIPHERS = ",".join(
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    )
)
HARDENED_CONFIG = f"""\
# /etc/rancher/k3s/config.yaml (K3s CIS hardening guide)
protect-kernel-defaults: true
secrets-encryption: true
kube-apiserver-arg:
  - "enable-admission-plugins=NodeRestriction,EventRateLimit"
  - "admission-control-config-file=/var/lib/rancher/k3s/server/psa.yaml"
  - "audit-log-path=/var/lib/rancher/k3s/server/logs/audit.log"
  - "audit-policy-file=/var/lib/rancher/k3s/server/audit.yaml"
  - "audit-log-maxage=30"
  - "audit-log-maxbackup=10"
  - "audit-log-maxsize=100"
  - "service-account-extend-token-expiration=false"
  - "tls-min-version=VersionTLS12"
  - "request-timeout=300s"
  - "authorization-mode=RBAC,Node"
  - "anonymous-auth=false"
kube-controller-manager-arg:
  - "terminated-pod-gc-threshold=100"
kubelet-arg:
  - "streaming-connection-idle-timeout=5m"
  - "tls-cipher-suites={CIPHERS}"
"""
AGENT_CONFIG = f"""\
# /etc/rancher/k3s/config.yaml of an agent (K3s CIS hardening guide, kubelet part)
protect-kernel-defaults: true
kubelet-arg:
  - "streaming-connection-idle-timeout=5m"
  - "tls-cipher-suites={CIPHERS}"
"""
# Where an agent joins, and with what: get.k3s.io writes the K3S_* variables it
# was run with to the unit's env file (install.sh create_env_file), so
# `curl -sfL https://get.k3s.io | K3S_URL=... K3S_TOKEN=... sh -` (docs.k3s.io
# quick-start) leaves them in k3s-agent.service.env. K3s binds --server to
# K3S_URL and --token to K3S_TOKEN (pkg/cli/cmds/agent.go).
SERVER_URL = "https://10.0.0.10:6443"
AGENT_TOKEN = "K10fixture::server:secret"
AGENT_ENV = {"K3S_URL": SERVER_URL, "K3S_TOKEN": AGENT_TOKEN}
# An agent-only node reaches the servers through its own client load balancer
# on 127.0.0.1:6444 (pkg/agent/proxy, LBServerPort default 6444).
AGENT_LB = "https://127.0.0.1:6444"
UNIT = """\
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/{unit}.env
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    {role} \\
{flags}
"""
MAIN_SH = """\
# Run by a copy of bash named k3s-server/k3s-agent, reading this from stdin:
# prints what k3s would log at start, then idles like the real daemon.
printf '%s\\n' "$K3S_FIXTURE_LOG"
unset K3S_FIXTURE_LOG
trap 'kill $! 2>/dev/null; exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""


def pem(kind, seed):
    body = base64.encodebytes(hashlib.sha512(seed.encode()).digest() * 6).decode()
    return f"-----BEGIN {kind}-----\n{body}-----END {kind}-----\n"


def kubeconfig(user, server="https://127.0.0.1:6444", certs=f"{DATA_DIR}/server/tls"):
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        f"    certificate-authority: {certs}/server-ca.crt\n    server: {server}\n"
        "  name: local\ncontexts:\n- context:\n    cluster: local\n"
        f"    user: {user}\n  name: local\ncurrent-context: local\nusers:\n- name: {user}\n  user:\n"
        f"    client-certificate: {certs}/client-{user}.crt\n"
        f"    client-key: {certs}/client-{user}.key\n"
    )


class Tree:
    def __init__(self, root):
        self.root = root

    def p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def dir(self, path, mode=0o755):
        os.makedirs(self.p(path), exist_ok=True)
        os.chmod(self.p(path), mode)

    def file(self, path, content, mode=0o644):
        full = self.p(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        with open(full, "wb") as handle:
            handle.write(data)
        os.chmod(full, mode)

    def link(self, path, target):
        full = self.p(path)
        if os.path.lexists(full):
            os.unlink(full)
        os.symlink(target, full)


def etcd_config(name="fixture-82ee89d1", ip="127.0.0.1"):
    """<data-dir>/server/db/etcd/config as K3s writes it for embedded etcd at each start
    (pkg/daemons/executor ETCDConfig.ToConfigFile: sigs.k8s.io/yaml, keys sorted, 0600);
    the content is that of the hardened server in k3s-io/docs self-assessment-1.12.md."""
    tls = f"{DATA_DIR}/server/tls/etcd"
    return f"""\
advertise-client-urls: https://{ip}:2379
client-transport-security:
  cert-file: {tls}/server-client.crt
  client-cert-auth: true
  key-file: {tls}/server-client.key
  trusted-ca-file: {tls}/server-ca.crt
data-dir: {DATA_DIR}/server/db/etcd
election-timeout: 5000
experimental-initial-corrupt-check: true
experimental-watch-progress-notify-interval: 5000000000
heartbeat-interval: 500
initial-advertise-peer-urls: https://{ip}:2380
initial-cluster: {name}=https://{ip}:2380
initial-cluster-state: new
listen-client-http-urls: https://127.0.0.1:2382
listen-client-urls: https://127.0.0.1:2379,https://{ip}:2379
listen-metrics-urls: http://127.0.0.1:2381
listen-peer-urls: https://127.0.0.1:2380,https://{ip}:2380
log-outputs:
- stderr
logger: zap
name: {name}
peer-transport-security:
  cert-file: {tls}/peer-server-client.crt
  client-cert-auth: true
  key-file: {tls}/peer-server-client.key
  trusted-ca-file: {tls}/peer-ca.crt
snapshot-count: 10000
socket-options:
  reuse-address: true
  reuse-port: true
"""


def encryption_config(seed="k3s-fixture"):
    """Compact JSON exactly as K3s marshals it (pkg/secretsencrypt/config.go WriteEncryptionConfig)."""
    key = base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()
    return json.dumps(
        {
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"aescbc": {"keys": [{"name": "aescbckey", "secret": key}]}},
                        {"identity": {}},
                    ],
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


def install(root, role="server", config=None, exec_flags=(), env=None, fixture=None, here=None):
    """Lay down the node. config: config.yaml text (None = the hardened default, "" = no file)."""
    here = here or os.path.dirname(os.path.abspath(__file__))
    t = Tree(root)
    unit = "k3s.service" if role == "server" else "k3s-agent.service"
    flags = "".join(f"\t'{flag}' \\\n" for flag in exec_flags).rstrip(" \\\n")
    text = UNIT.format(unit=unit, role=role, flags=flags)
    t.file(f"/etc/systemd/system/{unit}", text.replace(f"{role} \\\n\n", f"{role}\n"), 0o644)
    env = env if env is not None else (AGENT_ENV if role == "agent" else {})
    t.file(f"/etc/systemd/system/{unit}.env", "".join(f"{k}='{v}'\n" for k, v in env.items()), 0o600)
    t.dir("/etc/rancher/k3s", 0o755)
    if config is None:
        config = HARDENED_CONFIG if role == "server" else AGENT_CONFIG
    if config != "":
        t.file("/etc/rancher/k3s/config.yaml", config, 0o600)
    t.file("/etc/rancher/k3s/.k3s-fixture.json", json.dumps(dict({"hash": HASH}, **(fixture or {}))), 0o644)
    # The program and its unpacked bin dir.
    t.dir("/usr/local/bin", 0o755)
    shutil.copyfile(os.path.join(here, "k3s"), t.p("/usr/local/bin/k3s"))
    os.chmod(t.p("/usr/local/bin/k3s"), 0o755)
    for tool in ("kubectl", "crictl", "ctr"):
        t.link(f"/usr/local/bin/{tool}", "k3s")
    bindir = f"{DATA_DIR}/data/{HASH}/bin"
    t.dir(f"{DATA_DIR}/data", 0o700)
    t.dir(bindir, 0o755)
    for name in ("k3s-server", "k3s-agent"):
        shutil.copyfile("/bin/bash", t.p(f"{bindir}/{name}"))
        os.chmod(t.p(f"{bindir}/{name}"), 0o755)
    t.file(f"{bindir}/k3s-main.sh", MAIN_SH, 0o644)
    t.link(f"{DATA_DIR}/data/current", HASH)
    _agent_tree(t, role)
    if role == "server":
        _server_tree(t)
        # The admin kubeconfig is the server's (--write-kubeconfig); an agent has none.
        t.file("/etc/rancher/k3s/k3s.yaml", kubeconfig("admin", "https://127.0.0.1:6443"), 0o600)
    # Every node registers with a node password (pkg/agent/config: ensureNodePassword, 0600).
    t.file("/etc/rancher/node/password", hashlib.md5(role.encode()).hexdigest() + "\n", 0o600)
    for ip in ("10.42.0.2", "10.42.0.3"):
        t.file(f"/var/lib/cni/networks/cbr0/{ip}", "0f3a9c...\neth0", 0o644)
    t.file("/var/lib/cni/networks/cbr0/last_reserved_ip.0", "10.42.0.3", 0o644)
    t.file("/var/lib/cni/networks/cbr0/lock", "", 0o644)
    return t


def _agent_tree(t, role):
    a = f"{DATA_DIR}/agent"
    t.dir(a, 0o755)
    # On a server the kubeconfigs reach the local supervisor; on an agent-only
    # node its client load balancer, with the agent's own certificates.
    lb = "https://127.0.0.1:6443" if role == "server" else AGENT_LB
    t.file(f"{a}/client-ca.crt", pem("CERTIFICATE", "client-ca"), 0o644)
    t.file(f"{a}/server-ca.crt", pem("CERTIFICATE", "server-ca"), 0o644)
    for name in ("client-kubelet", "serving-kubelet", "client-kube-proxy", "client-k3s-controller"):
        t.file(f"{a}/{name}.crt", pem("CERTIFICATE", name), 0o644)
        t.file(f"{a}/{name}.key", pem("EC PRIVATE KEY", name), 0o600)
    clients = {"kubelet": "kubelet", "kubeproxy": "kube-proxy", "k3scontroller": "k3s-controller"}
    for name, client in clients.items():
        t.file(f"{a}/{name}.kubeconfig", kubeconfig(client, lb, a), 0o600)
    t.dir(f"{a}/etc/kubelet.conf.d", 0o755)
    t.file(f"{a}/etc/containerd/config.toml", "version = 2\n", 0o644)
    t.dir(f"{a}/pod-manifests", 0o755)


def _server_tree(t):
    s = f"{DATA_DIR}/server"
    t.dir(s, 0o700)
    t.dir(f"{s}/tls", 0o700)
    for name in (
        "client-ca",
        "server-ca",
        "request-header-ca",
        "client-admin",
        "client-controller",
        "client-scheduler",
        "client-kube-apiserver",
        "client-kube-proxy",
        "client-k3s-controller",
        "client-auth-proxy",
        "serving-kube-apiserver",
        "client-supervisor",
    ):
        t.file(f"{s}/tls/{name}.crt", pem("CERTIFICATE", name), 0o644)
        t.file(f"{s}/tls/{name}.key", pem("EC PRIVATE KEY", name), 0o600)
    t.file(f"{s}/tls/client-ca.nochain.crt", pem("CERTIFICATE", "client-ca-nochain"), 0o644)
    t.file(f"{s}/tls/service.key", pem("RSA PRIVATE KEY", "service"), 0o600)
    t.file(f"{s}/tls/service.current.key", pem("RSA PRIVATE KEY", "service"), 0o600)
    t.dir(f"{s}/tls/etcd", 0o700)
    for name in ("server-ca", "peer-ca", "client", "server-client", "peer-server-client"):
        t.file(f"{s}/tls/etcd/{name}.crt", pem("CERTIFICATE", "etcd-" + name), 0o644)
        t.file(f"{s}/tls/etcd/{name}.key", pem("EC PRIVATE KEY", "etcd-" + name), 0o600)
    t.dir(f"{s}/tls/temporary-certs", 0o700)
    t.dir(f"{s}/cred", 0o700)
    for name in ("admin", "controller", "scheduler", "api-server", "supervisor", "cloud-controller"):
        t.file(f"{s}/cred/{name}.kubeconfig", kubeconfig(name), 0o600)
    t.file(f"{s}/cred/ipsec.psk", hashlib.sha256(b"psk").hexdigest() + "\n", 0o600)
    t.file(f"{s}/cred/passwd", "fixture,node,node,k3s:agent\n", 0o600)
    config = encryption_config()
    t.file(f"{s}/cred/encryption-config.json", config, 0o600)
    t.file(f"{s}/cred/encryption-state.json", "start-" + hashlib.sha256(config).hexdigest(), 0o600)
    token = "K10" + hashlib.sha256(b"ca").hexdigest() + "::server:" + hashlib.md5(b"t").hexdigest()
    t.file(f"{s}/token", token + "\n", 0o600)
    t.file(f"{s}/agent-token", token + "\n", 0o600)
    t.link(f"{s}/node-token", "token")
    t.dir(f"{s}/db", 0o700)
    t.dir(f"{s}/db/etcd", 0o700)
    t.file(f"{s}/db/etcd/config", etcd_config(), 0o600)
    t.dir(f"{s}/db/etcd/member/snap", 0o700)
    t.dir(f"{s}/etc", 0o700)
    t.file(
        f"{s}/etc/egress-selector-config.yaml",
        "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\n",
        0o600,
    )
    t.dir(f"{s}/logs", 0o700)
    t.file(f"{s}/logs/audit.log", "", 0o600)  # the apiserver's audit-log-path (HARDENED_CONFIG)
    t.dir(f"{s}/manifests", 0o700)
    t.file(f"{s}/manifests/coredns.yaml", "apiVersion: v1\nkind: ServiceAccount\n", 0o600)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    install(argv[1], argv[2] if len(argv) > 2 else "server")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
