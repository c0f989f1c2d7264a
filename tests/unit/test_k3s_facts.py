"""K3s facts every control reads (k3s_agent.k3s.facts): role, data dir, node addresses, dual-stack."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from k3s_agent.host import Host
from k3s_agent.k3s import facts

UNIT = "etc/systemd/system/k3s-agent.service"
CONFIG = facts.CONFIG.lstrip("/")

# (files under the root, expected facts)
CASES: list[tuple[dict[str, str], dict[str, Any]]] = [
    ({}, {"role": "server", "data_dir": facts.DEFAULT_DATA_DIR, "node_ips": (), "dual_stack": False}),
    (
        {UNIT: "[Service]\nExecStart=/usr/local/bin/k3s agent --data-dir /srv/k3s\n"},
        {"role": "agent", "data_dir": "/srv/k3s", "sources": ("/" + UNIT,)},
    ),
    ({CONFIG: "d: /srv/short\n"}, {"data_dir": "/srv/short"}),  # -d, the one-letter spelling
    (
        {CONFIG: "node-ip: 192.0.2.7,2001:db8::7\ncluster-cidr: 10.42.0.0/16,fd42::/56\n"},
        {
            "node_ips": (ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")),
            "dual_stack": True,
        },
    ),
    ({CONFIG: "cluster-cidr: fd42::/56\n"}, {"dual_stack": True}),  # IPv6-only: pods have IPv6 too
    ({CONFIG: "node-ip: bad\n"}, {"node_ips": (), "problems": ("K3s node-ip 'bad': ",)}),
    ({CONFIG: "a: [\n"}, {"dual_stack": False, "role": None, "problems": ("K3s config: ",)}),
]


@pytest.mark.parametrize(("files", "expected"), CASES)
def test_k3s_facts(root: Path, files: dict[str, str], expected: dict[str, Any]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    found = facts.read_facts(Host(root=str(root)))
    for name, want in expected.items():
        seen = getattr(found, name)
        if name == "problems":
            assert len(seen) == len(want) and all(s.startswith(w) for s, w in zip(seen, want)), seen
        else:
            assert seen == want, name


def test_embedded_etcd_is_found_under_the_configured_data_dir(root: Path) -> None:
    (root / CONFIG).parent.mkdir(parents=True)
    (root / CONFIG).write_text("data-dir: /srv/k3s\n")
    host = Host(root=str(root))
    assert not facts.read_facts(host).etcd
    (root / "srv/k3s" / facts.ETCD_SUBDIR).mkdir(parents=True)
    assert facts.read_facts(host).etcd
