"""Build a firewall control from the real built-in profile, with host facts pinned."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

from k3s_agent.controls.firewall.control import FirewallControl
from k3s_agent.controls.firewall.desired import Inputs
from k3s_agent.host import Host
from k3s_agent.k3s.facts import K3sFacts
from k3s_agent.model import Finding, Status
from k3s_agent.policy.loader import load_policy

SSH_PORT = 2222  # what "sshd" listens on in the tests
NODE_NET = "10.99.0.0/24"


def facts(**changes: Any) -> K3sFacts:
    base = K3sFacts(
        cluster_cidrs=(ipaddress.ip_network("10.42.0.0/16"), ipaddress.ip_network("fd42::/56")),
        service_cidrs=(ipaddress.ip_network("10.43.0.0/16"),),
        flannel_backend="vxlan",
        etcd=True,
        registry=False,
        sources=(),
    )
    return dataclasses.replace(base, **changes)


def make_control(root: Path, backend: str, items: Any = None, **options: Any) -> FirewallControl:
    host = Host(root=str(root))
    section = load_policy(host, profile="k3s-cis-server").controls["firewall"]
    merged_items = dict(section.items)
    merged_items.update(items or {})
    section = dataclasses.replace(
        section, options={**section.options, "backend": backend, **options}, items=merged_items
    )
    inputs = Inputs(
        k3s=facts(),
        ssh_ports=(SSH_PORT,),
        local_subnets=(ipaddress.ip_network(NODE_NET),),
    )
    return FirewallControl(section, host, inputs)


def drift(findings: list[Finding]) -> dict[str, Finding]:
    return {f.key: f for f in findings if f.status is not Status.OK}


def assert_clean(findings: list[Finding]) -> None:
    """Nothing but OK findings, else the ones that are not, with their messages."""
    bad = drift(findings)
    assert not bad, {k: (f.status.value, f.message, f.observed) for k, f in bad.items()}


def heal(control: FirewallControl) -> tuple[list[Finding], list[Finding]]:
    """check -> apply(drift) -> check, as the engine does; returns (apply results, re-check)."""
    found = [f for f in control.check() if f.status is Status.DRIFT]
    results = control.apply(found) if found else []
    return results, control.check()
