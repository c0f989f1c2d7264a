"""The firewall through the real engine (check -> apply -> verify), in a fresh netns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3s_agent.engine import Engine
from k3s_agent.host import Host
from k3s_agent.policy.loader import load_policy
from tests.support.netns import LEGACY_MISSING, in_netns

pytestmark = pytest.mark.root


@pytest.mark.parametrize(
    "backend",
    [
        "nftables",
        pytest.param("iptables", marks=pytest.mark.skipif(bool(LEGACY_MISSING), reason=LEGACY_MISSING)),
    ],
)
def test_engine_heals_then_reports_compliant(root: Path, backend: str) -> None:
    policy_file = root / "etc/k3s-agentd/policy.toml"
    policy_file.write_text(
        'version = 1\nextends = "k3s-cis-agent"\n'
        f'[controls.firewall]\nbackend = "{backend}"\nssh_ports = [2222]\n'
    )
    os.chmod(policy_file, 0o644)
    host = Host(root=str(root))
    policy = load_policy(host, path=str(policy_file))

    def two_cycles() -> tuple[dict, dict, dict]:
        engine = Engine(policy, host)
        first = engine.run_cycle(only=["firewall"]).controls[0]
        second = engine.run_cycle(only=["firewall"]).controls[0]
        return (
            {f.key: f.status.value for f in first.findings},
            {f.key: f.status.value for f in second.findings},
            second.facts,
        )

    first, second, facts = in_netns(two_cycles)
    assert first["ssh"] == "healed" and first["table" if backend == "nftables" else "jump"] == "healed"
    assert set(first.values()) <= {"healed", "ok"}, first
    assert set(second.values()) == {"ok"}, second
    assert facts["backend"] == backend and facts["backend_reason"] == "set in the policy"
    assert facts["ssh_ports"] == [2222]
