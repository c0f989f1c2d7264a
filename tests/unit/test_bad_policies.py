"""The corpus of bad policies (tests/data/bad_policies): every one is refused, naming
the file and what is wrong (issue 12: at least 150 cases)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy
from k3s_agent.policy.schema import PolicyError

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bad_policies"
CASES = sorted(CORPUS.glob("*.toml"))


def header(path: Path, field: str) -> list[str]:
    """Values of the leading `# field: value` lines (the header is ASCII even when the body is not)."""
    values = []
    for line in path.read_bytes().split(b"\n"):
        if not line.startswith(b"# "):
            break
        name, _, value = line[2:].decode("ascii").partition(": ")
        if name == field:
            values.append(value)
    return values


def test_corpus_is_large_and_every_case_expects_something() -> None:
    assert len(CASES) >= 150
    assert len({p.name.split("-", 1)[1] for p in CASES}) == len(CASES), "case names are distinct"
    assert len({p.read_bytes() for p in CASES}) == len(CASES), "cases are distinct"
    assert all(header(p, "expect") for p in CASES)


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_bad_policy_is_refused_naming_file_and_key(tmp_path: Path, case: Path) -> None:
    policy = tmp_path / case.name
    policy.write_bytes(case.read_bytes())
    os.chmod(policy, 0o644)  # a checkout's modes are not the point here
    skip = header(case, "skip")
    try:
        load_policy(Host(root=str(tmp_path)), path=str(policy))
    except PolicyError as exc:
        message = str(exc)
    else:
        message = ""
    missing = [e for e in [f"{policy}: ", *header(case, "expect")] if e not in message]
    if skip and (missing or not message):
        pytest.skip(skip[0])
    assert not skip, f"{case.name} is refused as expected now: remove its '# skip:' line"
    assert message, f"{case.name} was accepted"
    assert not missing, f"{case.name}: {missing} not in:\n{message}"
