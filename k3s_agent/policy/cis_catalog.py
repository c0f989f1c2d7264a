"""Every check of K3s's CIS benchmarks 1.8, 1.9, 1.10 and 1.12: id, title, automated
or manual, the node role it concerns, and why we do not check it when we do not.

Sources (read for this table; no code copied):
- k3s-io/docs docs/security/self-assessment-1.8.md and self-assessment-1.12.md
  (every heading: id, title, "(Automated)"/"(Manual)"); self-assessment-1.9.md
  for section 1.1.
- aquasecurity/kube-bench cfg/k3s-cis-1.10/{master,etcd,controlplane,node}.yaml,
  cfg/k3s-cis-1.9/{master,etcd,node,policies}.yaml, cfg/k3s-cis-1.8/controlplane.yaml
  (`text` and `scored`; `type: skip` = not applicable to K3s).
Derived, not read (said per row group below): section 3 of 1.9 and 1.12 (both
guides omit section 3; kube-bench's 1.8 and 1.10 files agree, so the same five
manual checks), section 5 of 1.10 (taken from 1.9, kube-bench's k3s-cis-1.10
reuses 1.9's policies layout), the 1.12 rows not shown in the parts of its guide
read (1.2.18-1.2.26, 1.3.5-1.4.2, 4.1.5-4.1.10: as in 1.10, whose titles the
1.12 guide repeats wherever it was read).

The numbering moves between versions only in 1.2 (CIS 1.9 dropped 1.2.12, so
1.8's 1.2.13-1.2.30 are 1.2.12-1.2.29 later) and in section 5; a check has one
stable `key` across versions. Titles are given without the "(Automated)" /
"(Manual)" suffix; `automated` says which.

Standard library only: `k3s-agentctl status` and reports may read it.
"""

# ruff: noqa: E501  (the check tables: one row per check reads best)
from __future__ import annotations

import dataclasses
from typing import Optional, Union

VERSIONS = ("k3s-cis-1.8", "k3s-cis-1.9", "k3s-cis-1.10", "k3s-cis-1.12")
SERVER, AGENT, CLUSTER = "server", "agent", "cluster"
BOTH = (SERVER, AGENT)  # worker-node checks hold on servers too (they run a kubelet)

