"""Component arguments: how K3s builds them, how they are logged, how to compare them.

K3s passes `--kube-apiserver-arg=name=value` (and the -controller-manager,
-scheduler, kubelet, kube-proxy variants) to the component through GetArgs
(k3s-io/k3s pkg/daemons/config/types.go): K3s's own defaults, then each extra
arg in order: "name=value" drops the default and adds value, "name+=value"
keeps the default and appends, "name-=value" prepends; the result is sorted by
name, a name given more than once is repeated as separate flags. The
component's flag parser (pflag) then keeps the last value of a single-valued
flag and concatenates repeated list flags.

At start K3s logs `Running <component> <args joined by one space>` (logrus
Infof with config.ArgString); under systemd the logrus text format wraps it as
msg="..." with Go string escaping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

SERVER_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
AGENT_COMPONENTS = ("kubelet", "kube-proxy")
COMPONENTS = (*SERVER_COMPONENTS, *AGENT_COMPONENTS)
K3S = "k3s"
# K3s's own flags that only `k3s server` has (pkg/cli/cmds/server.go; the agent's
# are in pkg/cli/cmds/agent.go): `k3s agent` drops them from its config files
# (pkg/configfilearg stripInvalidFlags) and they configure nothing there. Only
# flags a hardening policy names; an unlisted flag is judged on every node (a
# false alarm on an agent is the safe way to be wrong).
SERVER_FLAGS = frozenset(
    {
        "secrets-encryption",
        "secrets-encryption-provider",
        "write-kubeconfig",
        "write-kubeconfig-mode",
        "write-kubeconfig-group",
        "tls-san",
        "tls-san-security",
        "cluster-init",
        "cluster-cidr",
        "service-cidr",
        "service-node-port-range",
        "cluster-dns",
        "cluster-domain",
        "flannel-backend",
        "egress-selector-mode",
        "disable",
        "disable-network-policy",
        "disable-kube-proxy",
        "disable-apiserver",
        "disable-controller-manager",
        "disable-scheduler",
        "disable-etcd",
        "advertise-address",
        "bind-address",
        "https-listen-port",
        "agent-token",
        "agent-token-file",
        "embedded-registry",
        "datastore-endpoint",
        "kube-apiserver-arg",
        "kube-controller-manager-arg",
        "kube-scheduler-arg",
        "etcd-arg",
        "etcd-expose-metrics",
    }
)


def server_only(component: str, flag: str) -> bool:
    """Does this `<component>:<flag>` item concern a server part (nothing of it on an agent-only node)?"""
    return component in SERVER_COMPONENTS or (component == K3S and flag in SERVER_FLAGS)


# The K3s flag that carries extra args for each component.
EXTRA_ARG_FLAG = {
    "kube-apiserver": "kube-apiserver-arg",
    "kube-controller-manager": "kube-controller-manager-arg",
    "kube-scheduler": "kube-scheduler-arg",
    "kubelet": "kubelet-arg",
    "kube-proxy": "kube-proxy-arg",
}

# The defaults K3s sets that matter to a hardening policy (pkg/daemons/control/server.go
# apiServer/controllerManager/scheduler, pkg/daemons/agent/agent_linux.go kubeletArgs).
# Only these are modelled: an arg K3s leaves to the component's own default is absent.
DEFAULTS: dict[str, dict[str, str]] = {
    "kube-apiserver": {
        "anonymous-auth": "false",
        "authorization-mode": "Node,RBAC",
        "profiling": "false",
        "enable-admission-plugins": "NodeRestriction",
        "bind-address": "127.0.0.1",
        "secure-port": "6444",
        "allow-privileged": "true",
        # kube-bench k3s-cis-1.8 1.2.30: "By default, the K3s kube-apiserver complies with
        # this test" (its audit greps the Running line for the flag); its remediation's list.
        "tls-cipher-suites": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,"
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,"
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    },
    "kube-controller-manager": {
        "profiling": "false",
        "bind-address": "127.0.0.1",
        "secure-port": "10257",
        "use-service-account-credentials": "true",
    },
    "kube-scheduler": {"profiling": "false", "bind-address": "127.0.0.1", "secure-port": "10259"},
    "kubelet": {
        "anonymous-auth": "false",
        "authorization-mode": "Webhook",
        "authentication-token-webhook": "true",
        "read-only-port": "0",
        "make-iptables-util-chains": "true",
    },
    "kube-proxy": {"healthz-bind-address": "127.0.0.1"},
}
DATA_DIR = "/var/lib/rancher/k3s"
# Files K3s generates and passes itself, under its data dir (the guides' sample
# "Running kube-apiserver/kube-controller-manager" lines, k3s-io/docs
# docs/security/self-assessment-1.8.md and -1.12.md; CIS 1.2.4/1.2.5/1.2.22-1.2.25,
# 1.3.4/1.3.5 in 1.9's numbering).
DATA_DIR_DEFAULTS: dict[str, dict[str, str]] = {
    "kube-apiserver": {
        "client-ca-file": "{data_dir}/server/tls/client-ca.crt",
        "kubelet-certificate-authority": "{data_dir}/server/tls/server-ca.crt",
        "kubelet-client-certificate": "{data_dir}/server/tls/client-kube-apiserver.crt",
        "kubelet-client-key": "{data_dir}/server/tls/client-kube-apiserver.key",
        "service-account-key-file": "{data_dir}/server/tls/service.key",
        "tls-cert-file": "{data_dir}/server/tls/serving-kube-apiserver.crt",
        "tls-private-key-file": "{data_dir}/server/tls/serving-kube-apiserver.key",
    },
    "kube-controller-manager": {
        "root-ca-file": "{data_dir}/server/tls/server-ca.crt",
        "service-account-private-key-file": "{data_dir}/server/tls/service.current.key",
    },
}
# The apiserver's etcd client TLS, passed only when K3s runs embedded etcd (kine
# with sqlite needs none): the same sample lines, CIS 1.2.23/1.2.26 (1.9 numbering).
ETCD_DEFAULTS = {
    "etcd-cafile": "{data_dir}/server/tls/etcd/server-ca.crt",
    "etcd-certfile": "{data_dir}/server/tls/etcd/client.crt",
    "etcd-keyfile": "{data_dir}/server/tls/etcd/client.key",
}
# The components' OWN defaults: what runs when neither K3s nor the operator passes
# the flag (K3s >= 1.32, for one, no longer passes make-iptables-util-chains).
# Only flags a policy checks are listed. Sources, the upstream command-line
# references (kubernetes.io/docs/reference/command-line-tools-reference/):
#   kubelet: --anonymous-auth "Default: true", --authorization-mode "Default:
#   AlwaysAllow", --read-only-port "(default 10255)" (0 only in a KubeletConfiguration
#   file), --make-iptables-util-chains "Default: true",
#   --streaming-connection-idle-timeout "Default: 4h0m0s" (CIS 4.2.5: "four hours"),
#   --protect-kernel-defaults / --rotate-certificates / --authentication-token-webhook
#   booleans that default to false, --event-qps "Default: 50".
#   kube-apiserver: --anonymous-auth "Default: true", --profiling "Default: true",
#   --authorization-mode "Default: AlwaysAllow", --request-timeout "Default: 1m0s",
#   --service-account-lookup "Default: true", --service-account-extend-token-expiration
#   "Default: true" (CIS 1.12 1.2.30: "By default, this parameter is set to true").
#   kube-controller-manager: --profiling "Default: true",
#   --terminated-pod-gc-threshold "Default: 12500", --bind-address "Default: 0.0.0.0".
#   --use-service-account-credentials (a boolean, false unless given).
#   kube-scheduler: --profiling "Default: true", --bind-address "Default: 0.0.0.0".
#   kubelet --seccomp-default "Default: false"; kube-proxy --metrics-bind-address
#   "Default: 127.0.0.1:10249" (CIS 4.3.1's remediation: "The default value is 127.0.0.1:10249").
COMPONENT_DEFAULTS: dict[str, dict[str, str]] = {
    "kubelet": {
        "anonymous-auth": "true",
        "authorization-mode": "AlwaysAllow",
        "read-only-port": "10255",
        "make-iptables-util-chains": "true",
        "streaming-connection-idle-timeout": "4h0m0s",
        "protect-kernel-defaults": "false",
        "rotate-certificates": "false",
        "authentication-token-webhook": "false",
        "event-qps": "50",
        "seccomp-default": "false",
    },
    "kube-apiserver": {
        "anonymous-auth": "true",
        "profiling": "true",
        "authorization-mode": "AlwaysAllow",
        "request-timeout": "1m0s",
        "service-account-lookup": "true",
        "service-account-extend-token-expiration": "true",
    },
    "kube-controller-manager": {
        "profiling": "true",
        "terminated-pod-gc-threshold": "12500",
        "bind-address": "0.0.0.0",  # noqa: S104 - a default we judge, nothing binds
        "use-service-account-credentials": "false",
    },
    "kube-scheduler": {"profiling": "true", "bind-address": "0.0.0.0"},  # noqa: S104
    "kube-proxy": {"metrics-bind-address": "127.0.0.1:10249"},
}


def component_default(component: str, flag: str) -> Optional[str]:
    """The value a component runs with when nobody passes `flag` (None: not modelled)."""
    return COMPONENT_DEFAULTS.get(component, {}).get(flag)


ENCRYPTION_CONFIG = "/var/lib/rancher/k3s/server/cred/encryption-config.json"

Args = dict[str, list[str]]  # flag name -> every value, in order


def get_args(defaults: Mapping[str, str], extra: Iterable[str]) -> list[str]:
    """K3s GetArgs: defaults + extra "name[+-]=value" -> sorted "--name=value" list."""
    initial = dict(defaults)
    multi: dict[str, list[str]] = {}
    for raw in extra:
        body = raw[2:] if raw.startswith("--") else raw
        name, sep, value = body.partition("=")
        value = value if sep else "true"
        clean = name.rstrip("+-")
        before = [initial[clean]] if clean in initial else []
        existing = multi.get(clean, [])
        if name.endswith("+"):
            new = [*before, *existing, value]
        elif name.endswith("-"):
            new = [value, *before, *existing]
        else:
            new = [*existing, value]
        initial.pop(clean, None)
        multi[clean] = new
    for name, value in initial.items():
        multi[name] = [value]
    return [f"--{name}={value}" for name in sorted(multi) for value in multi[name]]


def to_args(flags: Iterable[str]) -> Args:
    out: Args = {}
    for flag in flags:
        body = flag.lstrip("-")
        name, sep, value = body.partition("=")
        out.setdefault(name, []).append(value if sep else "true")
    return out


def configured_component_args(
    component: str, k3s_flags: Mapping[str, Sequence[str]], etcd: bool = False
) -> Args:
    """The args K3s starts `component` with on this configuration (`etcd`: K3s runs
    embedded etcd, which adds the apiserver's etcd client TLS flags)."""
    data_dir = _last(k3s_flags, "data-dir") or DATA_DIR
    templates = dict(DATA_DIR_DEFAULTS.get(component, {}))
    if etcd and component == "kube-apiserver":
        templates.update(ETCD_DEFAULTS)
    defaults = dict(DEFAULTS.get(component, {}))
    defaults.update({flag: path.format(data_dir=data_dir) for flag, path in templates.items()})
    if component == "kube-apiserver" and _is_true(_last(k3s_flags, "secrets-encryption")):
        defaults["encryption-provider-config"] = f"{data_dir}/server/cred/encryption-config.json"
        defaults["encryption-provider-config-automatic-reload"] = "true"
    if component == "kubelet" and _is_true(_last(k3s_flags, "protect-kernel-defaults")):
        defaults["protect-kernel-defaults"] = "true"
    if component == "kubelet":
        defaults.update(kubelet_tls_defaults(_last(k3s_flags, "data-dir") or "/var/lib/rancher/k3s"))
    return to_args(get_args(defaults, k3s_flags.get(EXTRA_ARG_FLAG[component], ())))


def kubelet_tls_defaults(data_dir: str) -> dict[str, str]:
    """The kubelet's CA and serving certificate K3s always passes (pkg/daemons/agent
    kubeletArgs: `client-ca-file` = ClientCA, `tls-cert-file`/`tls-private-key-file` =
    ServingKubeletCert/Key, all under <data-dir>/agent; CIS 4.2.3 and 4.2.9)."""
    agent = f"{data_dir.rstrip('/')}/agent"
    return {
        "client-ca-file": f"{agent}/client-ca.crt",
        "tls-cert-file": f"{agent}/serving-kubelet.crt",
        "tls-private-key-file": f"{agent}/serving-kubelet.key",
    }


def _last(flags: Mapping[str, Sequence[str]], name: str) -> Optional[str]:
    values = flags.get(name)
    return values[-1] if values else None


# -- the log line --------------------------------------------------------------------------

_RUNNING = re.compile(
    r"Running (kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy) (.*)$"
)
_LOGRUS_MSG = re.compile(r'(?:^|\s)msg=("(?:[^"\\]|\\.)*")')


def parse_running_line(message: str) -> Optional[tuple[str, Args]]:
    """(component, args) from a `Running <component> --a=b ...` journal message."""
    text = message
    match = _LOGRUS_MSG.search(message)
    if match:
        try:
            text = json.loads(match.group(1))  # Go %q escapes are JSON-compatible for this text
        except ValueError:
            text = match.group(1)[1:-1]
    found = _RUNNING.search(text)
    if not found:
        return None
    return found.group(1), split_logged_args(found.group(2))


def split_logged_args(text: str) -> Args:
    """ArgString joins with single spaces and no quoting: a value may hold spaces, so
    split only where a new "--flag" starts."""
    flags = [part for part in re.split(r"(?:^| )(?=--[A-Za-z0-9])", text.strip()) if part]
    return to_args(flags)


# -- semantic comparison ------------------------------------------------------------------

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_bool(value: str) -> Optional[bool]:
    """strconv.ParseBool, which urfave/cli and pflag use for boolean flags."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    return None


def _is_true(value: Optional[str]) -> bool:
    return value is not None and go_bool(value) is True


def go_duration(value: str) -> Optional[float]:
    """time.ParseDuration in seconds ("5m" == "5m0s" == "300s"), None if not a duration."""
    if value in ("0",):
        return 0.0
    if not _DURATION.match(value):
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def normalize_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def same_value(want: Any, seen: str, ordered: bool = False) -> bool:
    """want == seen the way the component reads them: bool spellings, durations,
    comma lists as sets unless order matters."""
    want_text = normalize_scalar(want)
    if want_text == seen:
        return True
    want_bool, seen_bool = go_bool(want_text), go_bool(seen)
    if want_bool is not None and seen_bool is not None:
        return want_bool == seen_bool
    want_dur, seen_dur = go_duration(want_text), go_duration(seen)
    if want_dur is not None and seen_dur is not None:
        return abs(want_dur - seen_dur) < 1e-9
    if "," in want_text or "," in seen:
        want_list, seen_list = split_list(want_text), split_list(seen)
        if ordered:
            return want_list == seen_list
        return set(want_list) == set(seen_list)
    return False


def list_members(values: Sequence[str]) -> set[str]:
    """Every member of a list flag given (possibly) more than once."""
    return {member for value in values for member in split_list(value)}
