# ruff: noqa: E501  (tables of cases: one case per line)
"""k3s_args semantics the CIS control-plane checks need: `set` wants a value, `matches`,
several items per flag (#label keys), manual items, K3s's own data-dir defaults,
and per-benchmark `cis` tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from k3s_agent import report_junit, report_kubebench
from k3s_agent.controls import k3s_args
from k3s_agent.controls.k3s_args import desired_settings, judge, split_key
from k3s_agent.host import Host
from k3s_agent.k3s import args as k3sargs
from k3s_agent.k3s.config import Configured
from k3s_agent.policy import benchmark as bench
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.schema import PolicyError

LOCALHOST = r"127\.0\.0\.1(:[0-9]+)?"

# (item, values (None: unset), component default, ok, why)
JUDGE_CASES: list[tuple[dict[str, Any], Optional[list[str]], Optional[str], bool, str]] = [
    ({"set": True}, ["/x.crt"], None, True, ""),
    ({"set": True}, [""], None, False, "not set"),  # "--tls-cert-file=" sets nothing
    ({"set": True}, None, "/default", False, "not set"),  # a default is not the flag
    ({"set": False}, None, None, True, ""),
    ({"set": False}, [""], None, False, "must not be set"),  # kube-bench: present at all
    ({"set": False}, ["/etc/tokens.csv"], None, False, "must not be set"),
    ({"matches": LOCALHOST}, ["127.0.0.1:10249"], None, True, ""),
    ({"matches": LOCALHOST}, ["127.0.0.1"], None, True, ""),
    ({"matches": LOCALHOST}, ["0.0.0.0:10249"], None, False, rf"is 0.0.0.0:10249 (want matching {LOCALHOST})"),
    ({"matches": LOCALHOST}, ["127.0.0.10:1"], None, False, rf"is 127.0.0.10:1 (want matching {LOCALHOST})"),
    ({"matches": LOCALHOST}, None, "127.0.0.1:10249", True, ""),
    ({"matches": LOCALHOST}, None, None, False, f"not set (want matching {LOCALHOST})"),
    ({"forbidden": ["RotateKubeletServerCertificate=false"]}, ["A=true,RotateKubeletServerCertificate=false"], None, False, "has forbidden RotateKubeletServerCertificate=false"),
    ({"forbidden": ["RotateKubeletServerCertificate=false"]}, ["RotateKubeletServerCertificate=true"], None, True, ""),
]  # fmt: skip


@pytest.mark.parametrize(("item", "values", "default", "ok", "why"), JUDGE_CASES)
def test_judge(item: dict[str, Any], values: Optional[list[str]], default: Optional[str], ok: bool, why: str):
    got = judge(values, item, "flag", default)
    assert (got.ok, got.why) == (ok, why)


@pytest.mark.parametrize(
    ("key", "split", "problem"),
    [
        ("kube-apiserver:enable-admission-plugins", ("kube-apiserver", "enable-admission-plugins"), None),
        ("kube-apiserver:enable-admission-plugins#AlwaysPullImages", ("kube-apiserver", "enable-admission-plugins"), None),
        ("kubelet:seccomp-default#a.b-c_1", ("kubelet", "seccomp-default"), None),
        ("kube-apiserver:enable-admission-plugins#", None, "is not <component>:<flag>"),
        ("kube-apiserver:x#bad label", None, "is not <component>:<flag>"),
    ],
)  # fmt: skip
def test_item_keys_may_carry_a_label(key: str, split: Optional[tuple[str, str]], problem: Optional[str]):
    got = k3s_args._key_check(key)
    assert got is None if problem is None else problem in got
    if split:
        assert split_key(key) == split


def _configured(flags: dict[str, tuple[str, ...]]) -> Configured:
    return Configured("server", (), flags, (), "/etc/rancher/k3s/config.yaml")


def test_k3s_passes_its_certificates_under_its_data_dir():
    api = k3sargs.configured_component_args("kube-apiserver", {"data-dir": ("/srv/k3s",)})
    assert api["kubelet-client-certificate"] == ["/srv/k3s/server/tls/client-kube-apiserver.crt"]
    assert api["client-ca-file"] == ["/srv/k3s/server/tls/client-ca.crt"]
    assert "etcd-cafile" not in api  # kine (sqlite) needs no etcd client TLS
    etcd = k3sargs.configured_component_args("kube-apiserver", {}, etcd=True)
    assert etcd["etcd-certfile"] == ["/var/lib/rancher/k3s/server/tls/etcd/client.crt"]
    kcm = k3sargs.configured_component_args(
        "kube-controller-manager", {"kube-controller-manager-arg": ("root-ca-file=",)}
    )
    assert kcm["root-ca-file"] == [""] and kcm["use-service-account-credentials"] == ["true"]


def test_manual_items_are_never_written_and_a_label_does_not_reach_the_flag():
    items = {
        "kube-apiserver:enable-admission-plugins": {"contains": ["NodeRestriction"]},
        "kube-apiserver:enable-admission-plugins#AlwaysPullImages": {"contains": ["AlwaysPullImages"], "manual": True},
        "kubelet:seccomp-default": {"value": True, "manual": True},
        "kube-apiserver:token-auth-file": {"set": False},
    }  # fmt: skip
    out = desired_settings(
        items, _configured({"kube-apiserver-arg": ("enable-admission-plugins=PodSecurity",)})
    )
    assert out == {"kube-apiserver-arg": ["enable-admission-plugins=NodeRestriction,PodSecurity"]}


# -- policy: lint and the cis field ---------------------------------------------------------


def _control(items: dict[str, dict[str, Any]]):
    policy = compose(
        Host(root="/nonexistent"),
        [Layer("p.toml", {"extends": "none", "controls": {"k3s_args": {"items": items}}})],
    )
    return policy.controls["k3s_args"]  # fmt: skip


def test_only_one_item_per_flag_may_be_enforced():
    flag = "kube-apiserver:enable-admission-plugins"
    fine = {flag: {"contains": ["NodeRestriction"]}, f"{flag}#X": {"contains": ["X"], "manual": True}}
    assert set(_control(fine).items) == set(fine)
    twice = {flag: {"contains": ["NodeRestriction"]}, f"{flag}#X": {"contains": ["X"]}}
    with pytest.raises(
        PolicyError, match=r"#X\": judges the same flag as kube-apiserver:enable-admission-plugins"
    ):
        _control(twice)


@pytest.mark.parametrize(
    ("cis", "problem"),
    [
        ("1.2.2", None),
        ({"k3s-cis-1.12": "1.2.30"}, None),
        ({}, "names no benchmark"),
        ({"k3s-cis-1.11": "1.2.30"}, "unknown benchmark 'k3s-cis-1.11'"),
        ({"k3s-cis-1.12": ""}, "expected a check id string"),
        ({"k3s-cis-1.12": 5}, "expected a check id string"),
        ("  ", "must not be empty"),
    ],
)
def test_cis_value_is_checked(cis: Any, problem: Optional[str]):
    got = bench.check_cis_value(cis)
    assert got is None if problem is None else problem in got


def test_a_bad_cis_table_is_refused_naming_file_and_key():
    with pytest.raises(PolicyError, match=r"p\.toml.*unknown benchmark 'k3s-cis-2\.0'"):
        _control({"kubelet:seccomp-default": {"value": True, "cis": {"k3s-cis-2.0": "4.2.14"}}})


# The ids a finding carries per benchmark in force: profile strings are 1.8 ids (mapped),
# tables name each benchmark's own id, an operator's string is kept as written.
ID_TABLE = [
    ("profile", "1.2.22", "k3s-cis-1.8", "1.2.22"),
    ("profile", "1.2.22", "k3s-cis-1.10", "1.2.21"),
    ("profile", {"k3s-cis-1.12": "1.2.30"}, "k3s-cis-1.12", "1.2.30"),
    ("profile", {"k3s-cis-1.12": "1.2.30"}, "k3s-cis-1.10", None),
    ("profile", {"k3s-cis-1.9": "4.3.1", "k3s-cis-1.12": "4.3.1"}, "k3s-cis-1.8", None),
    ("local", "1.2.22", "k3s-cis-1.10", "1.2.22"),
    ("local", {"k3s-cis-1.10": "1.2.21"}, "k3s-cis-1.10", "1.2.21"),
    ("local", {"k3s-cis-1.10": "1.2.21"}, "k3s-cis-1.12", None),
]


@pytest.mark.parametrize(("layer", "cis", "benchmark", "want"), ID_TABLE)
def test_ids_per_benchmark(layer: str, cis: Any, benchmark: str, want: Optional[str]):
    data = {"controls": {"k3s_args": {"items": {"k": {"value": 1, "cis": cis}}}}}
    item = bench.map_layer_ids(data, benchmark, profile=layer == "profile")["controls"]["k3s_args"]["items"][
        "k"
    ]
    assert item.get("cis") == want
    assert data["controls"]["k3s_args"]["items"]["k"]["cis"] == cis  # the layer is not mutated


@pytest.mark.parametrize(
    ("benchmark", "ids"),
    [
        ("k3s-cis-1.8", {"kube-apiserver:service-account-lookup": "1.2.22", "kube-proxy:metrics-bind-address": None}),
        ("k3s-cis-1.9", {"kube-apiserver:service-account-lookup": "1.2.21", "kube-proxy:metrics-bind-address": "4.3.1"}),
        ("k3s-cis-1.12", {"kube-apiserver:service-account-extend-token-expiration": "1.2.30", "kubelet:seccomp-default": "4.2.14"}),
    ],
)  # fmt: skip
def test_a_pinned_benchmark_gives_the_profile_its_ids(tmp_path: Path, benchmark: str, ids: dict[str, Any]):
    policy = compose(
        Host(root=str(tmp_path)), [Layer("p.toml", {"extends": "k3s-cis-server", "benchmark": benchmark})]
    )
    items = policy.controls["k3s_args"].items
    assert {key: items[key].get("cis") for key in ids} == ids


def test_reports_show_a_manual_check_as_kube_bench_does():
    finding = {
        "control": "k3s_args",
        "key": "kube-apiserver:enable-admission-plugins#AlwaysPullImages",
        "status": "manual",
        "desired": "contains AlwaysPullImages",
        "observed": "NodeRestriction",
        "message": "manual check, reported for review (never required or remediated): not met",
        "cis": "1.2.11",
    }
    document = {
        "policy": {"benchmark": "k3s-cis-1.12"},
        "controls": [{"name": "k3s_args", "findings": [finding]}],
    }
    check = report_kubebench.build(document)["Controls"][0]["tests"][0]["results"][0]
    assert (check["test_number"], check["status"], check["type"], check["scored"]) == (
        "1.2.11",
        "WARN",
        "manual",
        False,
    )
    xml = report_junit.render(document)
    assert '<skipped message="manual: manual check, reported for review' in xml and "<failure" not in xml


@pytest.mark.parametrize(
    ("cis", "state", "scored", "desc"),
    [
        ("1.2.9", "WARN", False, "Ensure that the admission control plugin EventRateLimit is set (Manual)"),
        ("1.2.15", "FAIL", True, "Ensure that the --profiling argument is set to false (Automated)"),
        ("9.9.9", "FAIL", True, "k3s-agentd k3s_args: item"),  # not in the catalog: our own words
    ],
)
def test_kube_bench_scores_as_the_benchmark_in_force_does(cis: str, state: str, scored: bool, desc: str):
    finding = {"control": "k3s_args", "key": "item", "status": "drift", "message": "bad", "cis": cis}
    document = {
        "policy": {"benchmark": "k3s-cis-1.10"},
        "controls": [{"name": "k3s_args", "findings": [finding]}],
    }
    check = report_kubebench.build(document)["Controls"][0]["tests"][0]["results"][0]
    assert (check["status"], check["scored"]) == (state, scored)
    assert check["test_desc"].startswith(desc)
