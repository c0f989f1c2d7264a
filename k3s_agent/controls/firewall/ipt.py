"""iptables backend through python-iptables (libiptc): for hosts that run iptables-legacy.

Everything of ours lives in the filter table: chain K3S-AGENTD-INPUT
(IPv4 and IPv6) and one jump to it from INPUT. libiptc reads a whole table,
edits it in memory and writes it back whole (IPT_SO_SET_REPLACE), so a rule
that another tool adds between our read and our write would be lost. Hence
every read-modify-commit holds the xtables lock, the same flock on
/run/xtables.lock that iptables(8) takes ("-w"), and commits once per table
with autocommit off. kube-proxy and flannel call iptables with -w, so they
wait for us instead of racing us.

Position of the jump: kube-proxy and the network-policy controller insert
their own jumps (KUBE-FIREWALL, KUBE-NODEPORTS, KUBE-ROUTER-INPUT ...) at the
top of INPUT too, and only when missing. They may end up above ours; that
is fine, their chains never accept everything, so it is not drift. We only
ever delete and re-insert our own jump, at `jump_position`, and never move
theirs. default_input = "drop" is the last rule of our chain, not INPUT's
policy: INPUT's policy is also what K3s's chains fall through to, and a
DROP reached only through our jump is the same verdict and entirely ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, Optional

from k3s_agent.controls.firewall.compare import Entry, Observed, Structure
from k3s_agent.controls.firewall.model import (
    COMMENT_PREFIX,
    IPT_CHAIN,
    LOG_PREFIX,
    ForeignChanges,
    Network,
    Rule,
    Ruleset,
)
from k3s_agent.host import HostError, flocked, read_capped

LOCK_FILE = "/run/xtables.lock"
LOCK_TIMEOUT = 10.0
LOG_BURST = "10"


class IptError(Exception):
    pass


def legacy_filter_loaded(proc: str = "/proc") -> bool:
    """Whether the legacy filter table exists in this thread's network namespace.

    Reading /proc/.../ip_tables_names does not load modules (iptables -L would).
    """
    for name in ("ip_tables_names", "ip6_tables_names"):
        try:
            if b"filter" in read_capped(f"{proc}/thread-self/net/{name}").split():
                return True
        except (OSError, HostError):
            continue
    return False


def _iptc() -> Any:
    import iptc  # Debian: python3-iptables
    import iptc.easy

    return iptc


@contextlib.contextmanager
def xtables_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """The flock iptables(8) takes; XTABLES_LOCKFILE overrides the path as it does for iptables."""
    path = os.environ.get("XTABLES_LOCKFILE", LOCK_FILE)
    with flocked(path, timeout) as held:
        if not held:
            raise IptError(f"{path}: xtables lock still held after {timeout:g}s")
        yield


# -- rendering -----------------------------------------------------------------------


def rule_specs(rule: Rule, family: int) -> list[dict[str, Any]]:
    """python-iptables "easy" dicts for one rule in one family (one per source address)."""
    if family not in rule.families():
        return []
    spec: dict[str, Any] = {}
    if rule.interface:
        spec["in-interface"] = rule.interface[:-1] + "+" if rule.interface.endswith("*") else rule.interface
    proto = rule.proto
    if proto == "icmp":
        proto = "icmp" if family == 4 else "icmpv6"
    if proto != "any":
        spec["protocol"] = proto
    if rule.states:
        spec["conntrack"] = {"ctstate": ",".join(s.upper() for s in reversed(sorted(rule.states)))}
    if rule.ports:
        spec["multiport"] = {"dports": ",".join(_port(r) for r in rule.ports)}
    spec["comment"] = {"comment": COMMENT_PREFIX + rule.name}
    spec.update(_target(rule, family))
    sources: list[Optional[Network]] = list(rule.sources_of(family)) or [None]
    dests: list[Optional[Network]] = list(rule.dests_of(family)) or [None]
    specs = []
    for src in sources:
        for dst in dests:
            one = dict(spec)
            if src is not None:
                one["src"] = str(src)
            if dst is not None:
                one["dst"] = str(dst)
            specs.append(one)
    return specs


def _port(port_range: tuple[int, int]) -> str:
    low, high = port_range
    return str(low) if low == high else f"{low}:{high}"


def _target(rule: Rule, family: int) -> dict[str, Any]:
    if rule.action == "log":
        return {
            "limit": {"limit": f"{rule.log_rate}/min", "limit-burst": LOG_BURST},
            "target": {"LOG": {"log-prefix": LOG_PREFIX}},
        }
    if rule.action == "reject":
        kind = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
        return {"target": {"REJECT": {"reject-with": kind}}}
    return {"target": rule.action.upper()}


def save_text(decoded: dict[str, Any]) -> str:
    """Roughly what iptables-save prints, for findings (the canon is what is compared)."""
    words = []
    flags = {"src": "-s", "dst": "-d", "in-interface": "-i", "out-interface": "-o", "protocol": "-p"}
    for key, value in decoded.items():
        if key in ("counters", "target"):
            continue
        if key in flags:
            words.append(f"{flags[key]} {value}")
        elif isinstance(value, dict):
            options = " ".join(f"--{k} {v}" for k, v in value.items())
            words.append(f"-m {key} {options}".rstrip())
        else:
            words.append(f"-m {key}")
    target = decoded.get("target", "")
    if isinstance(target, dict):
        name, options = next(iter(target.items()))
        target = f"{name} " + " ".join(f"--{k} {v}" for k, v in (options or {}).items())
    return " ".join([*words, f"-j {target}".rstrip()])


def canon(decoded: dict[str, Any]) -> str:
    cleaned = {k: v for k, v in decoded.items() if k not in ("counters", "comment")}
    return json.dumps(cleaned, sort_keys=True, separators=(",", ":"))


def name_of(decoded: dict[str, Any]) -> Optional[str]:
    comment = decoded.get("comment", {})
    text = comment.get("comment", "") if isinstance(comment, dict) else ""
    return text[len(COMMENT_PREFIX) :] if text.startswith(COMMENT_PREFIX) else None


def render(ruleset: Ruleset, families: tuple[int, ...] = (4, 6)) -> list[Entry]:
    return [
        Entry(rule.name, f"{family} {canon(spec)}", f"ip{'6' if family == 6 else ''}tables {save_text(spec)}")
        for family in families
        for rule in ruleset.active()
        for spec in rule_specs(rule, family)
    ]


# -- the backend ---------------------------------------------------------------------------


class IptablesBackend:
    name = "iptables"

    def __init__(self) -> None:
        self.iptc = _iptc()
        self.families = self._families()

    def _families(self) -> tuple[int, ...]:
        found = []
        for family in (4, 6):
            try:
                self._table(family)
                found.append(family)
            except Exception:
                if family == 4:
                    raise
        return tuple(found)

    def _table(self, family: int) -> Any:
        iptc = self.iptc
        table = iptc.Table(iptc.Table.FILTER) if family == 4 else iptc.Table6(iptc.Table6.FILTER)
        table.autocommit = False
        return table

    def _decode(self, rule: Any, family: int) -> dict[str, Any]:
        return self.iptc.easy.decode_iptc_rule(rule, ipv6=family == 6)

    def render(self, ruleset: Ruleset) -> list[Entry]:
        return render(ruleset, self.families)

    def _encode(self, spec: dict[str, Any], family: int) -> Any:
        rule = self.iptc.easy.encode_iptc_rule(spec, ipv6=family == 6)
        if family == 6 and "in-interface" in spec:
            _fix_ip6_iface_mask(rule, spec["in-interface"])
        return rule

    def observe(self, ruleset: Ruleset) -> Observed:
        entries: list[Entry] = []
        chain_state, jump_state, policy_state = [], [], []
        for family in self.families:
            table = self._table(family)
            table.refresh()
            label = "ip6tables" if family == 6 else "iptables"
            if not table.is_chain(IPT_CHAIN):
                chain_state.append(f"{label}: missing")
            else:
                for rule in self.iptc.Chain(table, IPT_CHAIN).rules:
                    decoded = self._decode(rule, family)
                    text, shown = canon(decoded), f"{label} {save_text(decoded)}"
                    if family == 6 and "in-interface" in decoded and _weak_ip6_mask(rule):
                        weak = " (interface mask not 0xff: matches other interfaces too)"
                        text, shown = text + weak, shown + weak
                    entries.append(Entry(name_of(decoded), f"{family} {text}", shown))
            jump_state.append(self._jump_state(table, family, label))
            policy_state.append(f"{label}: {self.iptc.Chain(table, 'INPUT').get_policy().name}")
        structure = (
            Structure(
                "chain", f"{IPT_CHAIN} in filter", "; ".join(chain_state) or "present", not chain_state
            ),
            self._jump_structure(ruleset, jump_state),
            self._policy_structure(ruleset, policy_state),
        )
        return Observed(structure, tuple(entries))

    def _jump_state(self, table: Any, family: int, label: str) -> str:
        """ "ok at N" or what is wrong with INPUT's jump to our chain."""
        accept_all_above = False
        found = []
        for index, rule in enumerate(self.iptc.Chain(table, "INPUT").rules, start=1):
            decoded = self._decode(rule, family)
            if decoded.get("target") == IPT_CHAIN:
                found.append((index, decoded, accept_all_above))
            elif not found and set(decoded) - {"counters"} == {"target"} and decoded["target"] == "ACCEPT":
                accept_all_above = True
        if not found:
            return f"{label}: missing"
        if len(found) > 1:
            return f"{label}: {len(found)} jumps at {[f[0] for f in found]}"
        index, decoded, shadowed = found[0]
        if set(decoded) - {"counters"} != {"target"}:
            return f"{label}: jump at {index} has conditions {canon(decoded)}"
        if shadowed:
            return f"{label}: jump at {index} is below a rule accepting everything"
        return f"{label}: ok at {index}"

    def _jump_structure(self, ruleset: Ruleset, states: list[str]) -> Structure:
        ok = all(": ok at " in s for s in states)
        desired = f"one unconditional jump INPUT -> {IPT_CHAIN} (inserted at {ruleset.jump_position})"
        return Structure("jump", desired, "; ".join(states), ok, "" if ok else "jump missing or misplaced")

    def _policy_structure(self, ruleset: Ruleset, states: list[str]) -> Structure:
        # With default_input = "drop" our chain ends in DROP, so INPUT's policy is
        # never reached by anything we did not accept: any value is fine. With
        # "accept", what we do not accept falls through to INPUT: it must be ACCEPT.
        if ruleset.default_input == "drop":
            return Structure("policy", "any (our chain ends in DROP)", "; ".join(states), True)
        ok = all(s.endswith(": ACCEPT") for s in states)
        return Structure("policy", "ACCEPT", "; ".join(states), ok, "" if ok else "INPUT policy changed")

    def commit(self, ruleset: Ruleset) -> ForeignChanges:
        """Rewrite our chain and jump, one commit per table, under the xtables lock.

        Returns what changed outside our chain/jump between our read and our
        write-back (read again under the same lock, so nobody else can have
        changed it: any difference would be ours).
        """
        changes: list[str] = []
        with xtables_lock():
            for family in self.families:
                table = self._table(family)
                table.refresh()
                before = self._foreign(table, family)
                self._rewrite(table, family, ruleset)
                table.commit()
                table.refresh()
                label = "ip6tables" if family == 6 else "iptables"
                changes += [f"{label}: {c}" for c in _diff(before, self._foreign(table, family))]
        return ForeignChanges(ours=tuple(changes))

    def _rewrite(self, table: Any, family: int, ruleset: Ruleset) -> None:
        iptc = self.iptc
        if table.is_chain(IPT_CHAIN):
            chain = iptc.Chain(table, IPT_CHAIN)
            chain.flush()  # our own chain only
        else:
            chain = table.create_chain(IPT_CHAIN)
        for rule in ruleset.active():
            for spec in rule_specs(rule, family):
                chain.append_rule(self._encode(spec, family))
        input_chain = iptc.Chain(table, "INPUT")
        for rule in list(input_chain.rules):
            if self._decode(rule, family).get("target") == IPT_CHAIN:
                input_chain.delete_rule(rule)
        count = len(input_chain.rules)
        jump = iptc.easy.encode_iptc_rule({"target": IPT_CHAIN}, ipv6=family == 6)
        input_chain.insert_rule(jump, position=min(ruleset.jump_position - 1, count))
        if ruleset.default_input == "accept" and input_chain.get_policy().name != "ACCEPT":
            input_chain.set_policy(iptc.Policy.ACCEPT)

    def present(self) -> bool:
        """Whether our chain exists in any family (when it is left over from this backend)."""
        for family in self.families:
            table = self._table(family)
            table.refresh()
            if table.is_chain(IPT_CHAIN):
                return True
        return False

    def remove(self) -> None:
        """Our jump and our chain, nothing else; one commit per table, under the lock."""
        with xtables_lock():
            for family in self.families:
                table = self._table(family)
                table.refresh()
                if not table.is_chain(IPT_CHAIN):
                    continue
                input_chain = self.iptc.Chain(table, "INPUT")
                for rule in list(input_chain.rules):
                    if self._decode(rule, family).get("target") == IPT_CHAIN:
                        input_chain.delete_rule(rule)
                chain = self.iptc.Chain(table, IPT_CHAIN)
                chain.flush()
                chain.delete()
                table.commit()

    def snapshot_ours(self) -> dict[str, Any]:
        """Per family: our chain's rules (python-iptables dicts, counters left out)
        or None when it does not exist, where INPUT jumps to it, INPUT's policy."""
        taken: dict[str, Any] = {}
        with xtables_lock():
            for family in self.families:
                table = self._table(family)
                table.refresh()
                rules = None
                if table.is_chain(IPT_CHAIN):
                    rules = [self._decode(r, family) for r in self.iptc.Chain(table, IPT_CHAIN).rules]
                    rules = [{k: v for k, v in r.items() if k != "counters"} for r in rules]
                input_chain = self.iptc.Chain(table, "INPUT")
                jumps = [
                    index
                    for index, rule in enumerate(input_chain.rules, start=1)
                    if self._decode(rule, family).get("target") == IPT_CHAIN
                ]
                policy = input_chain.get_policy().name
                taken[str(family)] = {"chain": rules, "jumps": jumps, "policy": policy}
        return taken

    def restore_ours(self, taken: dict[str, Any]) -> str:
        """Our chain, our jumps and INPUT's policy back as snapshot_ours() saw them;
        nothing else is touched. One commit per table, under the xtables lock."""
        done = []
        with xtables_lock():
            for family in self.families:
                part = taken.get(str(family))
                if part is None:
                    continue
                table = self._table(family)
                table.refresh()
                self._put_back(table, family, part)
                table.commit()
                label = "ip6tables" if family == 6 else "iptables"
                rules = part["chain"]
                done.append(
                    f"{label}: " + ("no chain" if rules is None else f"{IPT_CHAIN} with {len(rules)} rules")
                )
        return "; ".join(done) or "nothing of ours in iptables"

    def _put_back(self, table: Any, family: int, part: dict[str, Any]) -> None:
        iptc = self.iptc
        input_chain = iptc.Chain(table, "INPUT")
        for rule in list(input_chain.rules):
            if self._decode(rule, family).get("target") == IPT_CHAIN:
                input_chain.delete_rule(rule)
        if table.is_chain(IPT_CHAIN):
            iptc.Chain(table, IPT_CHAIN).flush()
            if part["chain"] is None:
                iptc.Chain(table, IPT_CHAIN).delete()
        elif part["chain"] is not None:
            table.create_chain(IPT_CHAIN)
        for spec in part["chain"] or []:
            iptc.Chain(table, IPT_CHAIN).append_rule(self._encode(spec, family))
        for position in sorted(part["jumps"]):
            jump = iptc.easy.encode_iptc_rule({"target": IPT_CHAIN}, ipv6=family == 6)
            input_chain.insert_rule(jump, position=min(position - 1, len(input_chain.rules)))
        if input_chain.get_policy().name != part["policy"]:
            input_chain.set_policy(getattr(iptc.Policy, part["policy"]))

    def _foreign(self, table: Any, family: int) -> dict[str, list[bytes]]:
        """Every chain but ours, rule by rule as raw entries (counters zeroed), our jump left out.

        Raw bytes instead of python-iptables Rule objects: building and decoding
        those costs ~0.4 ms a rule, and this runs twice per heal over every
        foreign rule (1000 KUBE-* rules: ~0.8 s; raw: a few ms, bench/firewall.py).
        """
        snapshot: dict[str, list[bytes]] = {}
        for chain in table.chains:
            if chain.name == IPT_CHAIN:
                continue
            rules = _raw_rules(table, chain.name)
            # INPUT's policy is left out: restoring it to ACCEPT is one of our heals.
            if table.builtin_chain(chain.name) and chain.name != "INPUT":
                rules.insert(0, b"policy " + chain.get_policy().name.encode())
            snapshot[chain.name] = rules
        return snapshot


