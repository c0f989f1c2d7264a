"""Which K3s CIS benchmark is in force, and the check ids it gives our checks.

`benchmark = "auto"` (the default) picks the benchmark that matches the
running K3s, the way kube-bench picks one by Kubernetes version
(aquasecurity/kube-bench cfg/config.yaml `version_mapping`: "1.26": "cis-1.8",
"1.27"-"1.29": "cis-1.9"; v0.15.6 maps "1.32"-"1.34" to "cis-1.12"), checked
against the release lines K3s's own self-assessment guides name
(k3s-io/docs docs/security/self-assessment-*.md: 1.8 "v1.26-v1.29",
1.9 "v1.27", 1.10 "v1.28-v1.33", 1.12 "v1.32-v1.36"). Where those overlap,
kube-bench's choice wins (1.27-1.29 -> 1.9); 1.30 and 1.31 fall only in the
1.10 guide's range (there is no 1.11 profile here).

The built-in profiles carry the ids of CIS 1.8. CIS 1.9 dropped 1.2.12
(SecurityContextDeny admission plugin), so every later 1.2.x check moved down
by one; 1.10 and 1.12 keep 1.9's numbering for every check 1.8 has
(k3s_agent/policy/cis_catalog.py lists them all) - so CIS 1.8's 1.2.30 (apiserver
ciphers) is 1.2.29 there, and 1.12's 1.2.30 is a different check. ID_CHANGES holds
exactly those moves. A check 1.8 does not have (1.9's 4.3.1 kube-proxy metrics,
1.12's 1.2.30 service-account-extend-token-expiration and 4.2.14 seccomp-default)
is tagged with a table, `cis = { "k3s-cis-1.12" = "1.2.30" }`: the id in each
benchmark named, none in the others (the item is then a hardening item).

No imports beyond the standard library: `k3s-agentctl status` reads this.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

AUTO = "auto"
BENCHMARKS = ("k3s-cis-1.8", "k3s-cis-1.9", "k3s-cis-1.10", "k3s-cis-1.12")
PROFILE_BENCHMARK = "k3s-cis-1.8"  # the ids the built-in profiles are written in
NEWEST = BENCHMARKS[-1]
# Kubernetes minor (K3s vX.Y) -> benchmark; see the module docstring for sources.
BY_MINOR = {
    26: "k3s-cis-1.8",
    27: "k3s-cis-1.9",
    28: "k3s-cis-1.9",
    29: "k3s-cis-1.9",
    30: "k3s-cis-1.10",
    31: "k3s-cis-1.10",
    32: "k3s-cis-1.12",
    33: "k3s-cis-1.12",
    34: "k3s-cis-1.12",
    35: "k3s-cis-1.12",
    36: "k3s-cis-1.12",
}
OLDEST_MINOR, NEWEST_MINOR = min(BY_MINOR), max(BY_MINOR)

# CIS 1.8 id -> the same check's id in a later benchmark (None: no such check).
_SHIFTED_1_2 = {f"1.2.{n}": f"1.2.{n - 1}" for n in range(13, 31)}
_FROM_1_9 = {"1.2.12": None, **_SHIFTED_1_2}
ID_CHANGES: dict[str, dict[str, Optional[str]]] = {
    "k3s-cis-1.8": {},
    "k3s-cis-1.9": _FROM_1_9,
    "k3s-cis-1.10": _FROM_1_9,
    "k3s-cis-1.12": _FROM_1_9,
}

_K3S_VERSION = re.compile(r"v1\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?")


@dataclasses.dataclass(frozen=True)
class BenchmarkChoice:
    """The benchmark in force and why (shown in status, reports and messages)."""

    name: str = PROFILE_BENCHMARK
    requested: str = AUTO
    k3s_version: Optional[str] = None
    reason: str = ""

    @property
    def cis_version(self) -> str:
        return cis_number(self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cis_number(name: str) -> str:
    """ "k3s-cis-1.10" -> "1.10" (what the benchmark's own documents call it)."""
    return name.rsplit("-", 1)[-1]


def minor_of(version: str) -> Optional[int]:
    """The Kubernetes minor of a K3s version string ("v1.30.4+k3s1" -> 30)."""
    match = _K3S_VERSION.fullmatch(version)
    return int(match.group(1)) if match else None


def pick(requested: str, k3s_version: Optional[str], unknown_why: str = "K3s not found") -> BenchmarkChoice:
    """The benchmark for `requested` ("auto" or a name) on a node running `k3s_version`
    (None: not known, for the reason `unknown_why`)."""
    if requested != AUTO:
        return BenchmarkChoice(requested, requested, k3s_version, f"pinned by the policy: {requested}")
    if k3s_version is None:
        return BenchmarkChoice(NEWEST, AUTO, None, f"auto: {unknown_why} -> {NEWEST}, the newest")
    minor = minor_of(k3s_version)
    if minor is None:
        why = f"auto: K3s version {k3s_version!r} not understood -> {NEWEST}, the newest"
        return BenchmarkChoice(NEWEST, AUTO, k3s_version, why)
    name = BY_MINOR.get(minor)
    head = f"auto: K3s {k3s_version} -> "
    if name is not None:
        return BenchmarkChoice(name, AUTO, k3s_version, head + name)
    if minor > NEWEST_MINOR:
        note = f"{NEWEST} (newer than v1.{NEWEST_MINOR}, the newest K3s a benchmark here covers)"
        return BenchmarkChoice(NEWEST, AUTO, k3s_version, head + note)
    oldest = BY_MINOR[OLDEST_MINOR]
    note = f"{oldest} (older than v1.{OLDEST_MINOR}, the oldest K3s a benchmark here covers)"
    return BenchmarkChoice(oldest, AUTO, k3s_version, head + note)


def map_cis(cis: str, benchmark: str) -> Optional[str]:
    """A CIS 1.8 `cis` field ("1.2.16" or "1.2.9/1.2.10/1.2.15") in `benchmark`'s ids.

    Free text (not a list of ids) is kept as it is; ids the benchmark no longer
    has are dropped (None when nothing is left)."""
    changes = ID_CHANGES.get(benchmark, {})
    parts = cis.split("/")
    if not changes or not all(re.fullmatch(r"[0-9]+(\.[0-9]+)+", p) for p in parts):
        return cis
    mapped = [changes.get(p, p) for p in parts]
    kept = [p for p in mapped if p is not None]
    return "/".join(kept) or None


def check_cis_value(value: Any) -> Optional[str]:
    """Why an item's `cis` is wrong (None: fine): a non-empty string, or a table
    {benchmark name: id string} naming only known benchmarks."""
    if isinstance(value, str):
        return None if value.strip() else "must not be empty"
    if not value:
        return "an empty table names no benchmark"
    for name, ids in value.items():
        if name not in BENCHMARKS:
            return f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})"
        if not isinstance(ids, str) or not ids.strip():
            return f'{name}: expected a check id string such as "1.2.30"'
    return None


