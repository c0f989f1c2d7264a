"""Load, merge and validate the policy.

Layers, lowest first: the built-in profile chain (a profile may extend
another), /etc/k3s-agentd/policy.toml, then /etc/k3s-agentd/policy.d/*.toml in
name order. Tables merge key by key; arrays replace, except `disable` and
`waiver`, which accumulate. Every layer is checked on its own (so an error
names the file that holds it), then the merged result is checked for required
keys and for settings that would break a K3s node.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import glob
import os
import stat
import sys
from collections.abc import Mapping
from importlib import resources
from typing import Any, Optional

from k3s_agent.controls import specs
from k3s_agent.controls.base import ControlSpec
from k3s_agent.host import Host
from k3s_agent.model import Mode
from k3s_agent.policy.model import (
    DEFAULT_CONFIRM_TIMEOUT,
    PROFILES,
    ContestSettings,
    ControlPolicy,
    Policy,
    Waiver,
)
from k3s_agent.policy.schema import (
    Field,
    PolicyError,
    at_least,
    between,
    check_table,
    key_path,
    list_of,
    matches,
    missing_required,
    non_empty,
    one_of,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9/3.10 matrix
    import tomli as tomllib

POLICY_FILE = "/etc/k3s-agentd/policy.toml"
POLICY_DIR = "/etc/k3s-agentd/policy.d"
AUTO = "auto"

_MODES = one_of(*(m.value for m in Mode))

TOP_FIELDS: dict[str, Field] = {
    "version": Field(int, one_of(1), doc="policy format version"),
    "extends": Field(str, one_of(AUTO, "none", *PROFILES), doc="built-in profile to start from"),
    "mode": Field(str, _MODES),
    # Upper bounds too: a day between cycles is already no longer "continuous", and
    # a huge timeout overflows Thread.join.
    "interval": Field(float, between(1, 86400), doc="seconds between full check cycles"),
    "control_timeout": Field(float, between(1, 3600), doc="seconds one control may take"),
    "confirm_timeout": Field(
        float, between(0, 86400), doc="seconds to confirm the first enforcing firewall/sshd change; 0 = off"
    ),
    "contest": Field(dict),
    "metrics": Field(dict),
    "waiver": Field(list),
    "controls": Field(dict),
}
CONTEST_FIELDS = {
    "threshold": Field(int, at_least(2)),
    "window": Field(float, between(1, 7 * 86400)),
    "backoff_max": Field(float, between(1, 7 * 86400)),
}
METRICS_FIELDS = {
    "textfile": Field(
        str, matches(r"(/(?!\.\.?/)[^/\0]+)+\.prom|", "an absolute *.prom path without . or .. in it")
    )
}
WAIVER_FIELDS = {
    "control": Field(str, non_empty, required=True),
    "key": Field(str, non_empty, required=True),
    "reason": Field(str, non_empty, required=True),
    "owner": Field(str, non_empty, required=True),
    "expires": Field(datetime.date, required=True),
}
SECTION_FIELDS = {
    "mode": Field(str, _MODES),
    "enabled": Field(bool),
    "disable": Field(list, list_of(str)),
    "items": Field(dict),
}
ITEM_FIELDS = {
    "cis": Field(str, non_empty, doc="CIS benchmark id"),
    "accept_risk": Field(str, non_empty, doc="why a setting that breaks K3s is wanted anyway"),
    "description": Field(str),
}


@dataclasses.dataclass
class Layer:
    source: str  # file path or "profile:<name>"
    data: dict[str, Any]
    raw: bytes = b""  # the file's bytes as validated (what policy.snapshot saves)


# -- entry points ----------------------------------------------------------------


def load_policy(
    host: Host,
    path: Optional[str] = None,
    dropins: Optional[bool] = None,
    profile: Optional[str] = None,
) -> Policy:
    """The policy in force on this host.

    path: a policy file (default: the installed one, when present).
    dropins: also merge policy.d/ (default: only for the installed policy).
    profile: use this built-in profile and no local file at all.
    """
    if profile is not None:
        local: list[Layer] = [Layer(f"profile:{profile}", {"extends": profile})]
    else:
        local = _local_layers(host, path, dropins)
    return compose(host, local)


def compose(host: Host, local: list[Layer]) -> Policy:
    """Validate local layers, put them over the profile chain they extend, build."""
    for layer in local:
        _raise_if(check_layer(layer))
    extends = AUTO
    for layer in local:
        extends = layer.data.get("extends", extends)
    base = _profile_chain(resolve_profile(extends, host))
    return build_policy(base + local, host, profile=resolve_profile(extends, host))


def resolve_profile(name: str, host: Host) -> str:
    if name != AUTO:
        return name
    return "k3s-cis-agent" if detect_role(host) == "agent" else "k3s-cis-server"


def detect_role(host: Host) -> str:
    """server when a k3s.service unit exists, agent for k3s-agent.service, else server.

    The K3s install script writes its unit to /etc/systemd/system (docs.k3s.io,
    installation/configuration); packaged K3s (e.g. openSUSE) uses /usr/lib.
    """
    for unit_dir in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"):
        if os.path.lexists(host.path(f"{unit_dir}/k3s.service")):
            return "server"
    for unit_dir in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"):
        if os.path.lexists(host.path(f"{unit_dir}/k3s-agent.service")):
            return "agent"
    return "server"


# -- reading layers ----------------------------------------------------------------


def _local_layers(host: Host, path: Optional[str], dropins: Optional[bool]) -> list[Layer]:
    installed = path is None
    main = path if path is not None else host.path(POLICY_FILE)
    layers = []
    if installed:
        # Whoever can write /etc/k3s-agentd can delete policy.toml or rename policy.d
        # away (dropping every drop-in) without touching a root-owned file.
        etc = host.path(os.path.dirname(POLICY_FILE))
        if os.path.lexists(etc):
            _refuse_untrusted(etc, os.lstat(etc), want_dir=True)
    if not installed or os.path.lexists(main):
        layers.append(read_layer(main))
    if dropins if dropins is not None else installed:
        folder = host.path(POLICY_DIR)
        if os.path.lexists(folder):
            _refuse_untrusted(folder, os.lstat(folder), want_dir=True)
            for name in sorted(glob.glob(os.path.join(glob.escape(folder), "*.toml"))):
                try:
                    layers.append(read_layer(name))
                except PolicyError:
                    if os.path.lexists(name):
                        raise
                    # Removed between the listing and the open (a package or config
                    # tool at work): the folder no longer holds it, so neither does
                    # the policy; refusing would leave the old one in force until
                    # the next SIGHUP, or start on the last good one.
    return layers


def read_layer(path: str) -> Layer:
    """Parse one policy file, refusing it unless root owns it and only root can write it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PolicyError([f"{path}: no such policy file"]) from None
    except OSError as exc:
        raise PolicyError([f"{path}: cannot open ({exc.strerror}; symlinks are refused)"]) from None
    with os.fdopen(fd, "rb") as handle:
        _refuse_untrusted(path, os.fstat(handle.fileno()), want_dir=False)
        raw = handle.read()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{path}: not UTF-8 text ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: not valid TOML: {exc}"]) from None
    return Layer(path, data, raw)


