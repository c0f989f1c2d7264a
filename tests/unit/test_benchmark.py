"""The benchmark picker, `k3s --version` parsing and the per-benchmark check ids."""

from __future__ import annotations

import re
from typing import Optional

import pytest

from k3s_agent.k3s.version import parse
from k3s_agent.policy import benchmark as bench
from k3s_agent.policy.loader import profile_layers

# (K3s version, benchmark auto picks, words the reason must hold)
PICKS = [
    ("v1.24.17+k3s1", "k3s-cis-1.8", "older than v1.26"),
    ("v1.25.16+k3s4", "k3s-cis-1.8", "older than v1.26"),
    ("v1.26.15+k3s1", "k3s-cis-1.8", "K3s v1.26.15+k3s1 -> k3s-cis-1.8"),
    ("v1.27.16+k3s1", "k3s-cis-1.9", "-> k3s-cis-1.9"),
    ("v1.28.15+k3s1", "k3s-cis-1.9", "-> k3s-cis-1.9"),
    ("v1.29.15+k3s1", "k3s-cis-1.9", "-> k3s-cis-1.9"),
    ("v1.30.4+k3s1", "k3s-cis-1.10", "auto: K3s v1.30.4+k3s1 -> k3s-cis-1.10"),
    ("v1.31.0-rc1+k3s1", "k3s-cis-1.10", "K3s v1.31.0-rc1+k3s1 -> k3s-cis-1.10"),
    ("v1.31.4+k3s1", "k3s-cis-1.10", "-> k3s-cis-1.10"),
    ("v1.32.0-rc2+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.32.1+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.33.5+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.34.1+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.35.0+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.36.2+k3s1", "k3s-cis-1.12", "-> k3s-cis-1.12"),
    ("v1.37.0+k3s1", "k3s-cis-1.12", "newer than v1.36"),
    ("v1.40.0-rc1+k3s2", "k3s-cis-1.12", "newer than v1.36"),
    ("v2.0.0+k3s1", "k3s-cis-1.12", "not understood"),
    ("banana", "k3s-cis-1.12", "not understood"),
]


@pytest.mark.parametrize("version,want,reason", PICKS)
def test_auto_picks_by_k3s_version(version: str, want: str, reason: str) -> None:
    choice = bench.pick("auto", version)
    assert choice.name == want
    assert choice.requested == "auto" and choice.k3s_version == version
    assert reason in choice.reason and choice.reason.startswith("auto: ")
    assert choice.cis_version == want.rsplit("-", 1)[1]


def test_every_mapped_benchmark_is_one_we_know() -> None:
    assert set(bench.BY_MINOR.values()) == set(bench.BENCHMARKS)
    assert bench.NEWEST == "k3s-cis-1.12"


@pytest.mark.parametrize(
    "why,want",
    [
        ("K3s not found", "auto: K3s not found -> k3s-cis-1.12, the newest"),
        ("K3s version unknown (x)", "unknown"),
    ],
)
def test_unknown_k3s_gets_the_newest(why: str, want: str) -> None:
    choice = bench.pick("auto", None, why)
    assert choice.name == bench.NEWEST and choice.k3s_version is None
    assert want in choice.reason


@pytest.mark.parametrize("pinned", bench.BENCHMARKS)
@pytest.mark.parametrize("version", ["v1.26.1+k3s1", "v1.35.0+k3s1", None])
def test_a_pinned_benchmark_wins_over_the_version(pinned: str, version: Optional[str]) -> None:
    choice = bench.pick(pinned, version)
    assert (choice.name, choice.requested, choice.k3s_version) == (pinned, pinned, version)
    assert choice.reason == f"pinned by the policy: {pinned}"


# `k3s --version` output -> the version parsed (None: not a K3s answer)
OUTPUTS = [
    ("k3s version v1.30.4+k3s1 (98262b5d)\ngo version go1.22.5\n", "v1.30.4+k3s1"),
    ("k3s version v1.31.0-rc1+k3s1 (5f3b1a2c)\ngo version go1.22.5\n", "v1.31.0-rc1+k3s1"),
    ("k3s version v1.35.0+k3s1 (0000000)\n", "v1.35.0+k3s1"),
    ("k3s version v1.28.2+k3s1\n", "v1.28.2+k3s1"),
    ("\n  k3s version v1.29.1+k3s2 (abc)\n", "v1.29.1+k3s2"),
    ("k3s version v1.30\n", None),
    ("k3s version 1.30.4+k3s1 (x)\n", None),
    ("K3S VERSION v1.30.4+k3s1\n", None),
    ("kubectl version v1.30.4+k3s1\n", None),
    ("go version go1.22.5\nk3s version v1.30.4+k3s1\n", None),
    ("k3s version v1.30.4+k3s1; rm -rf /\n", None),
    ("", None),
    ("\x00\xff garbage \x1b[31m", None),
    ("Segmentation fault\n", None),
]


