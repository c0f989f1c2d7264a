"""The arguments K3s is configured to start with, merged exactly as K3s merges them.

Source: k3s-io/k3s pkg/configfilearg (parser.go, defaultparser.go):
- the config file is $K3S_CONFIG_FILE, else the value of --config/-c on the
  command line, else /etc/rancher/k3s/config.yaml; it applies to the
  `server` and `agent` subcommands;
- then every regular file in "<config>.d/" whose name ends in .yaml/.yml
  (case-insensitive), in lexical order (os.ReadDir sorts by name); the main
  file may be missing when drop-ins exist;
- each key becomes "--key=value" ("-k=value" for one-letter keys); a list
  repeats the flag; a key seen again replaces the value but keeps the key's
  first position; "key+:" appends to the list so far (a scalar counts as a
  one-element list);
- the resulting flags are inserted right after the subcommand, before the real
  command-line flags, so a single-valued CLI flag wins (urfave/cli: last one)
  and a CLI list flag appends.
Values are printed like wrangler's convert.ToString: booleans true/false,
numbers in Go's %v form, null as the empty string, a one-element list as its
element. YAML is read as YAML 1.1 (yes/on are booleans) by both go-yaml v2
and PyYAML.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import yaml

from k3s_agent.host import Host
from k3s_agent.k3s.yamlcap import CappedLoader, YAMLLimit

DEFAULT_CONFIG = "/etc/rancher/k3s/config.yaml"
CONFIG_ENV = "K3S_CONFIG_FILE"
CONFIG_FLAGS = ("--config", "-c")
SUBCOMMANDS = ("server", "agent")

# K3s's boolean flags (pkg/cli/cmds/server.go, agent.go): the only flags that do
# not take the next word as their value on the command line.
BOOL_FLAGS = frozenset(
    {
        "secrets-encryption",
        "protect-kernel-defaults",
        "cluster-init",
        "cluster-reset",
        "disable-scheduler",
        "disable-cloud-controller",
        "disable-kube-proxy",
        "disable-network-policy",
        "disable-helm-controller",
        "disable-apiserver",
        "disable-controller-manager",
        "disable-etcd",
        "disable-agent",
        "disable-apiserver-lb",
        "disable-default-registry-endpoint",
        "selinux",
        "debug",
        "rootless",
        "docker",
        "prefer-bundled-bin",
        "embedded-registry",
        "supervisor-metrics",
        "etcd-expose-metrics",
        "etcd-disable-snapshots",
        "etcd-s3",
        "etcd-s3-insecure",
        "etcd-s3-skip-ssl-verify",
        "etcd-snapshot-compress",
        "flannel-ipv6-masq",
        "flannel-external-ip",
        "enable-pprof",
        "tls-san-security",
        "with-node-id",
        "no-flannel",
        "no-deploy",
        "help",
        "h",
        "version",
        "v",
    }
)
# Environment variables K3s reads as flags (urfave/cli EnvVar); a flag given on
# the command line or in the config file wins over them.
ENV_FLAGS = {
    "K3S_TOKEN": "token",
    "K3S_TOKEN_FILE": "token-file",
    "K3S_URL": "server",
    "K3S_DATASTORE_ENDPOINT": "datastore-endpoint",
    "K3S_KUBECONFIG_OUTPUT": "write-kubeconfig",
    "K3S_KUBECONFIG_MODE": "write-kubeconfig-mode",
    "K3S_NODE_NAME": "node-name",
    "K3S_SELINUX": "selinux",
    "K3S_CLUSTER_INIT": "cluster-init",
    "K3S_CLUSTER_RESET": "cluster-reset",
    "K3S_AGENT_TOKEN": "agent-token",
}


class ConfigError(Exception):
    """A K3s config file K3s itself would refuse (K3s exits at start)."""


@dataclasses.dataclass(frozen=True)
class Configured:
    """What K3s is configured to start with."""

    role: Optional[str]
    argv: tuple[str, ...]  # after config-file insertion, as K3s's CLI parser sees it
    flags: Mapping[str, tuple[str, ...]]  # flag -> every value, in order
    files: tuple[str, ...]  # config files read, in order
    config_path: str

    def value(self, flag: str) -> Optional[str]:
        values = self.flags.get(flag)
        return values[-1] if values else None

    def values(self, flag: str) -> tuple[str, ...]:
        return self.flags.get(flag, ())


# -- where the config lives ----------------------------------------------------------------


def config_path(argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, bool]:
    """(path, explicitly set) — env var first, then --config/-c, then the default."""
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV], True
    for index, arg in enumerate(argv):
        for flag in CONFIG_FLAGS:
            if arg == flag:
                return (argv[index + 1], True) if index + 1 < len(argv) else ("", False)
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :], True
    return DEFAULT_CONFIG, False


def config_files(host: Host, path: str) -> list[str]:
    """The main file (when present) then its drop-ins, in the order K3s reads them."""
    files = []
    if _is_file(host, path):
        files.append(path)
    folder = path + ".d"
    try:
        names = host.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        if not name.lower().endswith((".yaml", ".yml")):
            continue
        full = f"{folder}/{name}"
        # K3s skips directories (DirEntry.IsDir, which is false for a symlink).
        try:
            if stat.S_ISDIR(host.lstat(full).st_mode):
                continue
        except FileNotFoundError:
            continue
        files.append(full)
    return files


def _is_file(host: Host, path: str) -> bool:
    try:
        return stat.S_ISREG(host.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


# -- reading and merging ------------------------------------------------------------------


class _PairsLoader(CappedLoader):
    """Capped SafeLoader whose top-level mapping keeps every key, duplicates included (go-yaml MapSlice)."""


def load_pairs(text: str, source: str = "") -> list[tuple[str, Any]]:
    loader = _PairsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return []
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{source}: top level is not a mapping")
        pairs = []
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            value = loader.construct_object(value_node, deep=True)
            pairs.append((go_string(key), value))
        return pairs
    except YAMLLimit as exc:
        # go-yaml v2 >= 2.2.8 (K3s) refuses such documents too (CVE-2019-11254, "excessive aliasing").
        raise ConfigError(f"{source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def merge_files(contents: Sequence[tuple[str, list[tuple[str, Any]]]]) -> list[str]:
    """Flags from (file, pairs) in order, merged like configfilearg.readConfigFile."""
    order: list[str] = []
    values: dict[str, Any] = {}
    for _source, pairs in contents:
        for raw_key, value in pairs:
            append = raw_key.endswith("+")
            key = raw_key[:-1] if append else raw_key
            if key not in order:
                order.append(key)
            if append and key in values:
                values[key] = _to_list(values[key]) + _to_list(value)
            else:
                values[key] = value
    flags = []
    for key in order:
        prefix = "-" if len(key) == 1 else "--"
        value = values[key]
        if isinstance(value, list):
            flags += [f"{prefix}{key}={go_string(item)}" for item in value]
        else:
            flags.append(f"{prefix}{key}={go_string(value)}")
    return flags


def _to_list(value: Any) -> list[Any]:
    """configfilearg.toSlice: a string or list as is, anything else its trimmed text (or nothing)."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return [value]
    text = go_string(value).strip()
    return [text] if text else []