def _refuse_untrusted(path: str, st: os.stat_result, want_dir: bool) -> None:
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        raise PolicyError([f"{path}: not a {'directory' if want_dir else 'regular file'}"])
    if st.st_uid != 0:
        raise PolicyError([f"{path}: owned by uid {st.st_uid}, must be owned by root"])
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise PolicyError([f"{path}: mode {mode:04o} is group/other-writable, refusing it"])


def _profile_chain(name: str) -> list[Layer]:
    chain: list[Layer] = []
    seen: list[str] = []
    current: Optional[str] = name
    while current not in (None, "none"):
        if current in seen:
            raise PolicyError([f"profile:{current}: extends loop {' -> '.join([*seen, current])}"])
        seen.append(current)
        layers = profile_layers(current)
        chain = layers + chain
        current = next((ly.data["extends"] for ly in reversed(layers) if "extends" in ly.data), None)
    for layer in chain:
        _raise_if(check_layer(layer))
    return chain


def profile_layers(name: str) -> list[Layer]:
    """A built-in profile: every *.toml in its package-data folder, in name order."""
    folder = resources.files("k3s_agent.policy") / "profiles" / name
    if not folder.is_dir():
        raise PolicyError([f"extends: no built-in profile {name!r} (have: {', '.join(PROFILES)})"])
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".toml")), key=lambda e: e.name)
    return [Layer(f"profile:{name}/{e.name}", tomllib.loads(e.read_text(encoding="utf-8"))) for e in entries]


# -- checking one layer ------------------------------------------------------------


def check_layer(layer: Layer) -> list[str]:
    where, data = layer.source, layer.data
    problems = check_table(data, TOP_FIELDS, where, ())
    if problems:
        return problems
    problems += check_table(data.get("contest", {}), CONTEST_FIELDS, where, ("contest",))
    problems += check_table(data.get("metrics", {}), METRICS_FIELDS, where, ("metrics",))
    for index, waiver in enumerate(data.get("waiver", [])):
        label = (f"waiver[{index}]",)
        if not isinstance(waiver, dict):
            problems.append(f"{where}: {label[0]}: expected a table")
            continue
        problems += check_table(waiver, WAIVER_FIELDS, where, label)
        problems += missing_required(waiver, WAIVER_FIELDS, where, label)
        if waiver.get("control") not in specs() and "control" in waiver:
            problems.append(f"{where}: {label[0]}.control: no control named {waiver['control']!r}")
    known = specs()
    for name, section in data.get("controls", {}).items():
        spec = known.get(name)
        if spec is None:
            problems.append(
                f"{where}: {key_path('controls', name)}: unknown control "
                f"(known controls: {', '.join(known)})"
            )
        elif not isinstance(section, dict):
            problems.append(f"{where}: {key_path('controls', name)}: expected a table")
        else:
            problems += _check_section(spec, section, where)
    return problems


