"""YAML aliases cannot make a small file big: every host YAML goes through the capped loader."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from k3s_agent.host import Host
from k3s_agent.k3s import kubelet, yamlcap
from k3s_agent.k3s.config import ConfigError, load_pairs


def _laughs(levels: int, width: int = 9) -> str:
    names = [chr(ord("a") + n) for n in range(levels + 1)]
    lines = [f'{names[0]}: &{names[0]} [{",".join(["lol"] * width)}]']
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * width)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int) -> str:
    lines = ["m0: &m0 {k0: v, k1: v}"]
    lines += [f"m{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}], k{n + 1}: v}}" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


# (id, document, refused with this in the message, or None when it loads)
CASES = [
    ("plain", "node-name: n1\ntls-san: [a, b]\n", None),
    ("anchor-reused-twice", "a: &x [one, two]\nb: *x\nc: *x\n", None),
    ("merge-key", "base: &b {x: 1}\nnode: {<<: *b, y: 2}\n", None),
    ("laughs-3-levels-fits", _laughs(3), None),  # 9^4 = 6561 scalars: within the budget
    ("laughs-6-levels", _laughs(6), "a 'billion laughs' document"),
    ("laughs-9-levels", _laughs(9), "a 'billion laughs' document"),
    ("wide-laughs", _laughs(2, width=200), "a 'billion laughs' document"),
    ("big-scalar-aliased", "- &s " + "x" * 60_000 + "\n- *s\n- *s\n", "a 'billion laughs' document"),
    ("merge-bomb", _merge_bomb(30), "a 'billion laughs' document"),
    ("recursive-alias", "a: &a [1, *a]\n", "refers to a node containing it"),
    ("recursive-mapping", "a: &a {b: *a}\n", "refers to a node containing it"),
    ("nested-150", "[" * 150 + "]" * 150, "nested deeper than 100 levels"),
    ("nested-5000", "[" * 5000 + "]" * 5000, "nested deeper than 100 levels"),
    ("nested-1MiB", "[" * (1 << 20), "nested deeper than 100 levels"),
    ("nested-block", "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 300)), "nested deeper"),
]


@pytest.mark.parametrize(("name", "text", "refused"), CASES, ids=[c[0] for c in CASES])
def test_aliases_are_capped(name: str, text: str, refused: str) -> None:
    start = time.monotonic()
    if refused is None:
        assert yamlcap.safe_load(text) == yaml.safe_load(text)
    else:
        with pytest.raises(yamlcap.YAMLLimit, match=refused):
            yamlcap.safe_load(text)
        assert isinstance(yamlcap.YAMLLimit("x"), yaml.YAMLError)  # callers' except clauses catch it
    assert time.monotonic() - start < 3.0  # PyYAML's scanner needs ~0.6 s for 1,000 open "["


def test_k3s_config_refusal_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/rancher/k3s/config.yaml: refused: aliases expand it"):
        load_pairs(_laughs(6), "/etc/rancher/k3s/config.yaml")


def test_kubelet_dropin_bomb_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "var/lib/rancher/k3s" / kubelet.DROPIN_DIR
    folder.mkdir(parents=True)
    (folder / "10-bomb.conf").write_text(_laughs(6))
    (folder / "20-ok.conf").write_text("readOnlyPort: 0\n")
    merged, problems = kubelet.read_dropins(Host(root=str(tmp_path)), "/var/lib/rancher/k3s")
    assert merged == {"readOnlyPort": 0}
    assert len(problems) == 1
    assert problems[0].startswith("/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/10-bomb.conf:")