# Why a check is not a node agent's business, by section.
CLUSTER_LEVEL = "cluster-level (Kubernetes API objects), not applicable to a node agent"


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of one benchmark version."""

    key: str  # stable across versions
    id: str
    title: str
    automated: bool
    roles: tuple[str, ...]
    version: str

    @property
    def section(self) -> str:
        return self.id.split(".")[0]

    @property
    def node_level(self) -> bool:
        return CLUSTER not in self.roles


PerVersion = Union[str, tuple[Optional[str], Optional[str], Optional[str], Optional[str]]]


# (key, roles, ids, kinds, title): ids one id for every version or one per VERSIONS
# entry (None: the version has no such check); kinds one letter per version, A
# automated, M manual, - absent; title one text or one per version.
def _pdf(name: str) -> str:
    return f"Ensure that the {name} pod specification file"


# fmt: off
_ROWS: list[tuple[str, tuple[str, ...], PerVersion, str, PerVersion]] = [
    # -- 1.1 Control Plane Node Configuration Files (guides 1.8/1.9/1.12, kube-bench 1.10)
    ("apiserver-podspec-perms", (SERVER,), "1.1.1", "AAAA", _pdf("API server") + " permissions are set to 600 or more restrictive"),
    ("apiserver-podspec-owner", (SERVER,), "1.1.2", "AAAA", _pdf("API server") + " ownership is set to root:root"),
    ("kcm-podspec-perms", (SERVER,), "1.1.3", "AAAA", _pdf("controller manager") + " permissions are set to 600 or more restrictive"),
    ("kcm-podspec-owner", (SERVER,), "1.1.4", "AAAA", _pdf("controller manager") + " ownership is set to root:root"),
    ("scheduler-podspec-perms", (SERVER,), "1.1.5", "AAAA", _pdf("scheduler") + " permissions are set to 600 or more restrictive"),
    ("scheduler-podspec-owner", (SERVER,), "1.1.6", "AAAA", _pdf("scheduler") + " ownership is set to root:root"),
    ("etcd-podspec-perms", (SERVER,), "1.1.7", "AAAA", _pdf("etcd") + " permissions are set to 600 or more restrictive"),
    ("etcd-podspec-owner", (SERVER,), "1.1.8", "AAAA", _pdf("etcd") + " ownership is set to root:root"),
    ("cni-perms", (SERVER,), "1.1.9", "AAAA", "Ensure that the Container Network Interface file permissions are set to 600 or more restrictive"),
    ("cni-owner", (SERVER,), "1.1.10", "MAAA", "Ensure that the Container Network Interface file ownership is set to root:root"),
    ("etcd-datadir-perms", (SERVER,), "1.1.11", "AMMM", "Ensure that the etcd data directory permissions are set to 700 or more restrictive"),
    ("etcd-datadir-owner", (SERVER,), "1.1.12", "AAAA", "Ensure that the etcd data directory ownership is set to etcd:etcd"),
    ("admin-conf-perms", (SERVER,), "1.1.13", "AAAA", "Ensure that the admin.conf file permissions are set to 600 or more restrictive"),
    ("admin-conf-owner", (SERVER,), "1.1.14", "AAAA", "Ensure that the admin.conf file ownership is set to root:root"),
    ("scheduler-conf-perms", (SERVER,), "1.1.15", "AAAA", "Ensure that the scheduler.conf file permissions are set to 600 or more restrictive"),
    ("scheduler-conf-owner", (SERVER,), "1.1.16", "AAAA", "Ensure that the scheduler.conf file ownership is set to root:root"),
    ("kcm-conf-perms", (SERVER,), "1.1.17", "AAAA", "Ensure that the controller-manager.conf file permissions are set to 600 or more restrictive"),
    ("kcm-conf-owner", (SERVER,), "1.1.18", "AAAA", "Ensure that the controller-manager.conf file ownership is set to root:root"),
    ("pki-owner", (SERVER,), "1.1.19", "AAAA", "Ensure that the Kubernetes PKI directory and file ownership is set to root:root"),
    ("pki-cert-perms", (SERVER,), "1.1.20", "MMMA", (
        *(["Ensure that the Kubernetes PKI certificate file permissions are set to 600 or more restrictive"] * 3),
        "Ensure that the Kubernetes PKI certificate file permissions are set to 644 or more restrictive",
    )),
    ("pki-key-perms", (SERVER,), "1.1.21", "MAAA", "Ensure that the Kubernetes PKI key file permissions are set to 600"),
    # -- 1.2 API Server (1.8: guide; 1.9/1.10: kube-bench master.yaml; 1.12: guide)
    ("apiserver-anonymous-auth", (SERVER,), "1.2.1", "MAAA", "Ensure that the --anonymous-auth argument is set to false"),
    ("apiserver-token-auth-file", (SERVER,), "1.2.2", "AAAA", "Ensure that the --token-auth-file parameter is not set"),
    # 1.8's title and audit say "not set" and accept any value ("present OR not present").
    ("deny-service-external-ips", (SERVER,), "1.2.3", "AMMM", (
        "Ensure that the --DenyServiceExternalIPs is not set",
        *(["Ensure that the --DenyServiceExternalIPs is set"] * 3),
    )),
    ("apiserver-kubelet-client-cert", (SERVER,), "1.2.4", "AAAA", "Ensure that the --kubelet-client-certificate and --kubelet-client-key arguments are set as appropriate"),
    ("apiserver-kubelet-ca", (SERVER,), "1.2.5", "AAAA", "Ensure that the --kubelet-certificate-authority argument is set as appropriate"),
    ("apiserver-authz-not-always-allow", (SERVER,), "1.2.6", "AAAA", "Ensure that the --authorization-mode argument is not set to AlwaysAllow"),
    ("apiserver-authz-node", (SERVER,), "1.2.7", "AAAA", "Ensure that the --authorization-mode argument includes Node"),
    ("apiserver-authz-rbac", (SERVER,), "1.2.8", "AAAA", "Ensure that the --authorization-mode argument includes RBAC"),
    ("admission-event-rate-limit", (SERVER,), "1.2.9", "MMMM", "Ensure that the admission control plugin EventRateLimit is set"),
    ("admission-always-admit", (SERVER,), "1.2.10", "AAAA", "Ensure that the admission control plugin AlwaysAdmit is not set"),
    ("admission-always-pull-images", (SERVER,), "1.2.11", "MMMM", "Ensure that the admission control plugin AlwaysPullImages is set"),
    ("admission-security-context-deny", (SERVER,), ("1.2.12", None, None, None), "M---", "Ensure that the admission control plugin SecurityContextDeny is set if PodSecurityPolicy is not used"),
    ("admission-service-account", (SERVER,), ("1.2.13", "1.2.12", "1.2.12", "1.2.12"), "AAAA", "Ensure that the admission control plugin ServiceAccount is set"),
    ("admission-namespace-lifecycle", (SERVER,), ("1.2.14", "1.2.13", "1.2.13", "1.2.13"), "AAAA", "Ensure that the admission control plugin NamespaceLifecycle is set"),
    ("admission-node-restriction", (SERVER,), ("1.2.15", "1.2.14", "1.2.14", "1.2.14"), "AAAA", "Ensure that the admission control plugin NodeRestriction is set"),
    ("apiserver-profiling", (SERVER,), ("1.2.16", "1.2.15", "1.2.15", "1.2.15"), "AAAA", "Ensure that the --profiling argument is set to false"),
    ("audit-log-path", (SERVER,), ("1.2.17", "1.2.16", "1.2.16", "1.2.16"), "AMMM", "Ensure that the --audit-log-path argument is set"),
    ("audit-log-maxage", (SERVER,), ("1.2.18", "1.2.17", "1.2.17", "1.2.17"), "AMMM", "Ensure that the --audit-log-maxage argument is set to 30 or as appropriate"),
    ("audit-log-maxbackup", (SERVER,), ("1.2.19", "1.2.18", "1.2.18", "1.2.18"), "AMMM", "Ensure that the --audit-log-maxbackup argument is set to 10 or as appropriate"),
    ("audit-log-maxsize", (SERVER,), ("1.2.20", "1.2.19", "1.2.19", "1.2.19"), "AMMM", "Ensure that the --audit-log-maxsize argument is set to 100 or as appropriate"),
    ("request-timeout", (SERVER,), ("1.2.21", "1.2.20", "1.2.20", "1.2.20"), "MMMM", "Ensure that the --request-timeout argument is set as appropriate"),
    ("service-account-lookup", (SERVER,), ("1.2.22", "1.2.21", "1.2.21", "1.2.21"), "AAAA", "Ensure that the --service-account-lookup argument is set to true"),
    ("service-account-key-file", (SERVER,), ("1.2.23", "1.2.22", "1.2.22", "1.2.22"), "AAAA", "Ensure that the --service-account-key-file argument is set as appropriate"),
    ("etcd-client-cert", (SERVER,), ("1.2.24", "1.2.23", "1.2.23", "1.2.23"), "AAAA", "Ensure that the --etcd-certfile and --etcd-keyfile arguments are set as appropriate"),
    ("apiserver-tls-cert", (SERVER,), ("1.2.25", "1.2.24", "1.2.24", "1.2.24"), "AAAA", "Ensure that the --tls-cert-file and --tls-private-key-file arguments are set as appropriate"),
    ("apiserver-client-ca", (SERVER,), ("1.2.26", "1.2.25", "1.2.25", "1.2.25"), "AAAA", "Ensure that the --client-ca-file argument is set as appropriate"),
    ("etcd-cafile", (SERVER,), ("1.2.27", "1.2.26", "1.2.26", "1.2.26"), "AAAA", "Ensure that the --etcd-cafile argument is set as appropriate"),
    ("encryption-provider-config", (SERVER,), ("1.2.28", "1.2.27", "1.2.27", "1.2.27"), "MMMM", "Ensure that the --encryption-provider-config argument is set as appropriate"),
    ("encryption-providers", (SERVER,), ("1.2.29", "1.2.28", "1.2.28", "1.2.28"), "MMMM", "Ensure that encryption providers are appropriately configured"),
    ("apiserver-ciphers", (SERVER,), ("1.2.30", "1.2.29", "1.2.29", "1.2.29"), "MAAA", "Ensure that the API Server only makes use of Strong Cryptographic Ciphers"),
    ("extend-token-expiration", (SERVER,), (None, None, None, "1.2.30"), "---A", "Ensure that the --service-account-extend-token-expiration parameter is set to false"),
    # -- 1.3 Controller Manager, 1.4 Scheduler
    ("kcm-terminated-pod-gc", (SERVER,), "1.3.1", "MMMM", "Ensure that the --terminated-pod-gc-threshold argument is set as appropriate"),
    ("kcm-profiling", (SERVER,), "1.3.2", "AAAA", "Ensure that the --profiling argument is set to false"),
    ("kcm-service-account-credentials", (SERVER,), "1.3.3", "AAAA", "Ensure that the --use-service-account-credentials argument is set to true"),
    ("kcm-service-account-private-key", (SERVER,), "1.3.4", "AAAA", "Ensure that the --service-account-private-key-file argument is set as appropriate"),
    ("kcm-root-ca-file", (SERVER,), "1.3.5", "AAAA", "Ensure that the --root-ca-file argument is set as appropriate"),
    ("kcm-rotate-kubelet-server-cert", (SERVER,), "1.3.6", "AAAA", "Ensure that the RotateKubeletServerCertificate argument is set to true"),
    ("kcm-bind-address", (SERVER,), "1.3.7", "AAAA", "Ensure that the --bind-address argument is set to 127.0.0.1"),
    ("scheduler-profiling", (SERVER,), "1.4.1", "AAAA", "Ensure that the --profiling argument is set to false"),
    ("scheduler-bind-address", (SERVER,), "1.4.2", "AAAA", "Ensure that the --bind-address argument is set to 127.0.0.1"),
    # -- 2 Etcd Node Configuration (1.8 guide: Automated; kube-bench 1.9/1.10, 1.12 guide: Manual)
    ("etcd-cert-file", (SERVER,), "2.1", "AMMM", "Ensure that the --cert-file and --key-file arguments are set as appropriate"),
    ("etcd-client-cert-auth", (SERVER,), "2.2", "AMMM", "Ensure that the --client-cert-auth argument is set to true"),
    ("etcd-auto-tls", (SERVER,), "2.3", "AMMM", "Ensure that the --auto-tls argument is not set to true"),
    ("etcd-peer-cert-file", (SERVER,), "2.4", "AMMM", "Ensure that the --peer-cert-file and --peer-key-file arguments are set as appropriate"),
    ("etcd-peer-client-cert-auth", (SERVER,), "2.5", "AMMM", "Ensure that the --peer-client-cert-auth argument is set to true"),
    ("etcd-peer-auto-tls", (SERVER,), "2.6", "AMMM", "Ensure that the --peer-auto-tls argument is not set to true"),
    ("etcd-unique-ca", (SERVER,), "2.7", "AMMM", "Ensure that a unique Certificate Authority is used for etcd"),
    # -- 3 Control Plane Configuration (kube-bench k3s-cis-1.8 and 1.10 controlplane.yaml;
    # 1.9 and 1.12 derived: their guides omit section 3)
    ("users-no-client-certs", (SERVER,), "3.1.1", "MMMM", "Client certificate authentication should not be used for users"),
    ("users-no-sa-tokens", (SERVER,), "3.1.2", "MMMM", "Service account token authentication should not be used for users"),
    ("users-no-bootstrap-tokens", (SERVER,), "3.1.3", "MMMM", "Bootstrap token authentication should not be used for users"),
    ("audit-policy-created", (SERVER,), "3.2.1", "MMMM", "Ensure that a minimal audit policy is created"),
    ("audit-policy-coverage", (SERVER,), "3.2.2", "MMMM", "Ensure that the audit policy covers key security concerns"),
    # -- 4.1 Worker Node Configuration Files
    ("kubelet-service-perms", BOTH, "4.1.1", "AAAA", "Ensure that the kubelet service file permissions are set to 600 or more restrictive"),
    ("kubelet-service-owner", BOTH, "4.1.2", "AAAA", "Ensure that the kubelet service file ownership is set to root:root"),
    ("proxy-kubeconfig-perms", BOTH, "4.1.3", "MAAA", "If proxy kubeconfig file exists ensure permissions are set to 600 or more restrictive"),
    ("proxy-kubeconfig-owner", BOTH, "4.1.4", "MAAA", "If proxy kubeconfig file exists ensure ownership is set to root:root"),
    ("kubelet-kubeconfig-perms", BOTH, "4.1.5", "AAAA", "Ensure that the --kubeconfig kubelet.conf file permissions are set to 600 or more restrictive"),
    ("kubelet-kubeconfig-owner", BOTH, "4.1.6", "AAAA", "Ensure that the --kubeconfig kubelet.conf file ownership is set to root:root"),
    ("kubelet-ca-perms", BOTH, "4.1.7", "MAAA", "Ensure that the certificate authorities file permissions are set to 600 or more restrictive"),
    ("kubelet-ca-owner", BOTH, "4.1.8", "MAAA", "Ensure that the client certificate authorities file ownership is set to root:root"),
    ("kubelet-config-perms", BOTH, "4.1.9", "AAAA", "Ensure that the kubelet --config configuration file has permissions set to 600 or more restrictive"),
    ("kubelet-config-owner", BOTH, "4.1.10", "AAAA", "Ensure that the kubelet --config configuration file ownership is set to root:root"),
    # -- 4.2 Kubelet
    ("kubelet-anonymous-auth", BOTH, "4.2.1", "AAAA", "Ensure that the --anonymous-auth argument is set to false"),
    ("kubelet-authz", BOTH, "4.2.2", "AAAA", "Ensure that the --authorization-mode argument is not set to AlwaysAllow"),
    ("kubelet-client-ca", BOTH, "4.2.3", "AAAA", "Ensure that the --client-ca-file argument is set as appropriate"),
    ("kubelet-read-only-port", BOTH, "4.2.4", "MAAA", (
        *(["Verify that the --read-only-port argument is set to 0"] * 3),
        "Verify that if defined, the --read-only-port argument is set to 0",
    )),
    ("kubelet-streaming-timeout", BOTH, "4.2.5", "MMMM", "Ensure that the --streaming-connection-idle-timeout argument is not set to 0"),
    ("kubelet-iptables-chains", BOTH, "4.2.6", "AAAA", "Ensure that the --make-iptables-util-chains argument is set to true"),
    ("kubelet-hostname-override", BOTH, "4.2.7", "MAAA", "Ensure that the --hostname-override argument is not set"),
    ("kubelet-event-qps", BOTH, "4.2.8", "MMMM", "Ensure that the eventRecordQPS argument is set to a level which ensures appropriate event capture"),
    ("kubelet-tls-cert", BOTH, "4.2.9", "MAAA", "Ensure that the --tls-cert-file and --tls-private-key-file arguments are set as appropriate"),
    ("kubelet-rotate-certificates", BOTH, "4.2.10", "MAAA", "Ensure that the --rotate-certificates argument is not set to false"),
    ("kubelet-rotate-server-cert", BOTH, "4.2.11", "MAAA", "Verify that the RotateKubeletServerCertificate argument is set to true"),
    ("kubelet-ciphers", BOTH, "4.2.12", "MMMM", "Ensure that the Kubelet only makes use of Strong Cryptographic Ciphers"),
    ("kubelet-pod-pids", BOTH, "4.2.13", "MMMM", "Ensure that a limit is set on pod PIDs"),
    ("kubelet-seccomp-default", BOTH, (None, None, None, "4.2.14"), "---M", "Ensure that the --seccomp-default parameter is set to true"),
    # -- 4.3 kube-proxy (kube-bench k3s-cis-1.9 and 1.10 node.yaml; 1.12 guide)
    ("proxy-metrics-localhost", BOTH, (None, "4.3.1", "4.3.1", "4.3.1"), "-AAA", "Ensure that the kube-proxy metrics service is bound to localhost"),
]
# fmt: on

# Section 5 (Kubernetes Policies): cluster-level in every version. 1.8, 1.9 and
# 1.12 as their guide / kube-bench policies.yaml list them; 1.10 as 1.9.
# CIS 1.12 dropped 5.2.9 ("added capabilities") and renumbered 5.7 as 5.6.
_P52 = "Minimize the admission of "
# fmt: off
_POLICY_ROWS: list[tuple[str, PerVersion, str, str]] = [
    ("cluster-admin-role", "5.1.1", "MAAM", "Ensure that the cluster-admin role is only used where required"),
    ("secrets-access", "5.1.2", "MMMM", "Minimize access to secrets"),
    ("rbac-wildcards", "5.1.3", "MAAM", "Minimize wildcard use in Roles and ClusterRoles"),
    ("create-pods-access", "5.1.4", "MMMM", "Minimize access to create pods"),
    ("default-service-accounts", "5.1.5", "MAAM", "Ensure that default service accounts are not actively used."),
    ("sa-token-mounts", "5.1.6", "MAAM", "Ensure that Service Account Tokens are only mounted where necessary"),
    ("system-masters", "5.1.7", "MMMM", "Avoid use of system:masters group"),
    ("bind-impersonate-escalate", "5.1.8", "MMMM", "Limit use of the Bind, Impersonate and Escalate permissions in the Kubernetes cluster"),
    ("create-pv-access", "5.1.9", "MMMM", "Minimize access to create persistent volumes"),
    ("node-proxy-access", "5.1.10", "MMMM", "Minimize access to the proxy sub-resource of nodes"),
    ("csr-approval-access", "5.1.11", "MMMM", "Minimize access to the approval sub-resource of certificatesigningrequests objects"),
    ("webhook-config-access", "5.1.12", "MMMM", "Minimize access to webhook configuration objects"),
    ("sa-token-creation", "5.1.13", "MMMM", "Minimize access to the service account token creation"),
    ("policy-control", "5.2.1", "MMMM", "Ensure that the cluster has at least one active policy control mechanism in place"),
    ("privileged-containers", "5.2.2", "MMMM", _P52 + "privileged containers"),
    ("host-pid", "5.2.3", "AMMM", _P52 + "containers wishing to share the host process ID namespace"),
    ("host-ipc", "5.2.4", "AMMM", _P52 + "containers wishing to share the host IPC namespace"),
    ("host-network", "5.2.5", "AMMM", _P52 + "containers wishing to share the host network namespace"),
    ("privilege-escalation", "5.2.6", "AMMM", _P52 + "containers with allowPrivilegeEscalation"),
    ("root-containers", "5.2.7", "AMMM", _P52 + "root containers"),
    ("net-raw", "5.2.8", "AMMM", _P52 + "containers with the NET_RAW capability"),
    ("added-capabilities", ("5.2.9", "5.2.9", "5.2.9", None), "AMM-", _P52 + "containers with added capabilities"),
    ("assigned-capabilities", ("5.2.10", "5.2.10", "5.2.10", "5.2.9"), "MMMM", _P52 + "containers with capabilities assigned"),
    ("windows-hostprocess", ("5.2.11", "5.2.11", "5.2.11", "5.2.10"), "MMMM", _P52 + "Windows HostProcess containers"),
    ("hostpath-volumes", ("5.2.12", "5.2.12", "5.2.12", "5.2.11"), "MMMM", _P52 + "HostPath volumes"),
    ("host-ports", ("5.2.13", "5.2.13", "5.2.13", "5.2.12"), "MMMM", _P52 + "containers which use HostPorts"),
    ("cni-network-policies", "5.3.1", "MMMM", "Ensure that the CNI in use supports NetworkPolicies"),
    ("namespace-network-policies", "5.3.2", "MMMM", "Ensure that all Namespaces have NetworkPolicies defined"),
    ("secrets-as-files", "5.4.1", "MMMM", "Prefer using Secrets as files over Secrets as environment variables"),
    ("external-secrets", "5.4.2", "MMMM", "Consider external secret storage"),
    ("image-provenance", "5.5.1", "MMMM", "Configure Image Provenance using ImagePolicyWebhook admission controller"),
    ("namespace-boundaries", ("5.7.1", "5.7.1", "5.7.1", "5.6.1"), "MMMM", "Create administrative boundaries between resources using namespaces"),
    ("seccomp-profile", ("5.7.2", "5.7.2", "5.7.2", "5.6.2"), "MMMM", "Ensure that the seccomp profile is set to docker/default in your Pod definitions"),
    ("security-context", ("5.7.3", "5.7.3", "5.7.3", "5.6.3"), "MMMM", "Apply SecurityContext to your Pods and Containers"),
    ("default-namespace", ("5.7.4", "5.7.4", "5.7.4", "5.6.4"), "MMMM", "The default namespace should not be used"),
]
# fmt: on

# Automated node-level checks we deliberately do not check, and why (per check key;
# the reason holds in every version that has the check).
NOT_APPLICABLE: dict[str, str] = {
    **{
        f"{part}-podspec-{what}": "K3s embeds the component in its own process: there is no pod specification file"
        for part in ("apiserver", "kcm", "scheduler", "etcd")
        for what in ("perms", "owner")
    },
    "etcd-datadir-owner": "K3s embeds etcd in its own (root) process: there is no etcd user; 1.1.11 checks the directory",
    "kubelet-service-perms": "the kubelet is embedded in the k3s process: there is no kubelet service file",
    "kubelet-service-owner": "the kubelet is embedded in the k3s process: there is no kubelet service file",
    "kubelet-config-perms": "K3s passes the kubelet no --config file (kube-bench: skip)",
    "kubelet-config-owner": "K3s passes the kubelet no --config file (kube-bench: skip)",
    "kubelet-hostname-override": "K3s always sets --hostname-override, as CIS allows for cloud providers (kube-bench: skip)",
    "deny-service-external-ips@k3s-cis-1.8": "CIS 1.8's audit accepts any value (plugin present or not): nothing to check; "
    "later versions ask for the plugin, a manual check we report",
}

# Manual checks the agent leaves to the operator, and why.
MANUAL_NOTES: dict[str, str] = {
    "users-no-client-certs": "how users authenticate is the cluster's choice (OIDC ...), not a node setting",
    "users-no-sa-tokens": "how users authenticate is the cluster's choice (OIDC ...), not a node setting",
    "users-no-bootstrap-tokens": "how users authenticate is the cluster's choice (OIDC ...), not a node setting",
    "audit-policy-coverage": "a person reviews the policy; the server profile ships one and keeps it in place",
    "kubelet-pod-pids": "a PID limit fits the workloads: podPidsLimit in a kubelet.conf.d drop-in "
    "(kubelet-arg: pod-max-pids) is the operator's sizing decision",
    "admission-security-context-deny": "the plugin is gone from Kubernetes 1.30; Pod Security admission replaces it",
}


def _per_version(value: PerVersion) -> tuple[Optional[str], ...]:
    return (value,) * len(VERSIONS) if isinstance(value, str) else tuple(value)


def _build() -> dict[str, tuple[Check, ...]]:
    rows = [(key, roles, ids, kinds, title) for key, roles, ids, kinds, title in _ROWS]
    rows += [(key, (CLUSTER,), ids, kinds, title) for key, ids, kinds, title in _POLICY_ROWS]
    out: dict[str, list[Check]] = {v: [] for v in VERSIONS}
    for key, roles, ids, kinds, title in rows:
        titles = _per_version(title)
        for n, (version, check_id, kind) in enumerate(zip(VERSIONS, _per_version(ids), kinds)):
            if (check_id is None) != (kind == "-"):
                raise ValueError(f"catalog row {key}: id and kind disagree for {version}")
            if check_id is not None:
                out[version].append(Check(key, check_id, str(titles[n]), kind == "A", roles, version))
    return {v: tuple(sorted(checks, key=lambda c: id_order(c.id))) for v, checks in out.items()}


def id_order(check_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in check_id.split("."))


CATALOG: dict[str, tuple[Check, ...]] = _build()


def checks(version: str) -> tuple[Check, ...]:
    """Every check of a benchmark version, in id order (KeyError: no such version)."""
    return CATALOG[version]


def by_id(version: str) -> dict[str, Check]:
    return {c.id: c for c in CATALOG[version]}


def by_key(version: str) -> dict[str, Check]:
    return {c.key: c for c in CATALOG[version]}


def not_applicable(check: Check) -> Optional[str]:
    """Why a check is not a node agent's to check (None: it is)."""
    if not check.node_level:
        return CLUSTER_LEVEL
    return NOT_APPLICABLE.get(f"{check.key}@{check.version}") or NOT_APPLICABLE.get(check.key)
