"""Fixtures for the booted-node suite: build the .deb, a rootfs with it installed, boot it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.e2e.nspawn import NspawnNode, make_node_rootfs
from tests.e2e.scenario import Context

REPO = Path(__file__).resolve().parents[2]


def _deb(log) -> str:
    prebuilt = os.environ.get("K3S_AGENTD_DEB")
    if prebuilt:
        return prebuilt
    subprocess.run(["make", "-C", str(REPO), "deb"], check=True, stdout=log, stderr=subprocess.STDOUT)
    version = subprocess.run(
        ["make", "-s", "-C", str(REPO), "version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return str(REPO / "dist" / f"k3s-hardening-agent_{version}_all.deb")


@contextlib.contextmanager
def booted_node(
    tmp_path_factory: pytest.TempPathFactory,
    label: str,
    name: str = "k3s-e2e",
    k3s_fixture: bool = True,
    extra_packages: Sequence[str] = (),
    k3s_role: str = "server",
) -> Iterator[NspawnNode]:
    """A fresh node (rootfs with the .deb, `extra_packages` and the K3s fixture in
    `k3s_role`), booted; shut down and removed after (kept with K3S_AGENTD_E2E_KEEP)."""
    if os.geteuid() != 0:
        pytest.fail("the e2e suite boots a container: run it as root")
    work = tmp_path_factory.mktemp(label)
    log_path = work / "build.log"
    started = time.monotonic()
    fixture = str(REPO / "tests" / "support" / "k3s_fixture") if k3s_fixture else None
    with open(log_path, "w") as log:
        rootfs = make_node_rootfs(
            str(work), _deb(log), fixture, log, extra_packages=extra_packages, k3s_role=k3s_role
        )
    built = time.monotonic() - started
    node = NspawnNode(rootfs, name=name)
    node.boot()
    sys.stderr.write(
        f"\n{label} node ready in {time.monotonic() - started:.0f}s (rootfs {built:.0f}s); "
        f"logs: {log_path}, {node.console_log}\n"
    )
    try:
        yield node
    finally:
        node.shutdown()
        if not os.environ.get("K3S_AGENTD_E2E_KEEP"):
            subprocess.run(["rm", "-rf", "--one-file-system", rootfs], check=False)


@pytest.fixture(scope="session")
def nspawn_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NspawnNode]:
    with booted_node(tmp_path_factory, "e2e-node") as node:
        yield node


@pytest.fixture(scope="session")
def scenario_ctx(nspawn_node: NspawnNode) -> Context:
    return Context(nspawn_node, log=lambda line: sys.stderr.write(f"  {line}\n"))