def go_string(value: Any) -> str:
    """wrangler data/convert.ToString, for the YAML scalar types."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_string(k)}:{go_string(v)}" for k, v in value.items()) + "]"
    return str(value)


def _go_float(value: float) -> str:
    # fmt %v of a float64 is %g with the shortest representation.
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{abs(int(exponent)):02d}"
    return text


def read_config(host: Host, files: Sequence[str]) -> list[tuple[str, list[tuple[str, Any]]]]:
    contents = []
    for path in files:
        # K3s follows links; so do we for reading (never for writing). Capped:
        # a file beyond READ_LIMIT raises TooLarge naming it.
        text = host.read_text(path, follow=True)
        contents.append((path, load_pairs(text or "", path)))
    return contents


# -- the whole command line ------------------------------------------------------------------


def insert_config(argv: Sequence[str], config_flags: Sequence[str]) -> list[str]:
    """Config flags go right after the first `server`/`agent` word (configfilearg findStart)."""
    for index, word in enumerate(argv):
        if word in SUBCOMMANDS:
            return [*argv[: index + 1], *config_flags, *argv[index + 1 :]]
    return list(argv)


def parse_flags(words: Sequence[str]) -> dict[str, list[str]]:
    """Flags as urfave/cli (Go flag package) reads them: --name=value, --name value, --bool."""
    flags: dict[str, list[str]] = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            continue
        name = word.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
        elif name in BOOL_FLAGS:
            value = "true"
        elif index < len(words):
            value = words[index]
            index += 1
        else:
            value = ""
        flags.setdefault(name, []).append(value)
    return flags


def configured(
    host: Host,
    exec_start: Sequence[str],
    env: Mapping[str, str],
    files: Optional[Sequence[str]] = None,
    overrides: Optional[Mapping[str, str]] = None,
) -> Configured:
    """Everything K3s will start with: ExecStart + config files + env-bound flags.

    files/overrides answer "what if": another set of config files (default: the
    ones K3s would read), some of them with the given text instead of their own.
    """
    argv = list(exec_start)
    role = next((w for w in argv[1:] if w in SUBCOMMANDS), None)
    # A missing config file, even one named explicitly, is not an error for K3s
    # (configfilearg Parse returns the args unchanged on IsNotExist).
    path, _explicit = config_path(argv, env)
    if files is None:
        files = config_files(host, path) if role else []
    contents = []
    for name in files:
        if overrides and name in overrides:
            contents.append((name, load_pairs(overrides[name], name)))
        else:
            contents += read_config(host, [name])
    merged = insert_config(argv, merge_files(contents))
    start = merged.index(role) + 1 if role else len(merged)
    flags = parse_flags(merged[start:])
    for variable, flag in ENV_FLAGS.items():
        if env.get(variable) and flag not in flags:
            flags[flag] = [env[variable]]
    return Configured(
        role=role,
        argv=tuple(merged),
        flags={k: tuple(v) for k, v in flags.items()},
        files=tuple(files),
        config_path=path,
    )