def _check_section(spec: ControlSpec, section: dict[str, Any], where: str) -> list[str]:
    path = ("controls", spec.name)
    problems = check_table(section, {**SECTION_FIELDS, **spec.options}, where, path)
    items = section.get("items", {})
    if not isinstance(items, dict):
        return problems
    item_fields = {**ITEM_FIELDS, **spec.item_fields}
    for key, item in items.items():
        item_path = (*path, "items", key)
        reason = spec.item_key(key) if spec.item_key else None
        if reason:
            problems.append(f"{where}: {key_path(*item_path)}: {reason}")
        if not isinstance(item, dict):
            problems.append(f"{where}: {key_path(*item_path)}: expected a table")
            continue
        problems += check_table(item, item_fields, where, item_path)
    return problems


# -- merging and building ----------------------------------------------------------


def merge_layers(layers: list[Layer]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge layers; also return which file last touched each control section and item."""
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for layer in layers:
        _merge_into(merged, layer.data, layer.source)
        for name, section in layer.data.get("controls", {}).items():
            origin[(name,)] = layer.source
            for key in section.get("items", {}):
                origin[(name, key)] = layer.source
    return merged, origin


def _merge_into(base: dict[str, Any], update: Mapping[str, Any], source: str) -> None:
    for key, value in update.items():
        if key == "waiver":
            base.setdefault(key, []).extend(dict(w, _source=source) for w in value)
        elif key == "disable":
            base.setdefault(key, []).extend(value)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value, source)
        else:
            base[key] = copy.deepcopy(value)


def build_policy(layers: list[Layer], host: Host, profile: str) -> Policy:
    merged, origin = merge_layers(layers)
    mode = Mode(merged.get("mode", Mode.ENFORCE.value))
    controls: dict[str, ControlPolicy] = {}
    problems: list[str] = []
    for name, spec in specs().items():
        section = merged.get("controls", {}).get(name, {})
        control, section_problems = _build_section(spec, section, mode, origin)
        problems += section_problems
        controls[name] = control
    _raise_if(problems)
    contest = merged.get("contest", {})
    policy = Policy(
        profile=profile,
        mode=mode,
        interval=float(merged.get("interval", 60)),
        control_timeout=float(merged.get("control_timeout", 30)),
        confirm_timeout=float(merged.get("confirm_timeout", DEFAULT_CONFIRM_TIMEOUT)),
        contest=ContestSettings(
            threshold=contest.get("threshold", 3),
            window=float(contest.get("window", 600)),
            backoff_max=float(contest.get("backoff_max", 3600)),
        ),
        controls=controls,
        waivers=tuple(_waiver(w) for w in merged.get("waiver", [])),
        sources=tuple(layer.source for layer in layers),
        metrics_textfile=merged.get("metrics", {}).get("textfile") or None,
    )
    _raise_if(_lint(policy, host, origin))
    return policy


def _build_section(
    spec: ControlSpec, section: dict[str, Any], mode: Mode, origin: dict[tuple[str, ...], str]
) -> tuple[ControlPolicy, list[str]]:
    disabled = tuple(section.get("disable", ()))
    item_fields = {**ITEM_FIELDS, **spec.item_fields}
    problems = []
    items = {}
    for key, item in section.get("items", {}).items():
        if key in disabled:
            continue
        where = origin.get((spec.name, key), "policy")
        problems += missing_required(item, item_fields, where, ("controls", spec.name, "items", key))
        items[key] = item
    where = origin.get((spec.name,), "policy")
    problems += missing_required(section, spec.options, where, ("controls", spec.name))
    options = {k: v for k, v in section.items() if k not in SECTION_FIELDS}
    control = ControlPolicy(
        name=spec.name,
        mode=Mode(section.get("mode", mode.value)),
        enabled=section.get("enabled", True),
        options=options,
        items=items,
        disabled=disabled,
    )
    return control, problems


def _lint(policy: Policy, host: Host, origin: dict[tuple[str, ...], str]) -> list[str]:
    problems = []
    for name, spec in specs().items():
        control = policy.controls[name]
        if spec.lint is None or not control.enabled:
            continue
        for lint in spec.lint(control, policy, host):
            item = control.items.get(lint.key, {})
            if item.get("accept_risk"):
                continue
            where = origin.get((name, lint.key) if lint.key else (name,), "policy")
            path = ("controls", name, "items", lint.key) if lint.key else ("controls", name)
            hint = ' (set accept_risk = "<why>" on the item to override)' if lint.key else ""
            problems.append(f"{where}: {key_path(*path)}: {lint.reason}{hint}")
    return problems


def _waiver(raw: dict[str, Any]) -> Waiver:
    return Waiver(
        control=raw["control"],
        key=raw["key"],
        reason=raw["reason"],
        owner=raw["owner"],
        expires=raw["expires"],
        source=raw.get("_source", ""),
    )


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise PolicyError(problems)
