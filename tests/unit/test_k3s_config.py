"""Configured K3s arguments: config.yaml + config.yaml.d merged like K3s (pkg/configfilearg)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.k3s import config as k3sconfig
from k3s_agent.k3s.config import ConfigError, configured

CFG = "etc/rancher/k3s/config.yaml"
D = "etc/rancher/k3s/config.yaml.d"
K3S = "/usr/local/bin/k3s"

# (id, files {relative path: text}, ExecStart argv, env, expected flags after the subcommand)
CASES = [
    ("nothing", {}, [K3S, "server"], {}, []),
    ("scalar", {CFG: "node-name: n1\n"}, [K3S, "server"], {}, ["--node-name=n1"]),
    ("bool", {CFG: "secrets-encryption: true\n"}, [K3S, "server"], {}, ["--secrets-encryption=true"]),
    (
        "yaml11-yes",
        {CFG: "protect-kernel-defaults: yes\n"},
        [K3S, "server"],
        {},
        ["--protect-kernel-defaults=true"],
    ),
    (
        "list-repeats",
        {CFG: "tls-san:\n  - a\n  - b\n"},
        [K3S, "server"],
        {},
        ["--tls-san=a", "--tls-san=b"],
    ),
    (
        "dropin-overrides",
        {CFG: "node-name: n1\nselinux: true\n", f"{D}/10-x.yaml": "node-name: n2\n"},
        [K3S, "server"],
        {},
        ["--node-name=n2", "--selinux=true"],
    ),
    (
        "dropin-lexical-order",
        {
            f"{D}/10-a.yaml": "node-name: a\n",
            f"{D}/20-b.yaml": "node-name: b\n",
            f"{D}/9-c.yaml": "node-name: c\n",
        },
        [K3S, "server"],
        {},
        ["--node-name=c"],
    ),
    (
        "yml-suffix",
        {CFG: "node-name: a\n", f"{D}/50.yml": "node-name: yml\n"},
        [K3S, "server"],
        {},
        ["--node-name=yml"],
    ),
    ("suffix-case", {f"{D}/50.YAML": "node-name: upper\n"}, [K3S, "server"], {}, ["--node-name=upper"]),
    (
        "other-suffixes-ignored",
        {CFG: "node-name: a\n", f"{D}/50.conf": "node-name: x\n", f"{D}/60.yaml.bak": "node-name: y\n"},
        [K3S, "server"],
        {},
        ["--node-name=a"],
    ),
    (
        "append-to-list",
        {CFG: "kube-apiserver-arg:\n  - a=1\n", f"{D}/10.yaml": "kube-apiserver-arg+:\n  - b=2\n"},
        [K3S, "server"],
        {},
        ["--kube-apiserver-arg=a=1", "--kube-apiserver-arg=b=2"],
    ),
    (
        "append-to-scalar",
        {CFG: "tls-san: a\n", f"{D}/10.yaml": "tls-san+: b\n"},
        [K3S, "server"],
        {},
        ["--tls-san=a", "--tls-san=b"],
    ),
    ("append-nothing-before", {CFG: "tls-san+: b\n"}, [K3S, "server"], {}, ["--tls-san=b"]),
    (
        "replace-list",
        {CFG: "kubelet-arg:\n  - a=1\n  - b=2\n", f"{D}/10.yaml": "kubelet-arg:\n  - c=3\n"},
        [K3S, "server"],
        {},
        ["--kubelet-arg=c=3"],
    ),
    (
        "first-position-kept",
        {CFG: "a-flag: 1\nb-flag: 2\n", f"{D}/10.yaml": "c-flag: 3\na-flag: 4\n"},
        [K3S, "server"],
        {},
        ["--a-flag=4", "--b-flag=2", "--c-flag=3"],
    ),
    (
        "cli-after-config",
        {CFG: "node-name: cfg\n"},
        [K3S, "server", "--node-name", "cli"],
        {},
        ["--node-name=cfg", "--node-name", "cli"],
    ),
    (
        "env-config-file",
        {
            CFG: "node-name: default\n",
            "srv/k3s.yaml": "node-name: env\n",
            "srv/k3s.yaml.d/1.yaml": "selinux: true\n",
        },
        [K3S, "server"],
        {"K3S_CONFIG_FILE": "/srv/k3s.yaml"},
        ["--node-name=env", "--selinux=true"],
    ),
    (
        "config-flag",
        {CFG: "node-name: default\n", "srv/other.yaml": "node-name: flag\n"},
        [K3S, "server", "--config", "/srv/other.yaml"],
        {},
        ["--node-name=flag", "--config", "/srv/other.yaml"],
    ),
    (
        "config-flag-equals",
        {"srv/other.yaml": "node-name: flag\n"},
        [K3S, "server", "-c=/srv/other.yaml"],
        {},
        ["--node-name=flag", "-c=/srv/other.yaml"],
    ),
    (
        "env-beats-config-flag",
        {"srv/env.yaml": "node-name: env\n", "srv/flag.yaml": "node-name: flag\n"},
        [K3S, "server", "--config=/srv/flag.yaml"],
        {"K3S_CONFIG_FILE": "/srv/env.yaml"},
        ["--node-name=env", "--config=/srv/flag.yaml"],
    ),
    ("dropins-without-main", {f"{D}/1.yaml": "node-name: d\n"}, [K3S, "server"], {}, ["--node-name=d"]),
    ("one-letter-key", {CFG: "d: /data/k3s\n"}, [K3S, "server"], {}, ["-d=/data/k3s"]),
    (
        "octal-mode-unquoted",
        {CFG: "write-kubeconfig-mode: 0644\n"},
        [K3S, "server"],
        {},
        ["--write-kubeconfig-mode=420"],
    ),
    (
        "mode-quoted",
        {CFG: 'write-kubeconfig-mode: "0644"\n'},
        [K3S, "server"],
        {},
        ["--write-kubeconfig-mode=0644"],
    ),
    ("float", {CFG: "x-ratio: 1.0\ny-ratio: 0.5\n"}, [K3S, "server"], {}, ["--x-ratio=1", "--y-ratio=0.5"]),
    ("null", {CFG: "node-name:\n"}, [K3S, "server"], {}, ["--node-name="]),
    ("duplicate-key-one-file", {CFG: "node-name: a\nnode-name: b\n"}, [K3S, "server"], {}, ["--node-name=b"]),
    (
        "duplicate-append-one-file",
        {CFG: "tls-san: [a]\ntls-san+: [b]\ntls-san+: [c]\n"},
        [K3S, "server"],
        {},
        ["--tls-san=a", "--tls-san=b", "--tls-san=c"],
    ),
    ("agent", {CFG: "node-label: [x=y]\n"}, [K3S, "agent"], {}, ["--node-label=x=y"]),
    ("empty-file", {CFG: ""}, [K3S, "server"], {}, []),
]


def _lay(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(("files", "argv", "env", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_merge_table(
    tmp_path: Path, files: dict[str, str], argv: list[str], env: dict[str, str], want: list[str]
):
    _lay(tmp_path, files)
    got = configured(Host(root=str(tmp_path)), argv, env)
    assert list(got.argv[2:]) == want
    assert got.role == argv[1]


def test_cli_single_value_wins_and_list_appends(tmp_path: Path):
    _lay(tmp_path, {CFG: "node-name: cfg\ntls-san: [cfg]\n"})
    got = configured(Host(root=str(tmp_path)), [K3S, "server", "--node-name", "cli", "--tls-san=cli"], {})
    assert got.value("node-name") == "cli"
    assert got.values("tls-san") == ("cfg", "cli")


def test_bool_flag_takes_no_value(tmp_path: Path):
    got = configured(
        Host(root=str(tmp_path)), [K3S, "server", "--secrets-encryption", "--node-name", "x"], {}
    )
    assert got.value("secrets-encryption") == "true"
    assert got.value("node-name") == "x"


def test_env_bound_flag_only_when_unset(tmp_path: Path):
    host = Host(root=str(tmp_path))
    assert (
        configured(host, [K3S, "server"], {"K3S_KUBECONFIG_MODE": "600"}).value("write-kubeconfig-mode")
        == "600"
    )
    _lay(tmp_path, {CFG: 'write-kubeconfig-mode: "640"\n'})
    assert (
        configured(host, [K3S, "server"], {"K3S_KUBECONFIG_MODE": "600"}).value("write-kubeconfig-mode")
        == "640"
    )


def test_directory_named_yaml_is_skipped(tmp_path: Path):
    _lay(tmp_path, {f"{D}/20.yaml": "node-name: file\n"})
    (tmp_path / D / "10.yaml").mkdir()
    got = configured(Host(root=str(tmp_path)), [K3S, "server"], {})
    assert got.files == ("/etc/rancher/k3s/config.yaml.d/20.yaml",)


def test_symlinked_config_is_read(tmp_path: Path):
    _lay(tmp_path, {"srv/real.yaml": "node-name: linked\n"})
    (tmp_path / "etc/rancher/k3s").mkdir(parents=True)
    os.symlink(tmp_path / "srv/real.yaml", tmp_path / CFG)
    got = configured(Host(root=str(tmp_path)), [K3S, "server"], {})
    assert got.value("node-name") == "linked"


def test_invalid_yaml_is_refused(tmp_path: Path):
    _lay(tmp_path, {CFG: "node-name: [unclosed\n"})
    with pytest.raises(ConfigError, match="config.yaml: not valid YAML"):
        configured(Host(root=str(tmp_path)), [K3S, "server"], {})


def test_top_level_list_is_refused(tmp_path: Path):
    _lay(tmp_path, {CFG: "- a\n- b\n"})
    with pytest.raises(ConfigError, match="not a mapping"):
        configured(Host(root=str(tmp_path)), [K3S, "server"], {})


def test_no_subcommand_reads_no_config(tmp_path: Path):
    _lay(tmp_path, {CFG: "node-name: x\n"})
    got = configured(Host(root=str(tmp_path)), [K3S, "--debug"], {})
    assert got.role is None and got.files == ()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (None, ""),
        (3, "3"),
        (1.5, "1.5"),
        (2.0, "2"),
        (["x"], "x"),
        ("s", "s"),
    ],
)
def test_go_string(value: object, text: str):
    assert k3sconfig.go_string(value) == text