def resolve_cis(cis: Any, benchmark: str, profile: bool = True) -> Optional[str]:
    """An item's `cis` as its id(s) in `benchmark` (None: no such check there).

    A table gives its entry for `benchmark`; a string is CIS 1.8 ids mapped by
    ID_CHANGES when it comes from a built-in profile (`profile`), else kept."""
    if isinstance(cis, dict):
        value = cis.get(benchmark)
        return value if isinstance(value, str) and value else None
    if isinstance(cis, str):
        return map_cis(cis, benchmark) if profile else cis
    return None


def map_layer_ids(data: dict[str, Any], benchmark: str, profile: bool = True) -> dict[str, Any]:
    """A copy of a policy layer's data with every item's `cis` in `benchmark`'s ids
    (see resolve_cis; `profile`: the layer is a built-in profile's, in CIS 1.8 ids)."""
    out = dict(data)
    controls = {}
    for name, section in (data.get("controls") or {}).items():
        items = section.get("items") if isinstance(section, dict) else None
        if not isinstance(items, dict):
            controls[name] = section
            continue
        new_items = {}
        for key, item in items.items():
            if isinstance(item, dict) and "cis" in item:
                cis = resolve_cis(item["cis"], benchmark, profile)
                item = {k: v for k, v in item.items() if k != "cis"}
                if cis is not None:
                    item["cis"] = cis
            new_items[key] = item
        controls[name] = {**section, "items": new_items}
    if "controls" in data:
        out["controls"] = controls
    return out
