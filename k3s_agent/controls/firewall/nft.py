"""nftables backend: our own table `inet k3s_agentd`, replaced whole in one transaction.

The input chain is a base chain (type filter, hook input, priority filter = 0)
whose policy is default_input. A drop in any base chain is final for the
packet (nft(8), "Base chain" / verdict statements: accept ends evaluation only
in the current base chain, drop ends it everywhere), so other tables
(iptables-nft's `ip filter`, kube-proxy's nft tables) cannot re-open what we
drop, and an accept of ours does not bypass their drops either. We hook input
only: forwarded pod/service traffic never passes our chain.

Talks JSON (libnftables-json(5)) through Debian's python3-nftables module,
or through `nft -j` when the module is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional

from k3s_agent.controls.firewall.compare import Entry, Observed, Structure
from k3s_agent.controls.firewall.model import (
    IPIP,
    LOG_PREFIX,
    NFT_CHAIN,
    TABLE,
    ForeignChanges,
    Network,
    Rule,
    Ruleset,
)
from k3s_agent.controls.firewall.nftgen import Transaction, TransactionLog, generation, transactions_between
from k3s_agent.host import Host, HostError

FAMILY = "inet"
PRIORITY = 0  # "filter"
LOG_BURST = 10


class NftError(Exception):
    pass


class NftRunner:
    """One JSON request to libnftables (python3-nftables) or to `nft -j`."""

    def __init__(self, host: Host, use_module: bool = True):
        self.host = host
        self.via = "nft -j"
        self._module: Any = None
        if use_module:
            try:
                import nftables  # Debian: python3-nftables

                self._module = nftables
                self.via = "python3-nftables (libnftables)"
            except ImportError:
                pass

    def available(self) -> Optional[str]:
        """None when nftables can be used here, else why not."""
        if self._module is None and self.host.which("nft") is None:
            return "neither python3-nftables nor the nft binary is installed"
        try:
            # Only our table: `list ruleset` (and, in nft 1.0.6, even `list tables`)
            # fetches every table's rules, ~0.3 s and ~90 MB with 10,000 iptables-nft
            # rules. A missing table is an answer too.
            self.table_text()
        except NftError as exc:
            return f"nftables does not answer: {exc}"
        return None

    def run(self, commands: list[dict[str, Any]]) -> None:
        payload = {"nftables": commands}
        if self._module is not None:
            nft = self._module.Nftables()
            nft.set_json_output(True)
            rc, _out, err = nft.json_cmd(payload)
            if rc != 0:
                raise NftError(err.strip() or f"libnftables returned {rc}")
            return
        result = self._nft(["-j", "-f", "-"], json.dumps(payload))
        if result.returncode != 0:
            raise NftError(result.stderr.strip() or f"nft exited {result.returncode}")

    def list(self, *what: str) -> list[dict[str, Any]]:
        if self._module is not None:
            nft = self._module.Nftables()
            nft.set_json_output(True)
            rc, out, err = nft.cmd("list " + " ".join(what))
        else:
            result = self._nft(["-j", "list", *what], None)
            rc, out, err = result.returncode, result.stdout, result.stderr
        if rc != 0:
            raise NftError(err.strip() or f"list {' '.join(what)} failed ({rc})")
        return json.loads(out).get("nftables", []) if out.strip() else []

    def ruleset_text(self) -> str:
        """`nft -s list ruleset`: text, stateless (no counter values). Listing as
        text is about 5x faster than as JSON, which matters with thousands of
        foreign rules (bench/firewall.py)."""
        if self._module is not None:
            nft = self._module.Nftables()
            nft.set_json_output(False)
            nft.set_stateless_output(True)
            rc, out, err = nft.cmd("list ruleset")
        else:
            result = self._nft(["-s", "list", "ruleset"], None)
            rc, out, err = result.returncode, result.stdout, result.stderr
        if rc != 0:
            raise NftError(err.strip() or f"list ruleset failed ({rc})")
        return str(out)

    def run_text(self, text: str) -> None:
        """One batch of commands in nft's own syntax (`nft -f -`): one transaction."""
        if self._module is not None:
            nft = self._module.Nftables()
            nft.set_json_output(False)
            rc, _out, err = nft.cmd(text)
        else:
            result = self._nft(["-f", "-"], text)
            rc, err = result.returncode, result.stderr
        if rc != 0:
            raise NftError(str(err).strip() or f"nft -f returned {rc}")

    def table_text(self) -> Optional[str]:
        """Our table as `nft -s list table` prints it (input nft -f accepts), None when absent."""
        if self._module is not None:
            nft = self._module.Nftables()
            nft.set_json_output(False)
            nft.set_stateless_output(True)
            rc, out, err = nft.cmd(f"list table {FAMILY} {TABLE}")
        else:
            result = self._nft(["-s", "list", "table", FAMILY, TABLE], None)
            rc, out, err = result.returncode, result.stdout, result.stderr
        if rc == 0:
            return str(out)
        if "No such file or directory" in str(err):
            return None
        raise NftError(str(err).strip() or f"list table failed ({rc})")

    def _nft(self, args: list[str], stdin: Optional[str]) -> Any:
        binary = self.host.which("nft")
        if binary is None:
            raise NftError("nft is not installed")
        try:
            return self.host.run([binary, *args], input=None if stdin is None else stdin.encode())
        except HostError as exc:
            raise NftError(str(exc)) from exc


