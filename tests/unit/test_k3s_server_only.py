"""Which `<component>:<flag>` items concern a server part (absent on an agent-only node)."""

from __future__ import annotations

import pytest

from k3s_agent.k3s import args as k3sargs

CASES = [
    # K3s's own flags: only those `k3s server` has and `k3s agent` lacks (pkg/cli/cmds/agent.go).
    ("k3s", "secrets-encryption", True),
    ("k3s", "write-kubeconfig-mode", True),
    ("k3s", "cluster-init", True),
    ("k3s", "kube-apiserver-arg", True),
    ("k3s", "protect-kernel-defaults", False),  # an agent flag too
    ("k3s", "selinux", False),
    ("k3s", "kubelet-arg", False),
    ("k3s", "node-ip", False),
    ("k3s", "some-future-flag", False),  # unknown: judged everywhere (a false alarm, never a blind spot)
    # Components: the control plane runs on servers only.
    ("kube-apiserver", "anonymous-auth", True),
    ("kube-controller-manager", "profiling", True),
    ("kube-scheduler", "profiling", True),
    ("kubelet", "anonymous-auth", False),
    ("kube-proxy", "metrics-bind-address", False),
    # A kubelet flag named like a server-only K3s flag is still the kubelet's.
    ("kubelet", "secrets-encryption", False),
]


@pytest.mark.parametrize("component, flag, expected", CASES, ids=[f"{c}:{f}" for c, f, _ in CASES])
def test_server_only(component: str, flag: str, expected: bool) -> None:
    assert k3sargs.server_only(component, flag) is expected


def test_server_flags_are_not_agent_flags() -> None:
    """The agent command's own flags (pkg/cli/cmds/agent.go) are never in the server-only set."""
    agent_flags = {
        "token", "token-file", "server", "data-dir", "node-name", "node-label", "node-taint",
        "selinux", "protect-kernel-defaults", "node-ip", "node-external-ip", "resolv-conf",
        "flannel-iface", "flannel-conf", "kubelet-arg", "kube-proxy-arg", "lb-server-port",
        "private-registry", "pause-image", "snapshotter", "container-runtime-endpoint",
        "vpn-auth", "vpn-auth-file", "rootless", "prefer-bundled-bin",
    }  # fmt: skip
    assert not agent_flags & k3sargs.SERVER_FLAGS
