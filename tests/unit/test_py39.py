"""The agent must run on RHEL 9's Python 3.9: no grammar or stdlib from 3.10+."""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

import k3s_agent

SOURCES = sorted(Path(k3s_agent.__file__).parent.rglob("*.py"))
# `with (` at the end of a line opens a parenthesized group of context managers,
# grammar of 3.10 (PEP 617 notes 3.9's parser accepts it only by accident).
_PAREN_WITH = re.compile(r"^\s*(async\s+)?with\s+\($", re.MULTILINE)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(SOURCES[0].parent.parent)) for p in SOURCES])
def test_source_is_python39_grammar(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    ast.parse(text, filename=str(path), feature_version=(3, 9))  # match, except*, ...
    assert not _PAREN_WITH.search(text), f"{path}: parenthesized context managers need Python 3.10"


def _python39() -> Optional[str]:
    """A working python3.9 (on PATH or under ~/.pyenv), None when there is none."""
    candidates = [
        shutil.which("python3.9"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    return None


PYTHON39 = _python39()


@pytest.mark.skipif(PYTHON39 is None, reason="no python3.9 on this machine")
def test_every_module_compiles_under_python39_old_parser() -> None:
    script = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p).read(), p, 'exec')\n"
    done = subprocess.run(
        [str(PYTHON39), "-X", "oldparser", "-c", script, *map(str, SOURCES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
