"""The catalog of every K3s CIS check, the profiles' coverage of it, docs/cis-coverage.md."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from k3s_agent.policy import benchmark as bench
from k3s_agent.policy import cis_catalog as catalog
from k3s_agent.policy import cis_coverage

REPO = Path(__file__).resolve().parents[2]
LATER = [v for v in catalog.VERSIONS if v != "k3s-cis-1.8"]

# Spot checks against the sources (version, id, key, automated); None: the version lacks the id.
ROWS: list[tuple[str, str, Optional[str], Optional[bool]]] = [
    ("k3s-cis-1.8", "1.2.30", "apiserver-ciphers", False),  # 1.8 guide: (Manual)
    ("k3s-cis-1.10", "1.2.29", "apiserver-ciphers", True),  # kube-bench k3s-cis-1.10 scored
    ("k3s-cis-1.10", "1.2.30", None, None),  # kube-bench 1.10's master ends at 1.2.29
    ("k3s-cis-1.12", "1.2.30", "extend-token-expiration", True),
    ("k3s-cis-1.8", "1.2.12", "admission-security-context-deny", False),
    ("k3s-cis-1.9", "1.2.12", "admission-service-account", True),
    ("k3s-cis-1.8", "1.2.3", "deny-service-external-ips", True),  # "is not set (Automated)"
    ("k3s-cis-1.9", "1.2.3", "deny-service-external-ips", False),  # "is set (Manual)"
    ("k3s-cis-1.8", "4.3.1", None, None),
    ("k3s-cis-1.9", "4.3.1", "proxy-metrics-localhost", True),
    ("k3s-cis-1.10", "4.2.14", None, None),
    ("k3s-cis-1.12", "4.2.14", "kubelet-seccomp-default", False),
    ("k3s-cis-1.8", "2.1", "etcd-cert-file", True),
    ("k3s-cis-1.10", "2.1", "etcd-cert-file", False),
    ("k3s-cis-1.12", "1.1.20", "pki-cert-perms", True),  # 644, Automated in 1.12
    ("k3s-cis-1.9", "1.1.20", "pki-cert-perms", False),
    ("k3s-cis-1.8", "5.7.4", "default-namespace", False),
    ("k3s-cis-1.12", "5.6.4", "default-namespace", False),
    ("k3s-cis-1.12", "5.2.13", None, None),  # 1.12 dropped "added capabilities"
]


@pytest.mark.parametrize(("version", "check_id", "key", "automated"), ROWS)
def test_catalog_rows_match_the_sources(
    version: str, check_id: str, key: Optional[str], automated: Optional[bool]
) -> None:
    check = catalog.by_id(version).get(check_id)
    assert (check.key if check else None) == key
    assert (check.automated if check else None) == automated


@pytest.mark.parametrize("version", catalog.VERSIONS)
def test_ids_and_keys_are_unique_and_ordered(version: str) -> None:
    checks = catalog.checks(version)
    assert len({c.id for c in checks}) == len({c.key for c in checks}) == len(checks) > 120
    assert [c.id for c in checks] == sorted((c.id for c in checks), key=catalog.id_order)
    assert {c.section for c in checks} == {"1", "2", "3", "4", "5"}
    assert all(c.node_level == (c.section != "5") for c in checks)


@pytest.mark.parametrize("version", LATER)
def test_id_changes_agree_with_the_catalog(version: str) -> None:
    """ID_CHANGES moves each node-level CIS 1.8 id to the same check's id in a later
    benchmark (section 5's moves are not there: no item can carry a cluster-level id)."""
    later = catalog.by_key(version)
    for check in (c for c in catalog.checks("k3s-cis-1.8") if c.node_level):
        want = later[check.key].id if check.key in later else None
        assert bench.map_cis(check.id, version) == want, check.key


@pytest.mark.parametrize("version", catalog.VERSIONS)
def test_every_profile_id_is_a_node_check_of_that_benchmark(version: str) -> None:
    known = catalog.by_id(version)
    for check_id, items in cis_coverage.profile_items(version).items():
        assert check_id in known, (check_id, items)
        assert known[check_id].node_level, (check_id, items)


@pytest.mark.parametrize("version", catalog.VERSIONS)
def test_every_automated_node_check_is_covered_or_explained(version: str) -> None:
    """Fails when an automated node-level check is neither covered by a profile item nor
    listed as not applicable (with a reason) or pending on the cis-node branch."""
    missing = [
        (c.check.id, c.check.title)
        for c in cis_coverage.coverage(version)
        if c.check.automated and c.check.node_level and c.status in ("not covered", "manual")
    ]
    assert missing == []
    assert all(c.reason for c in cis_coverage.coverage(version) if c.status == "not applicable")


def test_catalog_tables_name_real_checks() -> None:
    keys = {c.key for v in catalog.VERSIONS for c in catalog.checks(v)}
    for name in (*catalog.NOT_APPLICABLE, *catalog.MANUAL_NOTES):
        key, _, version = name.partition("@")
        assert key in keys, name
        assert not version or key in catalog.by_key(version), name


@pytest.mark.parametrize(
    ("version", "check_id", "status"),
    [
        ("k3s-cis-1.8", "1.2.3", "not applicable"),  # 1.8's audit accepts anything
        ("k3s-cis-1.9", "1.2.3", "reported"),  # a manual item
        ("k3s-cis-1.12", "1.2.30", "checked"),  # tagged with a table
        ("k3s-cis-1.10", "4.3.1", "checked"),
        ("k3s-cis-1.12", "4.2.14", "reported"),
        ("k3s-cis-1.8", "1.1.1", "not applicable"),
        ("k3s-cis-1.8", "5.1.1", "cluster-level"),
        ("k3s-cis-1.9", "3.1.1", "manual"),
        ("k3s-cis-1.9", "3.2.1", "checked"),
        ("k3s-cis-1.10", "1.2.23", "checked"),  # the etcd client TLS (1.8's 1.2.24)
    ],
)
def test_coverage_status(version: str, check_id: str, status: str) -> None:
    by_id = {c.check.id: c for c in cis_coverage.coverage(version)}
    assert by_id[check_id].status == status


def test_the_coverage_doc_is_the_generated_one() -> None:
    doc = (REPO / "docs/cis-coverage.md").read_text(encoding="utf-8")
    assert doc == cis_coverage.markdown(), "regenerate: python -m k3s_agent.policy.cis_coverage --markdown"


def test_markdown_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cis_coverage.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# CIS coverage per benchmark") and "| k3s-cis-1.12 | 131 |" in out