def _fix_ip6_iface_mask(rule: Any, name: str) -> None:
    """python-iptables (1.0.1, ip6tc.py set_in_interface) sets the IPv6 interface
    mask bytes to 0x01 instead of 0xff, and the kernel compares names under the
    mask, so `-i lo` would also match e.g. an interface "bcd0" (same low bits).
    Write the mask the way ip6tables does: 0xff over the name and its NUL, or
    over the prefix for a trailing "+" wildcard.
    """
    length = len(name) - 1 if name.endswith("+") else len(name) + 1
    rule.entry.ipv6.iniface_mask = b"\xff" * length + b"\x00" * (16 - length)


def _weak_ip6_mask(rule: Any) -> bool:
    mask = bytes(rule.entry.ipv6.iniface_mask)
    return any(byte not in (0, 0xFF) for byte in mask)


STANDARD_TARGETS = (b"", b"ACCEPT", b"DROP", b"RETURN", b"QUEUE")


def _raw_rules(table: Any, chain: str) -> list[bytes]:
    rules = []
    entry = table.first_rule(chain)
    while entry:
        kind = type(entry)
        raw = bytearray(ctypes.string_at(ctypes.addressof(entry), entry.next_offset))
        for field, size in (("counters", 16), ("comefrom", 4)):  # change without anyone editing
            offset = getattr(kind, field).offset
            raw[offset : offset + size] = bytes(size)
        target = table.get_target(entry) or b""
        if target != IPT_CHAIN.encode():
            head = bytes(raw[: kind.elems.offset])
            matches = _normalized_items(raw, kind.elems.offset, entry.target_offset)
            # A jump's verdict is an offset into the table blob, which moves
            # whenever any chain grows: compare jumps and verdicts by name.
            by_name = target in STANDARD_TARGETS or table.is_chain(target.decode())
            tail = b"" if by_name else _normalized_items(raw, entry.target_offset, entry.next_offset)
            rules.append(b"|".join((head, matches, target, tail)))
        entry = table.next_rule(entry)
    return rules


def _normalized_items(raw: bytearray, start: int, end: int) -> bytes:
    """xt_entry_match/xt_entry_target records with their names cut at the NUL.

    The 29-byte name shares a union with the kernel's pointer to the match, so
    what follows the NUL is whatever the kernel last had there (include/uapi/
    linux/netfilter/x_tables.h); it changes from one read to the next.
    """
    out = []
    pos = start
    while pos + 32 <= end:
        size = int.from_bytes(raw[pos : pos + 2], sys.byteorder)
        if size < 32:
            break
        name = bytes(raw[pos + 2 : pos + 31]).split(b"\0", 1)[0]
        out.append(name + b"/" + bytes(raw[pos + 31 : pos + size]))
        pos += size
    return b";".join(out)


def _diff(before: dict[str, list[bytes]], after: dict[str, list[bytes]]) -> list[str]:
    changes = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            changes.append(f"chain {name} disappeared")
        elif name not in before:
            changes.append(f"chain {name} appeared")
        elif before[name] != after[name]:
            lost = [r for r in before[name] if r not in after[name]]
            changes.append(f"chain {name} changed ({len(lost)} rule(s) lost)")
    return changes