@pytest.mark.parametrize("output,want", OUTPUTS)
def test_parse_k3s_version_output(output: str, want: Optional[str]) -> None:
    assert parse(output) == want


# (CIS 1.8 id(s), benchmark, the id(s) there) — from the self-assessment guides
IDS = [
    ("1.2.16", "k3s-cis-1.8", "1.2.16"),
    ("1.2.16", "k3s-cis-1.9", "1.2.15"),
    ("1.2.16", "k3s-cis-1.10", "1.2.15"),
    ("1.2.16", "k3s-cis-1.12", "1.2.15"),
    ("1.2.30", "k3s-cis-1.12", "1.2.29"),
    ("1.2.21", "k3s-cis-1.10", "1.2.20"),
    ("1.2.28", "k3s-cis-1.9", "1.2.27"),
    ("1.2.9/1.2.10/1.2.15", "k3s-cis-1.8", "1.2.9/1.2.10/1.2.15"),
    ("1.2.9/1.2.10/1.2.15", "k3s-cis-1.10", "1.2.9/1.2.10/1.2.14"),
    ("1.2.6/1.2.7/1.2.8", "k3s-cis-1.12", "1.2.6/1.2.7/1.2.8"),
    ("1.2.11/1.2.12", "k3s-cis-1.9", "1.2.11"),
    ("1.2.12", "k3s-cis-1.12", None),
    ("1.1.13/1.1.14", "k3s-cis-1.12", "1.1.13/1.1.14"),
    ("4.2.12", "k3s-cis-1.12", "4.2.12"),
    ("1.3.1", "k3s-cis-1.10", "1.3.1"),
    ("see the sshd guide 1.2.16", "k3s-cis-1.12", "see the sshd guide 1.2.16"),
]


@pytest.mark.parametrize("cis,benchmark,want", IDS)
def test_cis_ids_per_benchmark(cis: str, benchmark: str, want: Optional[str]) -> None:
    assert bench.map_cis(cis, benchmark) == want


def _profile_ids(name: str, benchmark: str) -> dict[tuple[str, str], str]:
    out = {}
    for layer in profile_layers(name):
        data = bench.map_layer_ids(layer.data, benchmark)
        for control, section in data.get("controls", {}).items():
            for key, item in section.get("items", {}).items():
                if "cis" in item:
                    out[(control, key)] = item["cis"]
    return out


def test_profile_ids_move_with_the_benchmark() -> None:
    """The server profile, as each benchmark numbers it; the profile files themselves stay 1.8."""
    key = ("k3s_args", "kube-apiserver:profiling")
    assert _profile_ids("k3s-cis-server", "k3s-cis-1.8")[key] == "1.2.16"
    for benchmark in ("k3s-cis-1.9", "k3s-cis-1.10", "k3s-cis-1.12"):
        ids = _profile_ids("k3s-cis-server", benchmark)
        assert ids[key] == "1.2.15"
        # CIS 1.8's apiserver-cipher id 1.2.30 is 1.2.29 now; in 1.12 1.2.30 is
        # service-account-extend-token-expiration, tagged with a per-benchmark table
        holders = {k for k, v in ids.items() if "1.2.30" in v.split("/")}
        extend = ("k3s_args", "kube-apiserver:service-account-extend-token-expiration")
        assert holders == ({extend} if benchmark == "k3s-cis-1.12" else set())
        assert ids[("k3s_args", "kube-apiserver:tls-cipher-suites")] == "1.2.29"
    assert _profile_ids("k3s-cis-server", "k3s-cis-1.8")[key] == "1.2.16"  # not mutated


def test_profiles_only_use_ids_the_table_knows() -> None:
    """Every 1.2.x id in the profiles is either unchanged or in the table (no silent gap)."""
    for name in ("k3s-cis-server", "k3s-cis-agent"):
        for cis in _profile_ids(name, "k3s-cis-1.8").values():
            for part in cis.split("/"):
                if re.fullmatch(r"1\.2\.\d+", part) and int(part.split(".")[2]) >= 12:
                    assert part in bench.ID_CHANGES["k3s-cis-1.12"], part
