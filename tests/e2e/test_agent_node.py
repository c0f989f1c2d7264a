"""The scenario's key steps on an agent-only K3s node (issue 14, part 6).

A node of its own: the K3s fixture in the agent role (`k3s agent` under
k3s-agent.service, comm k3s-agent, the agent's data dir only), the .deb,
the test policy (`extends = "auto"`, so the agent profile) in enforce mode.
Converge, heal a drift of an agent key file and of the firewall, the
operator's SSH login from the peer after the heals, the role's checks
(agent parts only), status/check exit codes. The full scenario, reboot and
package lifecycle included, runs on the server node (test_scenario.py);
the Vagrant suite runs all of it on an agent VM too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.e2e import scenario as sc
from tests.e2e.conftest import booted_node
from tests.e2e.scenario import Context, Skipped, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.root]

STEPS = [
    sc.step_install_state,
    sc.step_operator_baseline,
    sc.step_start,
    sc.step_ready,
    sc.step_every_control,
    sc.step_first_cycle_enforced,
    sc.step_drift_files,
    sc.step_drift_firewall,
    sc.step_k3s_args,
    sc.step_k3s_role,
    sc.step_status_exit_codes,
]


@pytest.fixture(scope="module")
def agent_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    with booted_node(tmp_path_factory, "e2e-agent-node", name="k3s-e2e-agent", k3s_role="agent") as node:
        yield Context(node, log=lambda line: sys.stderr.write(f"  [agent] {line}\n"))


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__[len("step_") :] for s in STEPS])
def test_agent_step(step, agent_ctx: Context) -> None:
    try:
        step(agent_ctx)
    except Skipped as exc:
        pytest.fail(f"{step.__name__} cannot be skipped on the agent node: {exc}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{diagnostics(agent_ctx.node)}") from None
    if step is sc.step_start:
        assert agent_ctx.notes.get("k3s_unit") == "k3s-agent.service", agent_ctx.notes
