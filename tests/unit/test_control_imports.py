"""A control knows no other control: no module of one control imports a module of another.

Facts several controls need (sshd's effective config and ports, K3s's
resolved configuration) live outside k3s_agent/controls/ (k3s_agent/sshd/,
k3s_agent/k3s/), and those fact modules import no control either. Every module
under k3s_agent/controls/ is classified below, so a new one must say whose it is.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "k3s_agent"
CONTROLS = "k3s_agent.controls"

# Modules under k3s_agent/controls/ that belong to no control: any control may import them.
SHARED = {
    "k3s_agent.controls",  # the registry
    "k3s_agent.controls.base",  # the Control contract
}
# Top-level module or package under controls/ -> the control it belongs to (a package: all its submodules).
OWNER = {
    "sysctl": "sysctl",
    "files": "files",
    "firewall": "firewall",
    "sshd": "sshd",
    "sshd_accounts": "sshd",
    "sshd_guard": "sshd",
    "sshd_lockout": "sshd",
    "k3s_args": "k3s_args",
    "k3s_encryption": "k3s_encryption",
}
# Fact layers below the controls: they import no control.
FACTS = ("k3s_agent.k3s", "k3s_agent.sshd", "k3s_agent.netaddr")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def modules(under: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(under.rglob("*.py"))}


ALL = modules(PACKAGE)


def imported(source: str, name: str, package: bool, known: set[str]) -> set[str]:
    """Every k3s_agent module the source imports (absolute and relative imports, `from pkg import mod`)."""
    found: set[str] = set()
    here = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {m for m in found if m == "k3s_agent" or m.startswith("k3s_agent.")}


def owner(module: str) -> Optional[str]:
    """The control a module under controls/ belongs to; None for a shared one."""
    if module in SHARED:
        return None
    top = module[len(CONTROLS) + 1 :].split(".")[0]
    return OWNER.get(top, f"unclassified:{top}")


def violations(name: str, source: str, package: bool = False, known: Optional[set[str]] = None) -> list[str]:
    """One line per import of another control's module: "a imports b (control x imports control y)"."""
    known = set(ALL) if known is None else known
    mine = owner(name)
    found = []
    for target in sorted(imported(source, name, package, known)):
        if not target.startswith(CONTROLS + ".") or target in SHARED:
            continue
        theirs = owner(target)
        if theirs != mine:
            found.append(f"{name} imports {target} (control {mine} imports control {theirs})")
    return found


def test_every_module_under_controls_is_classified() -> None:
    names = [n for n in ALL if n == CONTROLS or n.startswith(CONTROLS + ".")]
    tops = {n[len(CONTROLS) + 1 :].split(".")[0] for n in names if n not in SHARED}
    assert sorted(tops - set(OWNER)) == [], "add the new module to OWNER or SHARED"
    assert sorted(set(OWNER) - tops) == [], "a listed control module is gone: drop it from OWNER"
    assert sorted(SHARED - set(names)) == [], "a listed shared module is gone: drop it from SHARED"


def test_no_control_imports_another_control() -> None:
    found = []
    for name, path in ALL.items():
        if name.startswith(CONTROLS + ".") or name == CONTROLS:
            found += violations(name, path.read_text(), is_package(path))
    assert found == []


def test_fact_modules_import_no_control() -> None:
    found = []
    for name, path in ALL.items():
        if name.startswith(FACTS):
            targets = imported(path.read_text(), name, is_package(path), set(ALL))
            found += [f"{name} imports {t}" for t in sorted(targets) if t.startswith(CONTROLS)]
    assert found == []


# (module, its source, violations the checker must report)
CASES = [
    (
        "k3s_agent.controls.firewall.hostnet",
        "from k3s_agent.controls.sshd import sshd_answer\n",
        ["k3s_agent.controls.sshd (control firewall imports control sshd)"],
    ),
    (
        "k3s_agent.controls.firewall.hostnet",
        "from k3s_agent.controls import sshd_lockout\n",
        ["k3s_agent.controls.sshd_lockout (control firewall imports control sshd)"],
    ),
    (
        "k3s_agent.controls.files",
        "from . import sysctl\n",
        ["k3s_agent.controls.sysctl (control files imports control sysctl)"],
    ),
    (
        "k3s_agent.controls.firewall.control",
        "from .. import k3s_args\n",
        ["k3s_agent.controls.k3s_args (control firewall imports control k3s_args)"],
    ),
    (
        "k3s_agent.controls.sysctl",
        "import k3s_agent.controls.firewall.model as m\n",
        ["k3s_agent.controls.firewall.model (control sysctl imports control firewall)"],
    ),
    (
        "k3s_agent.controls.k3s_encryption",
        "def f():\n    from k3s_agent.controls.k3s_args import SPEC\n",
        ["k3s_agent.controls.k3s_args (control k3s_encryption imports control k3s_args)"],
    ),
    # allowed: one's own modules, shared helpers, fact layers
    ("k3s_agent.controls.sshd", "from k3s_agent.controls import sshd_guard\n", []),
    ("k3s_agent.controls.sshd_guard", "from k3s_agent.controls.sshd_lockout import lockouts\n", []),
    ("k3s_agent.controls.firewall.control", "from . import cni\nfrom .model import Rule\n", []),
    ("k3s_agent.controls.files", "from k3s_agent import hostfs\nfrom .base import Lint\n", []),
    ("k3s_agent.controls.firewall.hostnet", "from k3s_agent.sshd.facts import Answers\n", []),
    ("k3s_agent.controls.sysctl", "from k3s_agent.k3s.facts import read_facts\n", []),
    (
        "k3s_agent.controls.firewall.hostnet",
        "from k3s_agent.controls.sshd_config import parse_effective\n",  # no longer a module: unclassified
        ["k3s_agent.controls.sshd_config (control firewall imports control unclassified:sshd_config)"],
    ),
]


@pytest.mark.parametrize(("name", "source", "expected"), CASES)
def test_checker_finds_imports_across_controls(name: str, source: str, expected: list[str]) -> None:
    assert violations(name, source) == [f"{name} imports {e}" for e in expected]
