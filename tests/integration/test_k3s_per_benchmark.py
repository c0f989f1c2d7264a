"""Items whose benchmark requirement differs per benchmark, judged by the one in force.

The apiserver's cipher check (CIS 1.8 1.2.30, 1.9+ 1.2.29): the item asks for CIS
1.12's list, the strictest; each older benchmark allows more (its own list is the
item's `benchmark` there). A node within the older list is ok under that benchmark,
with "stricter than CIS 1.x"; outside it, drift. kube-proxy's metrics address (4.3.1
from CIS 1.9 on): the benchmark's "any localhost port" only where the check exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.model import Status
from tests.support.k3s_fixture import HARDENED_CONFIG, K3sNode
from tests.support.k3s_fixture.journalfile import JOURNAL_REMOTE
from tests.support.k3sharness import Harness

pytestmark = [pytest.mark.root, pytest.mark.skipif(not JOURNAL_REMOTE, reason="needs systemd-journal-remote")]

KEY = "kube-apiserver:tls-cipher-suites"
PROXY = "kube-proxy:metrics-bind-address"
GCM = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
CBC = "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"  # 1.8, 1.9, 1.10; not 1.12
DES = "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"  # 1.8, 1.9 only
OK, STRICTER, DRIFT = (Status.OK, ""), (Status.OK, "stricter than CIS"), (Status.DRIFT, "has ")
BENCHMARKS = ("k3s-cis-1.8", "k3s-cis-1.9", "k3s-cis-1.10", "k3s-cis-1.12")

# suites passed (None: K3s's default list), the verdict under 1.8, 1.9, 1.10, 1.12
CASES = [
    (None, (OK, OK, OK, OK)),
    (f"{GCM},{CBC}", (STRICTER, STRICTER, STRICTER, DRIFT)),
    (f"{GCM},{DES}", (STRICTER, STRICTER, DRIFT, DRIFT)),
]


def _per_benchmark(h: Harness, key: str) -> dict[str, tuple[Status, str]]:
    """The item's (status, message) under each benchmark, on the running fixture."""
    got = {}
    try:
        h.start()
        for benchmark in BENCHMARKS:
            h.section = dataclasses.replace(h.section, benchmark=benchmark)
            h.control = h.build()
            found = h.check()[key]
            got[benchmark] = (found.status, found.message)
    finally:
        h.stop()
    return got


@pytest.mark.parametrize(("suites", "verdicts"), CASES, ids=["default", "cbc", "3des"])
def test_cipher_check_follows_the_benchmark(tmp_path: Path, suites: Optional[str], verdicts) -> None:
    config = HARDENED_CONFIG
    if suites is not None:
        anchor = '  - "anonymous-auth=false"\n'
        config = config.replace(anchor, f'{anchor}  - "tls-cipher-suites={suites}"\n')
    got = _per_benchmark(Harness(tmp_path, K3sNode(tmp_path / "node", config=config)), KEY)
    for benchmark, (status, start) in zip(BENCHMARKS, verdicts):
        seen_status, message = got[benchmark]
        assert seen_status is status and message.startswith(start), (benchmark, got[benchmark])
        if start == "stricter than CIS":
            assert message.startswith(f"stricter than CIS {benchmark.rsplit('-', 1)[1]}:"), message


# 4.3.1 exists from CIS 1.9 on: another localhost port is ok there ("stricter than");
# under 1.8 the item is ours alone and names no CIS requirement.


@pytest.mark.parametrize(
    ("address", "verdicts"),
    [
        ("127.0.0.1:10300", ((Status.DRIFT, "is 127.0.0.1:10300"), STRICTER, STRICTER, STRICTER)),
        ("0.0.0.0:10249", ((Status.DRIFT, "is 0.0.0.0:10249"),) * 4),
    ],
)
def test_kube_proxy_metrics_address_per_benchmark(tmp_path: Path, address: str, verdicts) -> None:
    config = HARDENED_CONFIG + f'kube-proxy-arg: ["metrics-bind-address={address}"]\n'
    got = _per_benchmark(Harness(tmp_path, K3sNode(tmp_path / "node", config=config)), PROXY)
    for benchmark, (status, start) in zip(BENCHMARKS, verdicts):
        assert got[benchmark][0] is status and got[benchmark][1].startswith(start), (
            benchmark,
            got[benchmark],
        )
