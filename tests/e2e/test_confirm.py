"""Commit-confirmed enforcement on a booted node of its own (tests/e2e/confirm_steps.py).

Its own node (not the scenario's session node): the scenario asserts a node
that only ever ran in audit mode first, and these steps lock SSH out on purpose.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.e2e.confirm_steps import STEPS
from tests.e2e.conftest import booted_node
from tests.e2e.scenario import Context, Skipped, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def confirm_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    # with its own peer namespace (peer.py)
    with booted_node(tmp_path_factory, "e2e-confirm", name="k3s-e2e-confirm") as node:
        yield Context(node, log=lambda line: sys.stderr.write(f"  {line}\n"))


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__[len("step_") :] for s in STEPS])
def test_confirm_step(step, confirm_ctx: Context) -> None:
    try:
        step(confirm_ctx)
    except Skipped as exc:
        pytest.skip(f"SKIPPED {step.__name__}: {exc}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{diagnostics(confirm_ctx.node)}") from None
