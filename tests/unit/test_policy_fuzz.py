"""Property-based fuzzing of the policy loader (issue 12, part 2).

Random policy documents (the policy's shape, random keys and values of random
types) and random bytes either load or raise PolicyError, never anything else.
Bounded and reproducible in CI: derandomize=True, a fixed number of examples.
"""

from __future__ import annotations

import datetime
import os
import string
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")  # Debian: python3-hypothesis (scripts/apt-test.txt)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from k3s_agent.controls import default_registry  # noqa: E402
from k3s_agent.host import Host  # noqa: E402
from k3s_agent.policy.loader import (  # noqa: E402
    ITEM_FIELDS,
    SECTION_FIELDS,
    TOP_FIELDS,
    Layer,
    compose,
    parse_policy,
    read_layer,
)
from k3s_agent.policy.model import PROFILES  # noqa: E402
from k3s_agent.policy.schema import PolicyError  # noqa: E402

EXAMPLES = int(os.environ.get("K3S_AGENTD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- strategies ---------------------------------------------------------------------------------

_TEXT = st.text(string.printable + "\x00\x1b\u00e9\u202e/.*?[]", max_size=24)
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.dates(),
    st.datetimes(),
    st.times(),
    st.sampled_from(["0", "1", "0777", "0600", "root", "nobody", "enforce", "audit", "tcp", "/etc/*"]),
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12,
)
ITEM_KEYS = st.one_of(
    _TEXT,
    st.sampled_from(
        [
            "net.ipv4.ip_forward",
            "net/ipv4/ip_forward",
            "/proc/sys/net/ipv4/ip_forward",
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.eth0/100.rp_filter",
            "net/ipv4/conf/eth0.100/rp_filter",
            "kernel.panic",
            "kernel/panic",
            "/",
            "/*",
            "/etc/*",
            "/etc/rancher/k3s/k3s.yaml",
            "/var/lib/rancher/k3s/server/tls/*.key",
            "PermitRootLogin",
            "protect-kernel-defaults",
            "k3s:protect-kernel-defaults",
            "ssh",
            "api",
        ]
    ),
)


def _known_or_random(names: Any) -> st.SearchStrategy[str]:
    known = st.sampled_from(sorted(names))
    return st.one_of(known, known, known, _TEXT)  # mostly known: reach the checks behind the first


def _table(keys: Any, values: st.SearchStrategy[Any] = VALUES, max_size: int = 4) -> st.SearchStrategy[dict]:
    return st.dictionaries(_known_or_random(keys), values, max_size=max_size)


# Items that pass the type checks, so the lints and duplicate checks behind them run too.
_PLAUSIBLE_ITEMS = {
    "sysctl": st.fixed_dictionaries(
        {"value": st.one_of(st.integers(-2, 2), st.sampled_from(["0", "1", "1 2", ""]))},
        optional={"accept_risk": st.sampled_from(["lab", ""]), "cis": st.just("4.2.6")},
    ),
    "files": st.fixed_dictionaries(
        {},
        optional={
            "mode": st.sampled_from(["0777", "0600", "0644", "1777", "777", "rwx"]),
            "owner": st.sampled_from(["root", "nobody", "0", "65534"]),
            "group": st.sampled_from(["root", "nogroup"]),
            "recursive": st.booleans(),
            "accept_risk": st.just("lab"),
        },
    ),
}


@st.composite
def sections(draw: Any, name: str) -> dict[str, Any]:
    spec = default_registry().get(name)
    options = set(spec.options) if spec else set()
    item_fields = set(ITEM_FIELDS) | (set(spec.item_fields) if spec else set())
    section = draw(st.one_of(_table(set(SECTION_FIELDS) | options), st.just({})))
    if draw(st.booleans()):
        item = st.one_of(_table(item_fields), VALUES, _PLAUSIBLE_ITEMS.get(name, VALUES))
        items = draw(st.dictionaries(ITEM_KEYS, item, max_size=4))
        section["items"] = items
    if draw(st.booleans()):
        section["disable"] = draw(st.lists(st.one_of(ITEM_KEYS, VALUES), max_size=3))
    return section


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    """A dict of the policy's shape: known and random keys, values of random types."""
    document = draw(_table(TOP_FIELDS))
    document["extends"] = draw(st.one_of(st.sampled_from(["none", "auto", *PROFILES]), VALUES))
    names = draw(st.lists(_known_or_random(default_registry()), max_size=3))
    controls = {name: draw(st.one_of(sections(name), VALUES)) for name in names}
    if controls or draw(st.booleans()):
        document["controls"] = controls
    if draw(st.booleans()):
        waiver = _table({"control", "key", "reason", "owner", "expires"})
        document["waiver"] = draw(st.lists(st.one_of(waiver, VALUES), max_size=2))
    return document


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with tempfile.TemporaryDirectory() as root:
        yield Host(root=root)


def _loads_or_refuses(host: Host, layers: list[Layer]) -> None:
    try:
        compose(host, layers)
    except PolicyError as exc:
        assert exc.problems, "a refusal says what is wrong"
        assert all(isinstance(p, str) and p.isprintable() for p in exc.problems)


# -- properties ---------------------------------------------------------------------------------


@FUZZ
@given(document=documents())
def test_random_documents_load_or_raise_policy_error(host: Host, document: dict[str, Any]) -> None:
    _loads_or_refuses(host, [Layer("fuzz.toml", document)])


@FUZZ
@given(layers=st.lists(documents(), min_size=2, max_size=3))
def test_random_layers_merge_or_raise_policy_error(host: Host, layers: list[dict[str, Any]]) -> None:
    _loads_or_refuses(host, [Layer(f"{i}.toml", data) for i, data in enumerate(layers)])


@FUZZ
@given(raw=st.binary(max_size=512))
def test_random_bytes_parse_or_raise_policy_error(raw: bytes) -> None:
    try:
        parse_policy("fuzz.toml", raw)
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.toml: ")


_SEED = b"""extends = "none"
interval = 30
[controls.sysctl.items."net.ipv4.ip_forward"]
value = 1
[controls.files.items."/etc/rancher/k3s/k3s.yaml"]
mode = "0600"
"""


@FUZZ
@given(
    cut=st.integers(0, len(_SEED)),
    splice=st.one_of(st.binary(max_size=16), st.sampled_from([b"[[[", b"]]", b'"', b"=", b"\n[", b"\xff"])),
)
def test_mutated_policy_files_load_or_raise_policy_error(host: Host, cut: int, splice: bytes) -> None:
    """Bytes spliced into a real policy file, through the whole reader (open, checks, parse, compose)."""
    with tempfile.NamedTemporaryFile(suffix=".toml") as handle:
        handle.write(_SEED[:cut] + splice + _SEED[cut:])
        handle.flush()
        os.chmod(handle.name, 0o644)
        try:
            layer = read_layer(handle.name)
        except PolicyError as exc:
            assert handle.name in str(exc)
            return
        _loads_or_refuses(host, [layer])


def test_fuzz_settings_are_bounded_and_reproducible() -> None:
    assert FUZZ.derandomize and FUZZ.deadline is None and FUZZ.max_examples == EXAMPLES


def test_documents_strategy_reaches_real_controls() -> None:
    """The strategy is not degenerate: it produces sections of real controls with items."""
    seen: set[str] = set()

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(document=documents())
    def collect(document: dict[str, Any]) -> None:
        controls = document.get("controls")
        if isinstance(controls, dict):
            seen.update(n for n, s in controls.items() if isinstance(s, dict) and s.get("items"))

    collect()
    assert {"sysctl", "files"} & seen, seen


_ = datetime  # TOML dates are among the random scalars