# -- rendering ------------------------------------------------------------------------


def _addr(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _one_or_set(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def variants(rule: Rule) -> list[Optional[int]]:
    """One nft rule per IP version when the rule names addresses of both (or is ICMP)."""
    families = rule.families()
    if len(families) == 1:
        return [families[0]]
    if rule.sources or rule.dests or rule.proto == "icmp":
        return list(families)
    return [None]


def expressions(rule: Rule, family: Optional[int]) -> list[dict[str, Any]]:
    exprs: list[dict[str, Any]] = []
    ip = "ip" if family == 4 else "ip6"
    if rule.interface:
        exprs.append(_match(_meta("iifname"), rule.interface))
    if rule.states:
        exprs.append(_match({"ct": {"key": "state"}}, list(rule.states), op="in"))
    if family is not None and rule.sources_of(family):
        exprs.append(_match(_payload(ip, "saddr"), _one_or_set([_addr(n) for n in rule.sources_of(family)])))
    if family is not None and rule.dests_of(family):
        exprs.append(_match(_payload(ip, "daddr"), _one_or_set([_addr(n) for n in rule.dests_of(family)])))
    if rule.ports:
        ports = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in rule.ports]
        exprs.append(_match(_payload(rule.proto, "dport"), _one_or_set(ports)))
    elif rule.proto == "icmp":
        exprs.append(_match(_meta("l4proto"), "icmp" if family == 4 else "ipv6-icmp"))
    elif rule.proto == "ipip":
        exprs.append(_match(_meta("l4proto"), IPIP))
    elif rule.proto != "any":
        exprs.append(_match(_meta("l4proto"), rule.proto))
    return exprs + _verdict(rule)


def _verdict(rule: Rule) -> list[dict[str, Any]]:
    if rule.action == "log":
        return [
            {"limit": {"rate": rule.log_rate, "per": "minute", "burst": LOG_BURST}},
            {"log": {"prefix": LOG_PREFIX}},
        ]
    if rule.action == "reject":
        return [{"reject": {"type": "icmpx", "expr": "port-unreachable"}}]
    return [{rule.action: None}]


def canon(exprs: Sequence[dict[str, Any]]) -> str:
    """Comparable text of an expression list: counters' numbers dropped."""
    cleaned = [{"counter": None} if "counter" in e else _l4proto_number(e) for e in exprs]
    return json.dumps(cleaned, sort_keys=True, separators=(",", ":"))


def _l4proto_number(expr: dict[str, Any]) -> dict[str, Any]:
    """`meta l4proto 4` as nft lists it back: by /etc/protocols' name ("ipencap"), the number without it."""
    body = expr.get("match")
    if body and body.get("left") == _meta("l4proto") and body.get("right") == "ipencap":
        return {"match": {**body, "right": IPIP}}
    return expr


def render(ruleset: Ruleset) -> list[Entry]:
    return [
        Entry(rule.name, canon(expressions(rule, family)), _text(expressions(rule, family)))
        for rule in ruleset.active()
        for family in variants(rule)
    ]


def _text(exprs: Sequence[dict[str, Any]]) -> str:
    """Roughly what `nft list` prints, for findings (the JSON canon is what is compared)."""
    return " ".join(_word(e) for e in exprs)


def _word(expr: dict[str, Any]) -> str:
    kind, body = next(iter(expr.items()))
    if kind == "match":
        op = "" if body["op"] in ("==", "in") else body["op"] + " "
        return f"{_left(body['left'])} {op}{_right(body['right'])}"
    if kind == "limit":
        return f"limit rate {body.get('rate')}/{body.get('per')} burst {body.get('burst')}"
    if kind == "log":
        return f'log prefix "{body.get("prefix", "")}"'
    if kind == "reject":
        return "reject"
    if body is None or kind == "counter":
        return kind
    return json.dumps(expr, sort_keys=True)


def _left(left: dict[str, Any]) -> str:
    if "payload" in left:
        return f"{left['payload']['protocol']} {left['payload']['field']}"
    if "meta" in left:
        key = left["meta"]["key"]
        return key if key in ("iifname", "oifname") else f"meta {key}"
    if "ct" in left:
        return f"ct {left['ct']['key']}"
    return json.dumps(left, sort_keys=True)


def _right(right: Any) -> str:
    if isinstance(right, dict) and "prefix" in right:
        return f"{right['prefix']['addr']}/{right['prefix']['len']}"
    if isinstance(right, dict) and "range" in right:
        return f"{right['range'][0]}-{right['range'][1]}"
    if isinstance(right, dict) and "set" in right:
        return "{ " + ", ".join(_right(v) for v in right["set"]) + " }"
    if isinstance(right, list):
        return ",".join(_right(v) for v in right)
    return str(right)


# -- the backend ------------------------------------------------------------------------


def _table() -> dict[str, Any]:
    return {"family": FAMILY, "name": TABLE}


def _chain(policy: str) -> dict[str, Any]:
    return {
        "family": FAMILY,
        "table": TABLE,
        "name": NFT_CHAIN,
        "type": "filter",
        "hook": "input",
        "prio": PRIORITY,
        "policy": policy,
    }


class NftBackend:
    name = "nftables"

    def __init__(self, host: Host, runner: Optional[NftRunner] = None):
        self.runner = runner or NftRunner(host)

    def render(self, ruleset: Ruleset) -> list[Entry]:
        return render(ruleset)

    def observe(self, ruleset: Ruleset) -> Observed:
        want_chain = f"{FAMILY} {TABLE} chain {NFT_CHAIN}: filter hook input priority {PRIORITY}"
        try:
            objects = self.runner.list("table", FAMILY, TABLE)
        except NftError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "not found"
            missing = Structure("table", want_chain, "missing", False, f"table missing ({reason})")
            policy = Structure("policy", ruleset.default_input, "none", False, "no chain")
            return Observed((missing, policy), ())
        chains = [o["chain"] for o in objects if "chain" in o]
        ours = [c for c in chains if c.get("name") == NFT_CHAIN]
        extra = sorted(c["name"] for c in chains if c.get("name") != NFT_CHAIN)
        structure = []
        if not ours:
            structure.append(Structure("table", want_chain, "no input chain", False, "chain missing"))
            observed_policy = "none"
        else:
            chain = ours[0]
            hook = f"{chain.get('type')} hook {chain.get('hook')} priority {chain.get('prio')}"
            seen = f"{FAMILY} {TABLE} chain {NFT_CHAIN}: {hook}"
            ok = seen == want_chain and not extra
            message = f"unexpected chains {extra}" if extra else ("" if ok else "chain changed")
            structure.append(Structure("table", want_chain, seen, ok, message))
            observed_policy = str(chain.get("policy", "accept"))
        structure.append(
            Structure(
                "policy",
                ruleset.default_input,
                observed_policy,
                observed_policy == ruleset.default_input,
                "" if observed_policy == ruleset.default_input else "chain policy changed",
            )
        )
        entries = tuple(
            Entry(r["rule"].get("comment"), canon(r["rule"]["expr"]), _text(r["rule"]["expr"]))
            for r in objects
            if "rule" in r and r["rule"].get("chain") == NFT_CHAIN
        )
        return Observed(tuple(structure), entries)

    def commit(self, ruleset: Ruleset) -> ForeignChanges:
        """Replace our table in one transaction; return what changed in foreign tables.

        nftables has no lock: kube-proxy may commit while we do. The ruleset
        generation (+1 per committed transaction) read before and after, and the
        change notifications in between (nftgen.TransactionLog), say which tables
        our transaction and each other one touched, without listing any foreign
        table. Where notifications cannot be had: full snapshots before and
        after (_commit_snapshotted), slow with thousands of foreign rules.
        """
        # add+delete+add: deleting a table that does not exist fails the batch,
        # adding an existing one is a no-op, so this works from any state.
        commands: list[dict[str, Any]] = [
            {"add": {"table": _table()}},
            {"delete": {"table": _table()}},
            {"add": {"table": _table()}},
            {"add": {"chain": _chain(ruleset.default_input)}},
        ]
        for rule in ruleset.active():
            for family in variants(rule):
                commands.append(
                    {
                        "add": {
                            "rule": {
                                "family": FAMILY,
                                "table": TABLE,
                                "chain": NFT_CHAIN,
                                "expr": expressions(rule, family),
                                "comment": rule.name,
                            }
                        }
                    }
                )
        try:
            log: Optional[TransactionLog] = TransactionLog()
        except OSError:
            log = None
        first = generation()
        if log is None or first is None:
            return self._commit_snapshotted(commands, first)
        with log:
            self.runner.run(commands)
            last = generation()
            transactions = None if last is None else log.until(first, last)
        if transactions is None:
            return ForeignChanges(others=(LOST,))
        return attribute(transactions)

    def _commit_snapshotted(self, commands: list[dict[str, Any]], first: Optional[int]) -> ForeignChanges:
        """Without change notifications: every foreign table as text before and after."""
        before = self.foreign_snapshot()
        self.runner.run(commands)
        after = self.foreign_snapshot()
        last = generation() if first is not None else None
        changes = tuple(diff_snapshots(before, after))
        if changes and first is not None and last is not None and transactions_between(first, last) > 1:
            return ForeignChanges(others=changes)
        return ForeignChanges(ours=changes)

    def present(self) -> bool:
        """Whether our table exists (used when it is left over from this backend)."""
        try:
            self.runner.list("table", FAMILY, TABLE)
        except NftError:
            return False
        return True

    def remove(self) -> None:
        self.runner.run([{"delete": {"table": _table()}}])

    def snapshot_ours(self) -> Optional[str]:
        """Our table as text, None when it does not exist (commit-confirmed rollback)."""
        return self.runner.table_text()

    def restore_ours(self, text: Optional[str]) -> str:
        """Put our table back exactly as snapshot_ours() saw it, in one transaction;
        no other table is named, so none is touched."""
        head = f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
        if text is None:
            if self.present():
                self.runner.run_text(head)
            return f"no table {FAMILY} {TABLE} (as before)"
        self.runner.run_text(head + text)
        return f"table {FAMILY} {TABLE} as it was ({len(text.splitlines())} lines)"

    def foreign_snapshot(self) -> dict[str, str]:
        """Every table but ours, as `nft -s` prints it: table header -> its text."""
        return {
            key: text for key, text in split_tables(self.runner.ruleset_text()).items() if key != OUR_TABLE
        }


OUR_TABLE = f"table {FAMILY} {TABLE}"
LOST = "not audited: nf_tables change notifications were lost (receive buffer overrun) or late"


def attribute(transactions: list[Transaction]) -> ForeignChanges:
    """Foreign tables each transaction touched, ours or other tools'. Ours is the one
    that (re)created our table; when it is the only one, it is ours in any case."""
    ours: list[str] = []
    others: list[str] = []
    only = len(transactions) == 1
    for transaction in transactions:
        mine = only or ("table added", OUR_TABLE) in transaction.changes
        (ours if mine else others).extend(transaction.describe(skip=OUR_TABLE))
    return ForeignChanges(ours=tuple(ours), others=tuple(others))


def split_tables(text: str) -> dict[str, str]:
    """Top-level `table <family> <name> {` ... `}` blocks of a ruleset listing."""
    tables: dict[str, str] = {}
    key, lines = "", []
    for line in text.splitlines():
        if line.startswith("table "):
            key, lines = line.rstrip(" {"), [line]
        elif key:
            lines.append(line)
            if line == "}":
                tables[key] = "\n".join(lines)
                key = ""
    return tables


def diff_snapshots(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changes = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            changes.append(f"{key} disappeared")
        elif key not in before:
            changes.append(f"{key} appeared")
        elif before[key] != after[key]:
            lost = [line.strip() for line in before[key].splitlines() if line not in after[key].splitlines()]
            changes.append(f"{key} changed (lost: {lost[:5]})")
    return changes
