"""Findings from desired vs observed entries: missing, changed, reordered, foreign, inactive."""

from __future__ import annotations

import struct

import pytest

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


def _notification(msg: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | msg, 0, 0, 0) + body


def _name(value: str) -> bytes:
    raw = value.encode() + b"\0"
    padded = raw + b"\0" * (-len(raw) % 4)
    return struct.pack("=HH", 4 + len(raw), 1) + padded


def _newgen(gen: int) -> bytes:
    return _notification(15, 0, struct.pack("=HH", 8, 1) + struct.pack(">I", gen))


OURS = [(0, 1, "k3s_agentd"), (6, 1, "k3s_agentd")]  # our table re-created, our rule added


@pytest.mark.parametrize(
    "transactions, ours, others",
    [
        # our transaction alone, nothing foreign: clean
        ([(OURS, 8)], [], []),
        # our transaction alone also added a table: ours, loud
        ([([*OURS, (0, 2, "meddler")], 8)], ["table ip meddler appeared"], []),
        # kube-proxy's rule change after ours: theirs
        (
            [(OURS, 8), ([(6, 2, "filter"), (8, 2, "filter"), (6, 2, "filter")], 9)],
            [],
            ["table ip filter changed (rule added x2, rule deleted x1)"],
        ),
        # a deleted table before ours, in another transaction: theirs
        ([([(2, 10, "kube-proxy")], 8), (OURS, 9)], [], ["table ip6 kube-proxy disappeared"]),
    ],
)
def test_attribution_by_notifications(transactions: list, ours: list, others: list) -> None:
    """Change notifications grouped by NEWGEN; ours is the only transaction or the
    one re-creating our table; transactions outside (first, last] are ignored."""
    from k3s_agent.controls.firewall.nft import attribute
    from k3s_agent.controls.firewall.nftgen import group, parse_notifications

    stream = _notification(6, 2, _name("nat")) + _newgen(7)  # committed before first=7
    for changes, gen in transactions:
        stream += b"".join(_notification(m, f, _name(t)) for m, f, t in changes) + _newgen(gen)
    found = group(parse_notifications(stream), first=7, last=transactions[-1][1])
    result = attribute(found)
    assert (list(result.ours), list(result.others)) == (ours, others)
