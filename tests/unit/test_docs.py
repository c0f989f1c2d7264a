"""The docs say what the code does: generated policy reference, every path they cite exists.

- docs/policy.md's reference tables are generated from the schema (the
  Fields); a stale page fails here, naming the command that regenerates it.
- Every Field's default is a value its own Field accepts (a default the
  loader would refuse is a bug in one place, caught here).
- A backticked repo-relative path (`k3s_agent/...`, `tests/...`, `docs/...`)
  or a relative Markdown link in docs/*.md and README.md must exist.
"""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.controls import default_registry
from k3s_agent.policy import keys, schema_doc
from k3s_agent.policy.schema import Field, check_table

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(p.relative_to(REPO).as_posix() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
# First components of paths in this repository; `shared/` is the product brief's
# folder, outside the repo: citing it as if it were here is the error to catch.
ROOTS = ("k3s_agent", "tests", "docs", "bench", "packaging", "scripts", "systemd", "shared")
# Paths in other repositories, cited with the repository's name before them.
EXTERNAL = {
    "docs/security/self-assessment-1.8.md",  # k3s-io/docs (docs/k3s.md)
}
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE = re.compile(r"`([^`\s]+)`")
_LINK = re.compile(r"\]\(([^)\s#:]+)(?:#[^)]*)?\)")
_BRACES = re.compile(r"\{([^{}]*)\}")


def test_policy_reference_is_generated_from_the_schema() -> None:
    page = (REPO / "docs" / "policy.md").read_text(encoding="utf-8")
    assert schema_doc.current(
        page
    ), f"docs/policy.md lost its {schema_doc.BEGIN!r} ... {schema_doc.END!r} markers"
    assert (
        schema_doc.current(page) == schema_doc.generate()
    ), f"docs/policy.md's reference tables differ from the schema; regenerate them: {schema_doc.REGENERATE}"


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "policy.md"
    page.write_text(f"intro\n\n{schema_doc.BEGIN}\nold table\n{schema_doc.END}\n\noutro\n")
    assert schema_doc.main(["--check", str(page)]) == 1
    assert "old table" in page.read_text()
    assert schema_doc.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\noutro\n") and "old table" not in text
    assert schema_doc.main(["--check", str(page)]) == 0


def _all_fields() -> list[tuple[str, Field]]:
    tables = {
        "top": keys.TOP_FIELDS,
        "contest": keys.CONTEST_FIELDS,
        "metrics": keys.METRICS_FIELDS,
        "waiver": keys.WAIVER_FIELDS,
        "section": keys.SECTION_FIELDS,
        "item": keys.ITEM_FIELDS,
    }
    for spec in default_registry().values():
        tables[f"{spec.name}.options"] = spec.options
        tables[f"{spec.name}.items"] = spec.item_fields
    return [(f"{table}.{key}", field) for table, fields in tables.items() for key, field in fields.items()]


FIELDS = _all_fields()
DEFAULTED = [(name, field) for name, field in FIELDS if field.default is not None]


def test_the_schema_declares_defaults() -> None:
    """The table below is not empty by accident (every top-level number has one)."""
    names = {name for name, _ in DEFAULTED}
    assert {"top.interval", "top.control_timeout", "contest.window", "sysctl.options.persist"} <= names
    assert len(DEFAULTED) >= 30


@pytest.mark.parametrize(("name", "field"), DEFAULTED, ids=[n for n, _ in DEFAULTED])
def test_every_default_is_accepted_by_its_own_field(name: str, field: Field) -> None:
    default: Any = list(field.default) if isinstance(field.default, tuple) else field.default
    assert check_table({"k": default}, {"k": field}, "schema", ()) == [], name


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        (keys.TOP_FIELDS["interval"], 0.5, "must be between 1 and 86400, got 0.5"),
        (keys.TOP_FIELDS["interval"], 86401, "must be between 1 and 86400, got 86401"),
        (keys.TOP_FIELDS["interval"], 86400, None),
        (keys.TOP_FIELDS["control_timeout"], 3601, "must be between 1 and 3600, got 3601"),
        (keys.TOP_FIELDS["confirm_timeout"], 0, None),
        (keys.CONTEST_FIELDS["threshold"], 1, "must be >= 2, got 1"),
        (keys.CONTEST_FIELDS["window"], 7 * 86400 + 1, "must be between 1 and 604800, got 604801"),
        (Field(int, max=5), 6, "must be <= 5, got 6"),
        (Field(int, max=5), 5, None),
    ],
)
def test_bounds_on_the_field(field: Field, value: Any, problem: Any) -> None:
    assert field.problem(value) == problem


def _expand(path: str) -> list[str]:
    """a/{b,c}.py -> a/b.py, a/c.py"""
    parts = _BRACES.split(path)
    choices = [part.split(",") if index % 2 else [part] for index, part in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _exists(path: str) -> bool:
    path = path.rstrip(".,:;")
    if "<" in path or "..." in path:  # a placeholder: profiles/<name>/, tests/...
        path = re.split(r"<|\.\.\.", path)[0].rsplit("/", 1)[0]
    return all(glob.glob(str(REPO / p)) for p in _expand(path))


def cited_paths(text: str) -> list[str]:
    text = _FENCE.sub("", text)
    paths = [m for m in _CODE.findall(text) if m.split("/", 1)[0] in ROOTS and "/" in m]
    return [p for p in paths if p not in EXTERNAL]


@pytest.mark.parametrize("page", PAGES)
def test_every_backticked_repo_path_exists(page: str) -> None:
    missing = [p for p in cited_paths((REPO / page).read_text(encoding="utf-8")) if not _exists(p)]
    assert not missing, f"{page} cites paths that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_exists(page: str) -> None:
    folder = (REPO / page).parent
    links = _LINK.findall(_FENCE.sub("", (REPO / page).read_text(encoding="utf-8")))
    missing = [link for link in links if not (folder / link).exists()]
    assert not missing, f"{page} links to files that are not in the repository: {missing}"


@pytest.mark.parametrize(
    ("text", "cited"),
    [
        (
            "see `k3s_agent/engine.py` and `tests/e2e/README.md`.",
            ["k3s_agent/engine.py", "tests/e2e/README.md"],
        ),
        ("plan: `shared/DESIGN.md`", ["shared/DESIGN.md"]),
        ("k3s-io/docs `docs/security/self-assessment-1.8.md`", []),
        ("`/etc/k3s-agentd/policy.toml`, `net/ipv4/ip_forward`, `k3s_agent`", []),
        ("```\ntests/nothing.py `tests/in_a_fence.py`\n```\n", []),
    ],
)
def test_what_counts_as_a_cited_path(text: str, cited: list[str]) -> None:
    assert cited_paths(text) == cited


@pytest.mark.parametrize(
    ("path", "exists"),
    [
        ("k3s_agent/engine.py", True),
        ("k3s_agent/nothing.py", False),
        ("shared/DESIGN.md", False),
        ("tests/e2e/README.md", True),
        ("k3s_agent/policy/profiles/<name>/*.toml", True),
        ("k3s_agent/k3s/", True),
        ("tests/unit/test_{docs,registry}.py", True),
        ("tests/unit/test_{docs,gone}.py", False),
    ],
)
def test_path_existence_rules(path: str, exists: bool) -> None:
    assert _exists(path) is exists
