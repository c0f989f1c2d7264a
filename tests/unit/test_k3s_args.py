"""K3s component args (GetArgs), the logged Running lines, semantic comparison, unit parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.k3s import args as k3sargs
from k3s_agent.k3s import unit as k3sunit


# The cases of k3s-io/k3s pkg/util/args_test.go Test_UnitGetArgs, re-stated.
@pytest.mark.parametrize(
    ("defaults", "extra", "want"),
    [
        ({"aaa": "A", "bbb": "B"}, ["bbb=BB", "iii=II"], ["--aaa=A", "--bbb=BB", "--iii=II"]),
        ({"aaa": "A", "bbb": "B"}, ["--bbb=BB"], ["--aaa=A", "--bbb=BB"]),
        (
            {"aaa": "A", "bbb": "B"},
            ["--ccc=C", "--bbb=DD", "--bbb=AA"],
            ["--aaa=A", "--bbb=DD", "--bbb=AA", "--ccc=C"],
        ),
        ({"aaa": "A", "bbb": "B"}, ["--ccc=C", "--bbb-=DD"], ["--aaa=A", "--bbb=DD", "--bbb=B", "--ccc=C"]),
        ({"aaa": "A", "bbb": "B"}, ["--ccc=C", "--bbb+=DD"], ["--aaa=A", "--bbb=B", "--bbb=DD", "--ccc=C"]),
        ({}, ["flag"], ["--flag=true"]),
    ],
)
def test_get_args(defaults: dict[str, str], extra: list[str], want: list[str]):
    assert k3sargs.get_args(defaults, extra) == want


def test_configured_apiserver_args_from_k3s_flags():
    flags = {
        "secrets-encryption": ("true",),
        "kube-apiserver-arg": ("enable-admission-plugins+=EventRateLimit", "anonymous-auth=true"),
    }
    got = k3sargs.configured_component_args("kube-apiserver", flags)
    assert got["enable-admission-plugins"] == ["NodeRestriction", "EventRateLimit"]
    assert got["anonymous-auth"] == ["true"]
    assert got["encryption-provider-config"] == ["/var/lib/rancher/k3s/server/cred/encryption-config.json"]
    kubelet = k3sargs.configured_component_args("kubelet", {"protect-kernel-defaults": ("1",)})
    assert kubelet["protect-kernel-defaults"] == ["true"]


def test_parse_logrus_running_line():
    message = (
        'time="2026-01-01T00:00:00Z" level=info msg="Running kube-apiserver --anonymous-auth=false '
        "--audit-policy-file=/var/lib/rancher/k3s/server/audit.yaml --authorization-mode=Node,RBAC "
        '--enable-admission-plugins=NodeRestriction --enable-admission-plugins=EventRateLimit --x=a b"'
    )
    component, args = k3sargs.parse_running_line(message)
    assert component == "kube-apiserver"
    assert args["authorization-mode"] == ["Node,RBAC"]
    assert args["enable-admission-plugins"] == ["NodeRestriction", "EventRateLimit"]
    assert args["x"] == ["a b"]  # ArgString does not quote: values with spaces survive
    assert k3sargs.parse_running_line("Running kubelet --read-only-port=0")[1] == {"read-only-port": ["0"]}
    assert k3sargs.parse_running_line("Starting k3s v1.31") is None


@pytest.mark.parametrize(
    ("want", "seen", "ordered", "same"),
    [
        ("RBAC,Node", "Node,RBAC", False, True),
        ("RBAC,Node", "Node,RBAC", True, False),
        ("RBAC,Node", "Node", False, False),
        (False, "false", False, True),
        ("false", "0", False, True),
        ("true", "T", False, True),
        ("true", "yes", False, False),  # not a Go bool spelling
        ("5m", "5m0s", False, True),
        ("5m", "300s", False, True),
        ("5m", "4h", False, False),
        ("100", "100", False, True),
        ("100", "1000", False, False),
        ("VersionTLS12", "VersionTLS13", False, False),
    ],
)
def test_same_value(want: object, seen: str, ordered: bool, same: bool):
    assert k3sargs.same_value(want, seen, ordered) is same


def test_install_script_unit(tmp_path: Path):
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "k3s.service").write_text(
        "[Service]\nType=notify\nEnvironment=A=1 'B=two words'\n"
        "EnvironmentFile=-/etc/default/%N\nEnvironmentFile=-/etc/systemd/system/k3s.service.env\n"
        "ExecStart=/usr/local/bin/k3s \\\n    server \\\n\t'--tls-san' '10.0.0.1' \\\n"
        "\t'--kube-apiserver-arg=audit-log-path=/var/log/a b.log' \\\n"
    )
    (unit_dir / "k3s.service.env").write_text("K3S_TOKEN='secret'\n# comment\nB=three\n")
    (unit_dir / "k3s.service.d").mkdir()
    (unit_dir / "k3s.service.d/10-x.conf").write_text(
        "[Service]\nExecStart=\nExecStart=-/usr/local/bin/k3s server --debug\n"
    )
    got = k3sunit.load_unit(Host(root=str(tmp_path)), "k3s.service")
    assert got.exec_start == ("/usr/local/bin/k3s", "server", "--debug")
    assert got.environment == {"A": "1", "B": "three", "K3S_TOKEN": "secret"}
    assert got.role == "server"
    (unit_dir / "k3s.service.d/10-x.conf").unlink()
    got = k3sunit.load_unit(Host(root=str(tmp_path)), "k3s.service")
    assert got.exec_start[2:] == (
        "--tls-san",
        "10.0.0.1",
        "--kube-apiserver-arg=audit-log-path=/var/log/a b.log",
    )
    assert k3sunit.load_unit(Host(root=str(tmp_path)), "k3s-agent.service") is None
