"""Commit-confirmed enforcement on a booted node of its own (tests/e2e/confirm_steps.py).

Its own node (not the scenario's session node): the scenario asserts a node
that only ever ran in audit mode first, and these steps lock SSH out on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.confirm_steps import STEPS
from tests.e2e.conftest import REPO, _deb
from tests.e2e.nspawn import NspawnNode, make_node_rootfs
from tests.e2e.scenario import Context, Skipped, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def confirm_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    if os.geteuid() != 0:
        pytest.fail("the e2e suite boots a container: run it as root")
    work = tmp_path_factory.mktemp("e2e-confirm")
    started = time.monotonic()
    with open(work / "build.log", "w") as log:
        rootfs = make_node_rootfs(str(work), _deb(log), str(REPO / "tests" / "k3s_fixture"), log)
    node = NspawnNode(rootfs, name="k3s-e2e-confirm")  # with its own peer namespace (peer.py)
    node.boot()
    sys.stderr.write(
        f"\ne2e confirm node ready in {time.monotonic() - started:.0f}s; console {node.console_log}\n"
    )
    try:
        yield Context(node, log=lambda line: sys.stderr.write(f"  {line}\n"))
    finally:
        node.shutdown()
        if not os.environ.get("K3S_AGENTD_E2E_KEEP"):
            subprocess.run(["rm", "-rf", "--one-file-system", rootfs], check=False)


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__[len("step_") :] for s in STEPS])
def test_confirm_step(step, confirm_ctx: Context) -> None:
    try:
        step(confirm_ctx)
    except Skipped as exc:
        pytest.skip(f"SKIPPED {step.__name__}: {exc}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n\n{diagnostics(confirm_ctx.node)}") from None
