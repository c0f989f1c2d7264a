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
import errno
import glob
import os
import stat
import sys
from collections.abc import Mapping
from importlib import resources
from typing import Any, Optional

from k3s_agent.controls import default_registry
from k3s_agent.controls.base import ControlSpec, Lint
from k3s_agent.host import Host
from k3s_agent.k3s import version as k3sversion
from k3s_agent.model import Mode
from k3s_agent.policy import benchmark as bench
from k3s_agent.policy.keys import (
    AUTO,
    CONTEST_FIELDS,
    ITEM_FIELDS,
    METRICS_FIELDS,
    PROFILES,
    SECTION_FIELDS,
    TOP_FIELDS,
    WAIVER_FIELDS,
)
from k3s_agent.policy.model import ContestSettings, ControlPolicy, Policy, Waiver
from k3s_agent.policy.schema import PolicyError, brief, check_table, key_path, missing_required, setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9/3.10 matrix
    import tomli as tomllib

POLICY_FILE = "/etc/k3s-agentd/policy.toml"
POLICY_DIR = "/etc/k3s-agentd/policy.d"
# A policy is a few KiB; the cap keeps a hostile file from costing memory and
# parse time (the slowest 1 MiB TOML we found, an array of 500k integers, takes
# about a second to parse).
MAX_POLICY_BYTES = 1 << 20
_CAP = "1 MiB"
MAX_DEPTH = 32  # the deepest real policy value is controls.<c>.items.<k>.<option>[i]
MAX_DROPINS = 1000
_OPEN_ERRORS = {
    errno.ELOOP: "a symlink; symlinks are refused",
    errno.ENXIO: "a socket or a device with no reader; only regular files are read",
}

# The controls to validate against, by name (controls.Registry, or any mapping
# in tests). Entry points take it as `registry=`, default_registry() when None;
# everything below them is handed it.
Registry = Mapping[str, ControlSpec]


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
    preflight: bool = True,
    registry: Optional[Registry] = None,
) -> Policy:
    """The policy in force on this host.

    path: a policy file (default: the installed one, when present).
    dropins: also merge policy.d/ (default: only for the installed policy).
    profile: use this built-in profile and no local file at all.
    preflight: False for a read-only report (see Policy.preflight).
    registry: the controls to validate against (default: default_registry()).
    """
    if profile is not None:
        local: list[Layer] = [Layer(f"profile:{profile}", {"extends": profile})]
    else:
        local = _local_layers(host, path, dropins)
    return compose(host, local, preflight=preflight, registry=registry)


def compose(
    host: Host, local: list[Layer], preflight: bool = True, registry: Optional[Registry] = None
) -> Policy:
    """Validate local layers, put them over the profile chain they extend, build."""
    known = default_registry() if registry is None else registry
    for layer in local:
        _raise_if(check_layer(layer, known))
    extends = TOP_FIELDS["extends"].default
    for layer in local:
        extends = layer.data.get("extends", extends)
    base = _profile_chain(resolve_profile(extends, host), known)
    choice = resolve_benchmark(base + local, host)
    # The profiles are written in CIS 1.8 ids; the operator's layers keep theirs.
    # Either may tag a check not in every benchmark with a {benchmark = id} table.
    base = [dataclasses.replace(ly, data=bench.map_layer_ids(ly.data, choice.name)) for ly in base]
    local = [
        dataclasses.replace(ly, data=bench.map_layer_ids(ly.data, choice.name, profile=False)) for ly in local
    ]
    profile = resolve_profile(extends, host)
    return build_policy(base + local, host, known, profile=profile, benchmark=choice, preflight=preflight)


def resolve_benchmark(layers: list[Layer], host: Host) -> bench.BenchmarkChoice:
    """The benchmark the last layer that names one asks for; "auto" by `k3s --version`."""
    requested = TOP_FIELDS["benchmark"].default
    for layer in layers:
        requested = layer.data.get("benchmark", requested)
    found = k3sversion.detect(host)
    return bench.pick(requested, found.version, found.why or k3sversion.NOT_FOUND)


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
        _trusted_dir(host.path(os.path.dirname(POLICY_FILE)))
    if not installed or os.path.lexists(main):
        layers.append(read_layer(main))
    if dropins if dropins is not None else installed:
        folder = host.path(POLICY_DIR)
        if _trusted_dir(folder):
            names = sorted(glob.glob(os.path.join(glob.escape(folder), "*.toml")))
            if len(names) > MAX_DROPINS:
                raise PolicyError([f"{folder}: {len(names)} *.toml drop-ins, more than {MAX_DROPINS}"])
            for name in names:
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


