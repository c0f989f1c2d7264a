"""k3s_args semantics that match the benchmark: cipher subsets, component defaults,
numeric minimums, a benchmark's weaker requirement, and each flag once in the drop-in."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from k3s_agent.controls import k3s_args
from k3s_agent.controls.k3s_args import desired_settings, judge
from k3s_agent.k3s import args as k3sargs
from k3s_agent.k3s.config import Configured

A128 = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
R128 = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
A256 = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
R256 = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
CHACHA = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
CBC = "TLS_RSA_WITH_AES_128_CBC_SHA"
OURS = [A128, R128, A256, R256]


@pytest.mark.parametrize(
    ("values", "ok", "why"),
    [
        ([",".join(OURS)], True, ""),
        ([f"{A128},{R128}"], True, ""),  # the seed guide's two suites: a subset
        ([f"{R256},{A128}"], True, ""),  # order does not matter
        ([A128], True, ""),
        ([A128, R128], True, ""),  # the flag given twice: pflag adds the lists up
        ([f"{A128},{CHACHA}"], False, f"has {CHACHA}, not in the allowed list"),
        ([f"{A128},{CBC}"], False, f"has {CBC}, not in the allowed list"),
        ([A128, CBC], False, f"has {CBC}, not in the allowed list"),
        ([], False, "not set (want a subset of the allowed list)"),
        (None, False, "not set (want a subset of the allowed list)"),
    ],
)
def test_cipher_suites_are_a_subset(values: Optional[list[str]], ok: bool, why: str):
    got = judge(values, {"subset_of": OURS}, "tls-cipher-suites")
    assert (got.ok, got.why) == (ok, why)


# (component, flag, item, configured values, ok, why or observed)
DEFAULT_CASES: list[tuple[str, str, dict[str, Any], Optional[list[str]], bool, str]] = [
    ("kubelet", "make-iptables-util-chains", {"value": True}, None, True, "true (default)"),
    ("kubelet", "make-iptables-util-chains", {"value": True}, ["false"], False, "is false (want true)"),
    ("kubelet", "anonymous-auth", {"value": False}, None, False, "not set, default true (want false)"),
    ("kubelet", "anonymous-auth", {"value": False}, ["false"], True, "false"),
    ("kubelet", "read-only-port", {"value": 0}, None, False, "not set, default 10255 (want 0)"),
    (
        "kubelet",
        "authorization-mode",
        {"forbidden": ["AlwaysAllow"]},
        None,
        False,
        "has forbidden AlwaysAllow (its default)",
    ),
    (
        "kubelet",
        "streaming-connection-idle-timeout",
        {"value": "5m"},
        None,
        False,
        "not set, default 4h0m0s (want 5m)",
    ),
    (
        "kubelet",
        "streaming-connection-idle-timeout",
        {"forbidden": ["0", "0s"]},
        None,
        True,
        "4h0m0s (default)",
    ),
    (
        "kubelet",
        "streaming-connection-idle-timeout",
        {"forbidden": ["0", "0s"]},
        ["0"],
        False,
        "has forbidden 0",
    ),
    ("kube-apiserver", "profiling", {"value": False}, None, False, "not set, default true (want false)"),
    (
        "kube-apiserver",
        "request-timeout",
        {"set": True},
        None,
        False,
        "not set",
    ),  # the default does not count
    ("kube-apiserver", "request-timeout", {"value": "60s"}, None, True, "1m0s (default)"),
    ("kube-apiserver", "audit-log-maxage", {"at_least": 30}, ["45"], True, "45"),
    ("kube-apiserver", "audit-log-maxage", {"at_least": 30}, ["7"], False, "is 7 (want >= 30)"),
    ("kube-apiserver", "audit-log-maxage", {"at_least": 30}, ["x"], False, "is x (want >= 30)"),
    ("kube-apiserver", "audit-log-maxage", {"at_least": 30}, None, False, "not set (want >= 30)"),
    ("kube-controller-manager", "terminated-pod-gc-threshold", {"set": True}, None, False, "not set"),
    ("kube-scheduler", "profiling", {"value": False}, ["false"], True, "false"),
    ("kube-apiserver", "token-auth-file", {"forbidden": ["*"]}, None, True, "None"),
]


@pytest.mark.parametrize(("component", "flag", "item", "values", "ok", "text"), DEFAULT_CASES)
def test_unset_flags_are_judged_by_the_component_default(
    component: str, flag: str, item: dict[str, Any], values: Optional[list[str]], ok: bool, text: str
):
    got = judge(values, item, flag, k3sargs.component_default(component, flag))
    assert got.ok is ok
    assert (str(got.observed) if ok else got.why) == text
    assert got.by_default is (ok and not values and "default" in text)


def test_defaults_table_holds_the_upstream_defaults():
    kubelet = k3sargs.COMPONENT_DEFAULTS["kubelet"]
    assert kubelet["make-iptables-util-chains"] == "true"
    assert kubelet["anonymous-auth"] == "true"  # K3s passes false; the kubelet's own is true
    assert kubelet["read-only-port"] == "10255"
    assert k3sargs.component_default("kube-apiserver", "profiling") == "true"
    assert k3sargs.component_default("kubelet", "no-such-flag") is None
    assert k3sargs.component_default("k3s", "secrets-encryption") is None


def _base(flags: dict[str, tuple[str, ...]]) -> Configured:
    return Configured("server", (), flags, (), "/etc/rancher/k3s/config.yaml")


PLUGINS = {"contains": ["NodeRestriction", "EventRateLimit"], "forbidden": ["AlwaysAdmit"]}


# (operator's kube-apiserver-arg entries in earlier config files, items, expected list we write)
ONCE_CASES: list[tuple[list[str], dict[str, dict[str, Any]], list[str]]] = [
    (  # the seed guide's plugins: merged into ONE flag, its other args carried over
        ["enable-admission-plugins=NodeRestriction,PodSecurity", "anonymous-auth=false"],
        {"kube-apiserver:enable-admission-plugins": PLUGINS},
        ["anonymous-auth=false", "enable-admission-plugins=EventRateLimit,NodeRestriction,PodSecurity"],
    ),
    (  # an operator's "+=" entry for the same flag goes too: our value holds its members
        ["enable-admission-plugins+=PodSecurity", "request-timeout=60s"],
        {
            "kube-apiserver:enable-admission-plugins": PLUGINS,
            "kube-apiserver:request-timeout": {"value": "300s"},
        },
        ["enable-admission-plugins=EventRateLimit,NodeRestriction,PodSecurity", "request-timeout=300s"],
    ),
    (  # nothing of the operator's: just ours
        [],
        {"kube-apiserver:audit-log-maxage": {"at_least": 30}},
        ["audit-log-maxage=30"],
    ),
    (  # entries for flags we do not touch stay, in their order
        ["--audit-log-path=/var/log/a.log", "tls-min-version=VersionTLS12"],
        {"kube-apiserver:audit-log-maxsize": {"at_least": 100}},
        ["--audit-log-path=/var/log/a.log", "tls-min-version=VersionTLS12", "audit-log-maxsize=100"],
    ),
    (  # a passing item writes nothing (and carries nothing)
        ["profiling=false"],
        {"kube-apiserver:profiling": {"value": False}},
        [],
    ),
]


@pytest.mark.parametrize(("carried", "items", "want"), ONCE_CASES)
def test_each_flag_is_written_once(carried: list[str], items: dict[str, dict[str, Any]], want: list[str]):
    base = _base({"kube-apiserver-arg": tuple(carried)})
    out = desired_settings(items, base, {"kube-apiserver-arg": carried})
    assert out.get("kube-apiserver-arg", []) == want
    assert "kube-apiserver-arg+" not in out  # a whole list that replaces, never an append
    names = [k3s_args._arg_name(entry) for entry in want]
    assert len(names) == len(set(names))
    # What K3s then runs: every flag once.
    running = k3sargs.configured_component_args("kube-apiserver", {"kube-apiserver-arg": tuple(want)})
    assert all(len(values) == 1 for values in running.values())


def test_cipher_remedy_writes_the_allowed_list():
    out = desired_settings({"kubelet:tls-cipher-suites": {"subset_of": OURS}}, _base({}), {})
    assert out == {"kubelet-arg": ["tls-cipher-suites=" + ",".join(OURS)]}


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"subset_of": ["A"]}, None),
        ({"set": True}, None),
        ({"forbidden": ["0"], "ordered": True}, None),
        ({}, "says nothing"),
        ({"valid": ["A"]}, "unknown key 'valid'"),
        ({"subset_of": "A"}, "subset_of: expected an array of strings"),
        ({"at_least": True}, "at_least: expected a number"),
        ({"set": "yes"}, "set: expected true or false"),
        # one requirement table per benchmark name
        ({"k3s-cis-1.8": {"subset_of": ["A"]}, "k3s-cis-1.10": {"set": True}}, None),
        ({"k3s-cis-1.8": {"subset_of": "A"}}, "k3s-cis-1.8: subset_of: expected an array of strings"),
        ({"k3s-cis-1.8": {}}, "k3s-cis-1.8: says nothing"),
        ({"k3s-cis-1.8": ["A"]}, "k3s-cis-1.8: expected a table"),
        ({"k3s-cis-1.8": {"set": True}, "subset_of": ["A"]}, "unknown key 'k3s-cis-1.8'"),  # mixed
        ({"k3s-cis-2.0": {"set": True}}, "unknown key 'k3s-cis-2.0'"),
    ],
)
def test_benchmark_table_is_checked(table: dict[str, Any], problem: Optional[str]):
    got = k3s_args._benchmark_check(table)
    assert got is None if problem is None else problem in str(got)


PER_BENCHMARK = {"subset_of": ["A"], "benchmark": {"k3s-cis-1.8": {"subset_of": ["A", "B"]}}}


@pytest.mark.parametrize(
    ("item", "benchmark", "want"),
    [
        (PER_BENCHMARK, "k3s-cis-1.8", {"subset_of": ["A"], "benchmark": {"subset_of": ["A", "B"]}}),
        (PER_BENCHMARK, "k3s-cis-1.12", {"subset_of": ["A"]}),  # the item is that benchmark's own
        ({"subset_of": ["A"], "benchmark": {"set": True}}, "k3s-cis-1.12", None),  # one table: all
        ({"value": 1}, "k3s-cis-1.8", None),
    ],
)
def test_benchmark_table_of_the_benchmark_in_force(item: dict[str, Any], benchmark: str, want: Any):
    assert k3s_args._for_benchmark(item, benchmark) == (item if want is None else want)


ETCD_CA = {"value": "/etc/pki/etcd-ca.crt", "when": "embedded-etcd"}
K3S_ETCD_CA = "/var/lib/rancher/k3s/server/tls/etcd/server-ca.crt"


@pytest.mark.parametrize(
    ("item", "etcd", "want"),
    [
        # sqlite/kine: the item is absent there, so never written (the apiserver would try TLS to kine)
        (ETCD_CA, False, {}),
        (ETCD_CA, True, {"kube-apiserver-arg": ["etcd-cafile=/etc/pki/etcd-ca.crt"]}),
        # embedded etcd: K3s passes its own CA, which already holds
        ({"value": K3S_ETCD_CA, "when": "embedded-etcd"}, True, {}),
        ({"set": True, "when": "embedded-etcd"}, True, {}),
    ],
)
def test_embedded_etcd_items_are_written_only_with_embedded_etcd(item: dict[str, Any], etcd: bool, want: Any):
    out = desired_settings({"kube-apiserver:etcd-cafile": item}, _base({}), {}, etcd=etcd)
    assert out == want
