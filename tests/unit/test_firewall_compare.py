"""Findings from desired vs observed entries: missing, changed, reordered, foreign, inactive."""

from __future__ import annotations

from k3s_agent.controls.firewall.compare import Entry, Observed, Structure, findings
from k3s_agent.controls.firewall.model import Rule, Ruleset

RULESET = Ruleset(
    (Rule("a"), Rule("b"), Rule("c"), Rule("off", inactive="no sources: @nodes resolved to nothing"))
)
DESIRED = [Entry("a", "A", "a"), Entry("b", "B1", "b1"), Entry("b", "B2", "b2"), Entry("c", "C", "c")]
OK_TABLE = (Structure("table", "want", "want", True),)


def statuses(observed: list[Entry], structure: tuple = OK_TABLE) -> dict[str, tuple[str, str]]:
    return {
        f.key: (f.status.value, f.message)
        for f in findings(RULESET, DESIRED, Observed(structure, tuple(observed)))
    }


def test_in_sync() -> None:
    found = statuses(DESIRED)
    assert {k: v[0] for k, v in found.items()} == {
        "table": "ok",
        "a": "ok",
        "b": "ok",
        "c": "ok",
        "off": "ok",
        "foreign-rules": "ok",
    }
    assert found["off"][1].startswith("no sources")


def test_missing_changed_foreign() -> None:
    observed = [Entry("a", "A", "a"), Entry(None, "X", "x"), Entry("b", "B1", "b1"), Entry("b", "B9", "b9")]
    found = statuses(observed)
    assert found["b"] == ("drift", "rule changed")
    assert found["c"] == ("drift", "rule missing")
    assert found["foreign-rules"] == ("drift", "1 rule(s) in our chain that we did not write")
    assert found["a"][0] == "ok"


def test_reordered() -> None:
    observed = [Entry("b", "B1", "b1"), Entry("b", "B2", "b2"), Entry("a", "A", "a"), Entry("c", "C", "c")]
    found = statuses(observed)
    assert found["a"] == ("drift", "rule out of order") and found["b"] == ("drift", "rule out of order")
    assert found["c"][0] == "ok"


def test_structure_drift_passes_through() -> None:
    found = statuses(DESIRED, (Structure("policy", "drop", "accept", False, "chain policy changed"),))
    assert found["policy"] == ("drift", "chain policy changed")


def test_parse_generation_reads_gen_id_and_refuses_errors() -> None:
    """NFT_MSG_NEWGEN carries NFTA_GEN_ID (big-endian); an NLMSG_ERROR or a
    truncated reply means "unknown", never a made-up generation."""
    import struct

    from k3s_agent.controls.firewall.nftgen import parse_generation

    attrs = struct.pack("=HH", 8, 1) + struct.pack(">I", 4242) + struct.pack("=HH", 8, 2) + b"\0\0\0\7"
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    reply = struct.pack("=IHHII", 16 + len(body), (10 << 8) | 15, 0, 1, 0) + body
    assert parse_generation(reply) == 4242
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    assert parse_generation(error) is None
    assert parse_generation(reply[:18]) is None
    assert parse_generation(reply[:24]) is None  # attribute header without its value


def test_transactions_between_survives_the_u32_wrap() -> None:
    from k3s_agent.controls.firewall.nftgen import transactions_between

    assert transactions_between(41, 42) == 1
    assert transactions_between(0xFFFFFFFF, 0) == 1
    assert transactions_between(0xFFFFFFFE, 1) == 3
