"""Issue 6's scenario on a booted Debian 12 node (systemd-nspawn), step by step.

The steps live in scenario.py (shared with the Vagrant suite); here each one
is a test so a failure names the step and the rest still report. They run in
order on one node and depend on each other's state.
"""

from __future__ import annotations

import pytest

from tests.e2e.scenario import STEPS, Context, Skipped, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__[len("step_") :] for s in STEPS])
def test_step(step, scenario_ctx: Context) -> None:
    try:
        step(scenario_ctx)
    except Skipped as exc:
        pytest.skip(f"SKIPPED {step.__name__}: {exc}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{diagnostics(scenario_ctx.node)}") from None
