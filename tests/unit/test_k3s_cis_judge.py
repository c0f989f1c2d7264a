"""judge() as the node-level CIS checks need it, and the etcd config reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pytest

from k3s_agent.controls.k3s_args import _key_check, judge
from k3s_agent.host import Host
from k3s_agent.k3s import args as k3sargs
from k3s_agent.k3s import etcd

ROTATE = {"forbidden": ["false"], "unset_ok": True}
RKSC = "RotateKubeletServerCertificate"
GATE = {"forbidden": [f"{RKSC}=false"]}

# (flag, item, values (None: not passed), ok, why when not ok)
CASES = [
    ("rotate-certificates", ROTATE, None, True, ""),  # the kubelet default (false) does not count
    ("rotate-certificates", ROTATE, ["true"], True, ""),
    ("rotate-certificates", ROTATE, ["false"], False, "has forbidden false"),
    ("rotate-certificates", ROTATE, ["0"], False, "has forbidden false"),  # strconv.ParseBool
    ("rotate-certificates", ROTATE, ["F"], False, "has forbidden false"),
    ("rotate-certificates", {"forbidden": ["false"]}, None, False, "has forbidden false (its default)"),
    ("feature-gates", GATE, None, True, ""),
    ("feature-gates", GATE, [f"{RKSC}=true"], True, ""),
    ("feature-gates", GATE, [f"A=false,{RKSC}=0"], False, f"has forbidden {RKSC}=false"),
    ("feature-gates", GATE, [f"{RKSC}=false", "A=true"], False, f"has forbidden {RKSC}=false"),
    ("feature-gates", GATE, ["Other=false"], True, ""),  # another gate off: not this check
    ("client-ca-file", {"set": True}, ["/var/lib/rancher/k3s/agent/client-ca.crt"], True, ""),
    ("client-ca-file", {"set": True}, [""], False, "not set"),  # --client-ca-file= leaves it off
    ("client-ca-file", {"set": True}, None, False, "not set"),
    # given twice, the last wins (pflag): an empty last value leaves it off
    ("client-ca-file", {"set": True}, ["/var/lib/rancher/k3s/agent/client-ca.crt", ""], False, "not set"),
    ("client-ca-file", {"set": True}, ["", "/var/lib/rancher/k3s/agent/client-ca.crt"], True, ""),
    ("event-qps", {"at_least": 0}, ["0"], True, ""),
    ("event-qps", {"at_least": 0}, ["-1"], False, "is -1 (want >= 0)"),
    ("streaming-connection-idle-timeout", {"forbidden": ["0", "0s"]}, ["0m"], False, "has forbidden 0"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "item", "values", "ok", "why"), CASES)
def test_judge(flag: str, item: dict[str, Any], values: Optional[list[str]], ok: bool, why: str):
    got = judge(values, item, flag, k3sargs.component_default("kubelet", flag))
    assert (got.ok, got.why if not ok else "") == (ok, why)


def test_unset_ok_says_why_it_passes():
    assert (
        judge(None, ROTATE, "rotate-certificates", "false").why
        == "not set: the benchmark passes an unset flag"
    )


CONFIG = "/var/lib/rancher/k3s/server/db/etcd/config"
CTS = "client-transport-security"


def _write(root: Path, text: str) -> None:
    path = root / CONFIG.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "field", "values"),
    [
        (f"{CTS}:\n  client-cert-auth: true\n", f"{CTS}.client-cert-auth", ["true"]),
        (f"{CTS}:\n  cert-file: ''\n", f"{CTS}.cert-file", None),  # K3s marshals unset strings as ""
        (f"{CTS}:\n  cert-file: /x.crt\n", f"{CTS}.key-file", None),
        (f"{CTS}: null\n", f"{CTS}.auto-tls", None),
        ("peer-transport-security: [a]\n", "peer-transport-security.auto-tls", None),
        ("heartbeat-interval: 500\n", "heartbeat-interval", ["500"]),
    ],
)  # fmt: skip
def test_etcd_fields(tmp_path: Path, text: str, field: str, values: Optional[list[str]]):
    _write(tmp_path, text)
    conf = etcd.read_config(Host(root=str(tmp_path)), "/var/lib/rancher/k3s")
    assert conf is not None and conf.error == "" and conf.values(field) == values


def test_etcd_config_absent_is_none_and_refusals_name_the_file(tmp_path: Path):
    host = Host(root=str(tmp_path))
    assert etcd.read_config(host, "/var/lib/rancher/k3s/") is None
    _write(tmp_path, "x" * (etcd.READ_LIMIT + 1))
    conf = etcd.read_config(host, "/var/lib/rancher/k3s")
    assert conf is not None and conf.data is None and conf.error.startswith(f"{CONFIG}: larger than")
    os.unlink(tmp_path / CONFIG.lstrip("/"))
    os.mkfifo(tmp_path / CONFIG.lstrip("/"))  # would block a plain open(): refused at once
    conf = etcd.read_config(host, "/var/lib/rancher/k3s")
    assert conf is not None and conf.error == f"{CONFIG}: not a regular file"


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("etcd:client-transport-security.client-cert-auth", True),
        ("etcd:name", True),
        ("etcd:peer-transport-security..cert-file", False),
        ("etcd:peer-transport-security.", False),
        ("kubelet:feature-gates", True),
        ("kubelet:authentication.x509", False),  # dotted fields are etcd's only
        ("etcdctl:x", False),
    ],
)
def test_item_keys(key: str, ok: bool):
    assert (_key_check(key) is None) is ok