def _trusted_dir(path: str) -> bool:
    """False when path does not exist; PolicyError unless it is a root-only directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PolicyError([f"{path}: cannot stat ({exc.strerror})"]) from None
    _refuse_untrusted(path, st, want_dir=True)
    return True


def read_layer(path: str) -> Layer:
    """Parse one policy file, refusing it unless root owns it and only root can write it.

    Every way a file can be hostile ends in a PolicyError naming it, never in
    another exception or a hang: O_NOFOLLOW refuses a symlink, O_NONBLOCK keeps
    a FIFO from blocking open(), the type and size are checked on the open
    descriptor (no race with a rename), and the read stops at MAX_POLICY_BYTES.
    """
    fd = _open_policy(path)
    try:
        st = os.fstat(fd)  # the file opened, not whatever the name points to by now
        _refuse_untrusted(path, st, want_dir=False)
        if st.st_size > MAX_POLICY_BYTES:
            raise PolicyError([f"{path}: {st.st_size} bytes, larger than the {_CAP} limit for a policy file"])
        raw = _read_capped(path, fd)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([f"{path}: larger than the {_CAP} limit for a policy file"])
    return Layer(path, parse_policy(path, raw), raw)


def _read_capped(path: str, fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_POLICY_BYTES:
            chunk = os.read(fd, MAX_POLICY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read ({exc.strerror})"]) from None
    return b"".join(chunks)


def _open_policy(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PolicyError([f"{path}: no such policy file"]) from None
    except OSError as exc:
        why = _OPEN_ERRORS.get(exc.errno, exc.strerror)
        raise PolicyError([f"{path}: cannot open ({why})"]) from None


def parse_policy(path: str, raw: bytes) -> dict[str, Any]:
    """The TOML document in raw, or a PolicyError naming path and what is wrong.

    The parser (tomllib, or tomli before 3.11) is fed bytes anyone with write
    access to /etc wrote: besides TOMLDecodeError it raises RecursionError on
    deep nesting and ValueError on an integer past Python's digit limit, so
    any exception it raises is a parse failure of this file.
    """
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise PolicyError([f"{path}: line {line}: contains a NUL byte (not a text file)"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PolicyError([f"{path}: line {line}: not UTF-8 text ({exc.reason})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise PolicyError([f"{path}: not valid TOML: arrays or tables nested too deep"]) from None
    except Exception as exc:  # noqa: BLE001 - see the docstring: any parser failure is the file's
        raise PolicyError([f"{path}: not valid TOML: {type(exc).__name__}: {exc}"]) from None
    where = _too_deep(data)
    if where is not None:
        raise PolicyError([f"{path}: {key_path(*where)}: nested deeper than {MAX_DEPTH} levels"])
    return data


def _too_deep(data: dict[str, Any]) -> Optional[tuple[str, ...]]:
    """The key path of a value nested deeper than MAX_DEPTH, if any.

    A dotted table header ([a.a.a...]) builds a nested table without the
    parser recursing, and everything after it (merging, copying, repr in error
    messages) would: so depth is checked here, iteratively.
    """
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend((v, (*path, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            head, last = path[:-1], path[-1] if path else ""
            stack.extend((v, (*head, f"{last}[{i}]"), depth + 1) for i, v in enumerate(value))
    return None


def _refuse_untrusted(path: str, st: os.stat_result, want_dir: bool) -> None:
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        want = "directory" if want_dir else "regular file"
        raise PolicyError([f"{path}: a {_kind(st.st_mode)}, not a {want}; refusing it"])
    if st.st_uid != 0:
        raise PolicyError([f"{path}: owned by uid {st.st_uid}, must be owned by root"])
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise PolicyError([f"{path}: mode {mode:04o} is group/other-writable, refusing it"])


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISREG, "regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _profile_chain(name: str, registry: Registry) -> list[Layer]:
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
        _raise_if(check_layer(layer, registry))
    return chain


def profile_layers(name: str) -> list[Layer]:
    """A built-in profile: every *.toml in its package-data folder, in name order."""
    folder = resources.files("k3s_agent.policy") / "profiles" / name
    if not folder.is_dir():
        raise PolicyError([f"extends: no built-in profile {name!r} (have: {', '.join(PROFILES)})"])
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".toml")), key=lambda e: e.name)
    return [Layer(f"profile:{name}/{e.name}", tomllib.loads(e.read_text(encoding="utf-8"))) for e in entries]


# -- checking one layer ------------------------------------------------------------


def check_layer(layer: Layer, registry: Registry) -> list[str]:
    """Problems with one layer on its own, against the keys of registry's controls."""
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
        control = waiver.get("control")
        if isinstance(control, str) and control not in registry:
            problems.append(f"{where}: {label[0]}.control: no control named {brief(waiver['control'])}")
    for name, section in data.get("controls", {}).items():
        spec = registry.get(name)
        if spec is None:
            problems.append(
                f"{where}: {key_path('controls', name)}: unknown control "
                f"(known controls: {', '.join(registry)})"
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


def build_policy(
    layers: list[Layer],
    host: Host,
    registry: Registry,
    profile: str,
    benchmark: Optional[bench.BenchmarkChoice] = None,
    preflight: bool = True,
) -> Policy:
    merged, origin = merge_layers(layers)
    mode = Mode(setting(merged, TOP_FIELDS, "mode"))
    choice = benchmark or bench.BenchmarkChoice()
    controls: dict[str, ControlPolicy] = {}
    problems: list[str] = []
    for name, spec in registry.items():
        section = merged.get("controls", {}).get(name, {})
        control, section_problems = _build_section(spec, section, mode, origin)
        problems += section_problems
        controls[name] = dataclasses.replace(control, benchmark=choice.name)
    _raise_if(problems)
    contest = merged.get("contest", {})
    policy = Policy(
        profile=profile,
        mode=mode,
        interval=float(setting(merged, TOP_FIELDS, "interval")),
        control_timeout=float(setting(merged, TOP_FIELDS, "control_timeout")),
        confirm_timeout=float(setting(merged, TOP_FIELDS, "confirm_timeout")),
        contest=ContestSettings(
            threshold=setting(contest, CONTEST_FIELDS, "threshold"),
            window=float(setting(contest, CONTEST_FIELDS, "window")),
            backoff_max=float(setting(contest, CONTEST_FIELDS, "backoff_max")),
        ),
        controls=controls,
        waivers=tuple(_waiver(w) for w in merged.get("waiver", [])),
        sources=tuple(layer.source for layer in layers),
        metrics_textfile=setting(merged.get("metrics", {}), METRICS_FIELDS, "textfile") or None,
        preflight=preflight,
        benchmark=choice,
    )
    _raise_if(_lint(policy, host, origin, registry))
    return policy


def _build_section(
    spec: ControlSpec, section: dict[str, Any], mode: Mode, origin: dict[tuple[str, ...], str]
) -> tuple[ControlPolicy, list[str]]:
    canonical = spec.canonical_key or (lambda key: key)
    disabled = tuple(section.get("disable", ()))
    dropped = {canonical(key) for key in disabled}
    item_fields = {**ITEM_FIELDS, **spec.item_fields}
    problems = []
    items: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, item in section.get("items", {}).items():
        if canonical(key) in dropped:
            continue
        where = origin.get((spec.name, key), "policy")
        problems += missing_required(item, item_fields, where, ("controls", spec.name, "items", key))
        first = spelled.setdefault(canonical(key), key)
        if first != key:
            problems.append(_duplicate(spec.name, first, key, origin))
        items[key] = item
    where = origin.get((spec.name,), "policy")
    problems += missing_required(section, spec.options, where, ("controls", spec.name))
    options = {k: v for k, v in section.items() if k not in SECTION_FIELDS}
    control = ControlPolicy(
        name=spec.name,
        mode=Mode(section.get("mode", mode.value)),
        enabled=setting(section, SECTION_FIELDS, "enabled"),
        options=options,
        items=items,
        disabled=disabled,
    )
    return control, problems


def _duplicate(control: str, first: str, second: str, origin: dict[tuple[str, ...], str]) -> str:
    places = [
        f"{origin.get((control, key), 'policy')}: {key_path('controls', control, 'items', key)}"
        for key in (first, second)
    ]
    return f"{places[1]}: the same item as {places[0]}, spelled differently; keep one spelling"


def _lint(policy: Policy, host: Host, origin: dict[tuple[str, ...], str], registry: Registry) -> list[str]:
    problems = []
    for name, spec in registry.items():
        control = policy.controls[name]
        if spec.lint is None or not control.enabled:
            continue
        for lint in spec.lint(control, policy, host):
            item = control.items.get(lint.key, {})
            if item.get("accept_risk") and lint.overridable:
                continue
            where = _lint_origin(name, lint, control.items, origin)
            path = ("controls", name, "items", lint.key) if lint.key else ("controls", name)
            overridable = lint.key and lint.overridable
            hint = ' (set accept_risk = "<why>" on the item to override)' if overridable else ""
            problems.append(f"{where}: {key_path(*path)}: {lint.reason}{hint}")
    return problems


def _lint_origin(
    control: str, lint: Lint, items: Mapping[str, Any], origin: dict[tuple[str, ...], str]
) -> str:
    """The file to name: the item's, else (a missing or disabled item) the section's
    last file, else the file of the item that causes the problem."""
    if lint.key and lint.key in items:
        return origin.get((control, lint.key), "policy")
    return origin.get((control,)) or origin.get(lint.because) or "policy"


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
