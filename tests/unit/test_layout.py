"""The test tree itself: pytest imports tests/unit and tests/integration by basename
(no __init__.py), so two files of one name there stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_rootdir_folders() -> None:
    names = Counter(
        path.name
        for folder in TESTS.iterdir()
        if folder.is_dir() and not (folder / "__init__.py").exists()
        for path in folder.glob("test_*.py")
    )
    assert [name for name, count in names.items() if count > 1] == []
