"""sshd: the effective configuration (`sshd -T`) held to the policy.

Truth is what `sshd -T` prints, not a grep of files. Because sshd keeps the
FIRST value it reads for most keywords, a finding names the file:line that
decides each drifted keyword (k3s_agent/sshd/config.py replays sshd's reading order).

Remediation writes our drop-in /etc/ssh/sshd_config.d/01-k3s-agentd.conf when
sshd_config includes that directory before it sets any keyword we manage
(Debian 12, Ubuntu, RHEL 9 defaults). Where it does not, or where something
read earlier (a line above the Include, an earlier-sorted drop-in such as
00-foo.conf) would still win, we manage a marked block at the very top of
sshd_config instead: the first lines sshd reads, so our values win without
editing anyone else's file. Every candidate is checked with `sshd -t -f`
before it replaces the live file; then sshd is reloaded (never restarted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import shlex
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

from k3s_agent.controls import sshd_guard
from k3s_agent.controls.base import ControlSpec, Lint, Watch, split_declined
from k3s_agent.controls.sshd_accounts import read_accounts
from k3s_agent.controls.sshd_guard import GuardError, Network, Where, keyword_name
from k3s_agent.controls.sshd_lockout import lockouts
from k3s_agent.host import (
    Host,
    HostError,
    scratch_dir,
    systemd_booted,
    write_private,
)
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, list_of, matches
from k3s_agent.sshd.config import (
    ACCUMULATE,
    ALGORITHM_LISTS,
    ConfigReader,
    Directive,
    desired_value,
    effective_value,
    global_lines,
    normalize,
    parse_effective,
    render,
    winners,
)
from k3s_agent.sshd.facts import CONFIG_DIR, MAIN_CONFIG, Answers, privsep_dir

NAME = "sshd"
MAIN = MAIN_CONFIG
DROPIN = f"{CONFIG_DIR}/01-k3s-agentd.conf"
BEGIN = "# BEGIN k3s-agentd managed block"
END = "# END k3s-agentd managed block"
HEADER = (
    "# Managed by k3s-agentd: rewritten from its policy, local edits are reverted.\n"
    "# Change values in /etc/k3s-agentd/policy.d/*.toml instead.\n"
)

Reload = Callable[[], str]


@dataclasses.dataclass(frozen=True)
class Plan:
    target: str  # DROPIN or MAIN (the marked block)
    text: str  # the target file's new content
    reason: str


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A plan laid out in a private temp dir for sshd -t / -T -C."""

    main: str  # the temp sshd_config to pass to -f
    renames: Mapping[str, str]  # temp path -> the real path it stands for

    def unroot(self, message: str) -> str:
        for temp, real in self.renames.items():
            message = message.replace(temp, real)
        return message


class SshdControl:
    name = NAME

    def __init__(
        self,
        policy: ControlPolicy,
        host: Host,
        sshd: Optional[str] = None,
        reload: Optional[Reload] = None,
    ):
        self.host = host
        self.values = {key: item["value"] for key, item in policy.items.items()}
        self.want = {key: desired_value(key, value) for key, value in self.values.items()}
        self.sshd = sshd if sshd is not None else host.which("sshd")
        self.reload = reload or Reloader(host)
        self.answers = Answers(host)  # this control's own `sshd -T` cache
        self.facts: dict[str, object] = {}
        self.allow_lockout = bool(SPEC.option(policy, "allow_lockout"))
        self.operators = [str(name) for name in SPEC.option(policy, "operators")]
        self.networks = management_networks(policy)

    # -- observe ----------------------------------------------------------------

    def installed(self) -> bool:
        return bool(self.sshd) and self.host.program_exists(str(self.sshd)) and self.host.exists(MAIN)

    def _all(self, status: Status, message: str) -> list[Finding]:
        return [Finding(NAME, key, status, desired=w, message=message) for key, w in self.want.items()]

    def check(self) -> list[Finding]:
        if not self.installed():
            return self._all(Status.ABSENT, "sshd is not installed" if not self.sshd else f"no {MAIN}")
        try:
            self.host.read_text(MAIN)
        except HostError as exc:  # a symlink or a non-file where sshd_config should be
            return self._all(Status.FAILED, f"{exc}; not managed")
        proc = self._sshd(["-T", "-f", self.host.path(MAIN)])
        if proc.returncode != 0:
            return self._all(Status.FAILED, f"sshd -T failed: {_first_lines(proc.stderr)}")
        effective = parse_effective(proc.stdout)
        reader = ConfigReader(self.host)
        decided = winners(reader.read(MAIN))
        refused = self.unsupported(effective)
        plan = self.plan(refused)
        self.facts = {"target": plan.target, "why": plan.reason}
        return [
            self._judge(key, want, effective, decided, refused.get(key)) for key, want in self.want.items()
        ] + [
            Finding(
                NAME,
                exc.path,
                Status.DRIFT,
                desired="a readable sshd config file",
                observed="not read",
                message=f"{exc}: sshd reads it, so which file sets what is unknown",
                declined="not ours to edit",
            )
            for exc in reader.unread
        ]

    def _judge(
        self,
        key: str,
        want: str,
        effective: Mapping[str, list[str]],
        decided: dict[str, list[Directive]],
        refused: Optional[str],
    ) -> Finding:
        seen = effective_value(key, effective)
        found = Finding(NAME, key, Status.OK, desired=want, observed=seen)
        sources = decided.get(key.lower(), [])
        if seen == want:
            where = ", ".join(d.where for d in sources) or "sshd's built-in default"
            return found.with_status(Status.OK, f"set by {where}")
        if refused:  # sshd does not take it (unsupported()): a heal could only fail
            return dataclasses.replace(
                found.with_status(Status.DRIFT, f"sshd -T does not know {key}"), declined=refused
            )
        drift = found.with_status(Status.DRIFT, self._explain(key, sources))
        if _only_foreign_extras(key, want, seen):
            return dataclasses.replace(drift, declined="remove it there (not our file)")
        return drift

    def _explain(self, key: str, sources: list[Directive]) -> str:
        foreign = [d for d in sources if not self._ours(d)]
        if not sources:
            return "not set in any file: sshd's built-in default applies"
        if key.lower() in ACCUMULATE:
            if not foreign:
                return f"{key} accumulates; ours differs from the policy"
            named = ", ".join(f"{d.where} ({d.value})" for d in foreign)
            return f"{key} accumulates over every file: also set by {named}"
        first = sources[0]
        if self._ours(first):
            return f"our {first.where} is out of date"
        return (
            f"{first.where} sets {key} {first.value!r}; sshd takes the first value it reads: that file wins"
        )

    def _ours(self, directive: Directive) -> bool:
        if directive.source == DROPIN:
            return True
        if directive.source != MAIN:
            return False
        span = block_span(self._main_text() or "")
        return span is not None and span[0] < directive.line < span[1]

    def unsupported(self, effective: Optional[Mapping[str, list[str]]] = None) -> dict[str, str]:
        """Policy keywords this node's sshd will not take, each with why: check() declines them
        and plan() leaves them out, so the rest still heals (a candidate with one of them would
        fail `sshd -t`, or be written and never seen by `sshd -T`).

        Only a keyword `sshd -T` (`effective`, else asked now) does not print is asked about:
        sshd itself answers, given that one line as `-o` over the live config (read-only, and
        cached like every `sshd -T`). Shipped profiles print every keyword: no extra call.
        """
        try:
            if effective is None:
                if not self.installed():
                    return {}  # check() reports the whole control absent
                proc = self._sshd(["-T", "-f", self.host.path(MAIN)])
                if proc.returncode != 0:
                    return {}  # check() fails every item with sshd's message
                effective = parse_effective(proc.stdout)
            unshown = [key for key in self.values if effective_value(key, effective) is None]
            reasons = {key: self._refusal(key) for key in unshown}
        except HostError:
            return {}
        return {key: why for key, why in reasons.items() if why}

    def _refusal(self, key: str) -> Optional[str]:
        """Why sshd will not take `key <policy value>`; None when it does (e.g. AllowUsers, unset)."""
        line = f"{key} {render(key, self.values[key])}"
        proc = self._sshd(["-T", "-f", self.host.path(MAIN), "-o", line])
        said = _first_lines(proc.stderr, 1)
        if proc.returncode != 0:
            if "Bad configuration option" in said:  # servconf.c: a keyword this OpenSSH does not know
                return f"this node's OpenSSH does not support {key}: upgrade sshd or drop the item"
            return f"this node's sshd refuses {line!r} ({said}): upgrade sshd or drop the item"
        # Taken, yet not printed: servconf.c's sDeprecated/sUnsupported, or an old alias.
        if effective_value(key, parse_effective(proc.stdout)) is None:
            return (
                f"sshd takes {key} but sshd -T never shows it (deprecated, an alias of another keyword,"
                " or not built in): drop the item or manage the keyword sshd -T shows"
            )
        return None

    # -- plan ------------------------------------------------------------------------

    def desired_lines(self, refused: Mapping[str, str]) -> str:
        """Our lines: every item but those this node's sshd will not take (unsupported())."""
        return "".join(
            f"{key} {render(key, value)}\n" for key, value in self.values.items() if key not in refused
        )

    def plan(self, refused: Optional[Mapping[str, str]] = None) -> Plan:
        """Where our lines go and what they are; `refused`: unsupported() when the caller has it."""
        lines = self.desired_lines(self.unsupported() if refused is None else refused)
        main = self._main_text() or ""
        block = _block(lines) + strip_block(main)
        if block_span(main) is not None:
            return Plan(MAIN, block, f"a managed block already exists at the top of {MAIN}")
        dropin = HEADER + lines
        reader = ConfigReader(self.host, {DROPIN: dropin})
        directives = reader.read(MAIN)
        if DROPIN not in reader.files or not self._main_includes_dropin(reader):
            return Plan(MAIN, block, f"{MAIN} does not include {DROPIN} directly")
        decided = winners(directives)
        for key in self.values:
            first = decided.get(key.lower(), [None])[0]
            if key.lower() not in ACCUMULATE and first is not None and first.source != DROPIN:
                return Plan(MAIN, block, f"{first.where} sets {key} before {DROPIN} is read")
        return Plan(DROPIN, dropin, f"{MAIN} includes {DROPIN} before setting any managed keyword")

    def _main_includes_dropin(self, reader: ConfigReader) -> bool:
        return any(DROPIN in targets for _, targets in self._include_lines(reader))

    def _include_lines(self, reader: ConfigReader) -> list[tuple[int, list[str]]]:
        """(line number, targets) of every global Include line in sshd_config."""
        found = []
        for number, keyword, value in global_lines(self._main_text() or ""):
            if keyword == "include":
                targets = [t for p in shlex.split(value) for t in reader.include_targets(p)]
                found.append((number, targets))
        return found

    # -- heal ------------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        if not self.installed():
            return [f.with_status(Status.ABSENT, f"sshd is not installed or has no {MAIN}") for f in drift]
        # declined: another file's extra AllowUsers & co., a config file too large to read
        results, todo = split_declined(drift)
        if not todo:
            return results
        plan = self.plan()
        with self._candidate(plan) as candidate:
            error = self._test(candidate)
            refusal = None if error is not None else self.lockout(plan, candidate)
        if error is not None:
            return results + [
                f.with_status(Status.FAILED, f"sshd -t refused the candidate: {error}") for f in todo
            ]
        if refusal is not None and not self.allow_lockout:
            message = f"not written: {refusal} (set allow_lockout = true to accept)"
            return results + [f.with_status(Status.FAILED, message) for f in todo]
        # Let through, but said in the heal message (and so in the journal).
        override = f"; allow_lockout = true let this through: {refusal}" if refusal else ""
        try:
            note = self._write(plan)
        except (OSError, HostError) as exc:
            return results + [
                f.with_status(Status.FAILED, f"cannot write {plan.target}: {exc}") for f in todo
            ]
        try:
            reloaded = self.reload()
        except (OSError, HostError) as exc:
            message = f"{note}, but the reload failed: {exc}"
            return results + [f.with_status(Status.FAILED, message) for f in todo]
        return results + [f.with_status(Status.HEALED, f"{note}; {reloaded}{override}") for f in todo]

    def _write(self, plan: Plan) -> str:
        current = self.host.read_text(plan.target)
        if current == plan.text:
            return f"{plan.target} already up to date ({plan.reason})"
        mode, uid, gid = 0o600, 0, 0
        if plan.target == MAIN:
            st = self.host.lstat(MAIN)
            mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
        backup = self.host.write_atomic(plan.target, plan.text.encode(), mode=mode, uid=uid, gid=gid)
        kept = f", previous copy {backup}" if backup else ""
        return f"wrote {plan.target} ({plan.reason}{kept})"

    def validate(self, plan: Plan) -> Optional[str]:
        """sshd -t over the candidate in a private temp dir; None when sshd accepts it."""
        with self._candidate(plan) as candidate:
            return self._test(candidate)

    @contextlib.contextmanager
    def _candidate(self, plan: Plan) -> Iterator[Candidate]:
        """The plan as files sshd can read, in a private temp dir removed afterwards."""
        with scratch_dir("k3s-agentd-sshd.") as tmp:
            candidate_main = os.path.join(tmp, "sshd_config")
            renames = {candidate_main: MAIN}
            if plan.target == MAIN:
                main_text = plan.text
            else:
                candidate_dropin = os.path.join(tmp, os.path.basename(DROPIN))
                write_private(candidate_dropin, plan.text.encode())
                renames[candidate_dropin] = DROPIN
                main_text = self._main_with_candidate(candidate_dropin)
            write_private(candidate_main, main_text.encode())
            yield Candidate(candidate_main, renames)

    def _test(self, candidate: Candidate) -> Optional[str]:
        proc = self._sshd(["-t", "-f", candidate.main])
        if proc.returncode == 0:
            return None
        return candidate.unroot(_first_lines(proc.stderr or proc.stdout) or f"exit status {proc.returncode}")

    def would_lock_out(self, plan: Plan) -> Optional[str]:
        """The guard's refusal of a plan; None when it passes or sshd -t refuses it (apply says why)."""
        with self._candidate(plan) as candidate:
            return None if self._test(candidate) is not None else self.lockout(plan, candidate)

    def lockout(self, plan: Plan, candidate: Candidate) -> Optional[str]:
        """The lock-out guard's refusal of a candidate sshd -t accepted; None when an operator gets in.

        sshd itself answers for each (operator, management address): `sshd -T
        -C user=U,host=A,addr=A -f <candidate>`; sshd_guard judges the answers.
        """

        reader = ConfigReader(self.host, {plan.target: plan.text})
        directives = reader.read(MAIN)
        local = local_ends(directives)

        def ask(user: str, address: str) -> Mapping[str, list[str]]:
            # laddr/lport too: without them sshd -C silently skips Match LocalAddress/LocalPort blocks
            laddr, lport = local[ipaddress.ip_address(address).version]
            spec = f"user={user},host={address},addr={address},laddr={laddr},lport={lport}"
            proc = self._sshd(["-T", "-C", spec, "-f", candidate.main], cached=False)
            if proc.returncode != 0:
                why = _first_lines(proc.stderr or proc.stdout) or f"exit status {proc.returncode}"
                raise GuardError(f"sshd -T -C {spec}: {candidate.unroot(why)}")
            return parse_effective(proc.stdout)

        try:
            accounts = read_accounts(self.host)
            where = explainer(self.host, plan)
            users = [d.value for d in directives if d.keyword in ("allowusers", "denyusers")]
            users += [d.value for d, _ in reader.conditional if d.keyword in ("allowusers", "denyusers")]
            criteria = [m for _, m in reader.conditional]
            bounds = sshd_guard.address_boundaries(criteria, " ".join(users).split())
            verdict = sshd_guard.guard(self.host, accounts, self.operators, self.networks, ask, where, bounds)
        except (GuardError, HostError) as exc:
            return f"lock-out guard: sshd could not be asked ({exc})"
        self.facts["guard_probes"] = verdict.probed
        return None if verdict.ok else verdict.text

    def _main_with_candidate(self, candidate_dropin: str) -> str:
        """sshd_config with each Include that reads our drop-in spelled out, ours swapped in."""
        reader = ConfigReader(self.host, {DROPIN: ""})
        lines = (self._main_text() or "").splitlines()
        for number, targets in self._include_lines(reader):
            if DROPIN in targets:
                paths = [candidate_dropin if t == DROPIN else self.host.path(t) for t in targets]
                lines[number - 1] = "Include " + " ".join(f'"{p}"' for p in paths)
        return "\n".join(lines) + "\n"

    # -- commit-confirmed (k3s_agent/confirm.py) ---------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Our drop-in (or its absence) and our marked block in sshd_config (or its
        absence, and where it stood): all we ever write."""
        main = self._main_text() or ""
        span = block_span(main)
        block = None if span is None else "".join(main.splitlines(keepends=True)[span[0] - 1 : span[1]])
        return {"dropin": self.host.read_text(DROPIN), "block": block, "block_line": span[0] if span else 0}

    def restore(self, taken: dict[str, Any]) -> str:
        """Put snapshot()'s drop-in and block back byte for byte, then reload sshd as a
        heal does (only when a file changed). Others' lines in sshd_config stay."""
        done = []
        current = self.host.read_text(DROPIN)
        if taken["dropin"] is None and current is not None:
            saved = self.host.remove(DROPIN)
            done.append(f"removed {DROPIN} (it did not exist before; copy kept in {saved})")
        elif taken["dropin"] is not None and current != taken["dropin"]:
            self.host.write_atomic(DROPIN, taken["dropin"].encode(), mode=0o600)
            done.append(f"{DROPIN} as it was")
        main = self._main_text()
        if main is not None:
            lines = strip_block(main).splitlines(keepends=True)
            if taken["block"] is not None:
                lines.insert(max(int(taken["block_line"]) - 1, 0), taken["block"])
            if "".join(lines) != main:
                st = self.host.lstat(MAIN)
                mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
                self.host.write_atomic(MAIN, "".join(lines).encode(), mode=mode, uid=uid, gid=gid)
                done.append(
                    f"the managed block of {MAIN} as it was" if taken["block"] else f"no block in {MAIN}"
                )
        if not done:
            return "sshd files already as they were (nothing to reload)"
        return "; ".join(done) + "; " + self.reload()

    # -- plumbing ---------------------------------------------------------------------

    def _sshd(self, args: list[str], cached: bool = True) -> Any:
        if cached and args and args[0] == "-T":
            answer = self.answers.get(str(self.sshd), args)
            if answer is not None:
                return answer
        with privsep_dir():
            return self.host.run([str(self.sshd), *args], timeout=20)

    def _main_text(self) -> Optional[str]:
        try:
            return self.host.read_text(MAIN)
        except HostError:
            return None

    def watches(self) -> list[Watch]:
        return [Watch("path", MAIN), Watch("path", os.path.dirname(DROPIN))]

    def describe(self) -> dict[str, object]:
        return {"sshd": self.sshd, "items": len(self.values), **self.facts}


def management_networks(policy: ControlPolicy) -> list[Network]:
    """The sshd section's management_sources; anywhere (0.0.0.0/0 and ::/0) by default.

    Not the firewall's management_sources: the runtime guard is built from
    its own section only (a control knows no other control), and the
    load-time lint must judge the same networks the runtime guard does.
    """
    sources = SPEC.option(policy, "management_sources") or []
    return [ipaddress.ip_network(s, strict=False) for s in sources] or list(sshd_guard.ANYWHERE)


# Stands for "one of the node's addresses" when sshd listens on a wildcard (RFC 5737, 3849).
_LOCAL_ANY = {4: "198.51.100.1", 6: "2001:db8::1"}


def local_ends(directives: Sequence[Directive]) -> dict[int, tuple[str, int]]:
    """The (local address, port) a management connection arrives on, per IP version:
    the first specific ListenAddress of that family (its port, else the first Port),
    else a documentation address standing for any node address. Port and
    ListenAddress are global only, so the candidate's own lines decide them."""
    ports = [d.value.split()[0] for d in directives if d.keyword == "port" and d.value.split()]
    port = int(ports[0]) if ports and ports[0].isdigit() else 22
    ends = {v: (a, port) for v, a in _LOCAL_ANY.items()}
    for d in reversed([d for d in directives if d.keyword == "listenaddress"]):
        words = d.value.split()
        text = words[0] if words else ""
        host, _, after = text.rpartition("]:") if text.startswith("[") else (text, "", "")
        if not after and text.count(":") == 1:
            host, _, after = text.partition(":")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue
        if not ip.is_unspecified and not ip.is_loopback:
            ends[ip.version] = (str(ip), int(after) if after.isdigit() else port)
    return ends


def explainer(host: Host, plan: Plan) -> Where:
    """(keyword, effective value) -> "Keyword value (file:line[ in Match ...])" over the candidate."""
    reader = ConfigReader(host, {plan.target: plan.text})
    directives = reader.read(MAIN)

    def where(keyword: str, value: str) -> str:
        shown = value if len(value) <= 60 else value[:57] + "..."
        found = [(d, "") for d in directives if d.keyword == keyword]
        if keyword not in ACCUMULATE:
            found = found[:1]
        found += [(d, f" in {m}") for d, m in reader.conditional if d.keyword == keyword]
        same = [(d, m) for d, m in found if _same_value(keyword, d.value, value)]
        cited = same or found
        if not cited:
            return f"{keyword_name(keyword)} {shown} (sshd's default)"
        return f"{keyword_name(keyword)} {shown} (" + ", ".join(d.where + m for d, m in cited) + ")"

    return where


def _same_value(keyword: str, written: str, effective: str) -> bool:
    if keyword in ACCUMULATE:
        return bool(set(written.split()) & set(effective.split()))
    return normalize(keyword, written).lower() == normalize(keyword, effective).lower()


# -- the managed block ---------------------------------------------------------------------


def _block(lines: str) -> str:
    return f"{BEGIN}: edit the k3s-agentd policy, not these lines\n{lines}{END}\n"


def block_span(text: str) -> Optional[tuple[int, int]]:
    """(BEGIN line, END line), 1-based, of our block in sshd_config, if any."""
    begin = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(BEGIN):
            begin = number
        elif line.startswith(END) and begin is not None:
            return begin, number
    return None


def strip_block(text: str) -> str:
    span = block_span(text)
    if span is None:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[: span[0] - 1] + lines[span[1] :])


def _only_foreign_extras(key: str, want: str, seen: str) -> bool:
    """AllowUsers & co. accumulate: extra names from another file are not ours to remove."""
    return key.lower() in ACCUMULATE and set(str(want).split()) <= set(str(seen).split())


def _first_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in (text or "").strip().splitlines()[:count])


# -- reload ----------------------------------------------------------------------------------


class Reloader:
    """Reload (never restart) sshd so live sessions survive.

    systemd: `systemctl reload ssh` (Debian/Ubuntu name the unit ssh.service)
    or `sshd` (RHEL, Fedora, SUSE, Arch); ExecReload runs `sshd -t` and sends
    SIGHUP. Without systemd: SIGHUP to the pid in sshd's PidFile, after
    checking that the process really is sshd. sshd not running: nothing to do,
    it reads the new config when it starts.
    """

    UNITS = ("ssh.service", "sshd.service")

    def __init__(
        self,
        host: Host,
        systemctl: Optional[str] = None,
        booted: Optional[bool] = None,
        pidfile: str = "/run/sshd.pid",
    ):
        self.host = host
        self.systemctl = systemctl if systemctl is not None else host.which("systemctl")
        # sd_booted(3): systemd is PID 1 when this directory exists.
        self.booted = systemd_booted() if booted is None else booted
        self.pidfile = pidfile

    def __call__(self) -> str:
        if self.booted and self.systemctl:
            return self._systemd()
        return self._sighup()

    def unit(self) -> Optional[str]:
        for unit in self.UNITS:
            proc = self.host.run([str(self.systemctl), "show", "-p", "LoadState", "--value", unit])
            if proc.stdout.strip() == "loaded":
                return unit
        return None

    def _systemd(self) -> str:
        unit = self.unit()
        if unit is None:
            return "no ssh/sshd unit loaded: nothing to reload"
        if self.host.run([str(self.systemctl), "is-active", "--quiet", unit]).returncode != 0:
            return f"{unit} is not running: it reads the new config when it starts"
        proc = self.host.run([str(self.systemctl), "reload", unit], timeout=60)
        if proc.returncode != 0:
            raise HostError(f"systemctl reload {unit}: {_first_lines(proc.stderr)}")
        return f"reloaded {unit}"

    def _sighup(self) -> str:
        try:
            pid = int((self.host.read_text(self.pidfile) or "").strip() or 0)
        except (HostError, ValueError):
            pid = 0
        if pid <= 1:
            return "sshd is not running (no pid file): it reads the new config when it starts"
        try:
            comm = self.host.proc_read(f"{pid}/comm").decode(errors="replace").strip()
        except OSError:
            return f"sshd is not running (stale {self.pidfile})"
        if comm != "sshd":
            raise HostError(f"{self.pidfile} names pid {pid}, which is {comm!r}, not sshd; not signalled")
        try:
            self.host.signal(pid, signal.SIGHUP)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return "sshd exited before the reload"
            raise
        return f"sent SIGHUP to sshd (pid {pid})"


# -- policy -----------------------------------------------------------------------------------


def _value_check(value: Any) -> Optional[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        return "must not be empty"
    for part in values:
        if isinstance(part, (list, dict)):
            # render() would write Python's repr ("[1]") into sshd_config.
            return f"{part!r}: a list holds plain words, not lists or tables"
        text = str(part)
        if not text.strip():
            return "must not be empty"
        if any(ch in text for ch in "\n\r\0#"):
            return f"{text!r}: newlines, NUL and # cannot appear in an sshd value"
    return None


_KEYWORD = matches(r"[A-Za-z][A-Za-z0-9]*", "an sshd_config keyword like PermitRootLogin")


def _key_check(key: str) -> Optional[str]:
    if key.lower() in ("match", "include"):
        return f"{key} is structure, not a setting: not manageable here"
    return _KEYWORD(key)


def _settings(control: ControlPolicy) -> dict[str, str]:
    return {key.lower(): desired_value(key, item["value"]) for key, item in control.items.items()}


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    settings = _settings(control)
    problems = [
        Lint("", f"items.{key}: list modifiers (+ - ^) cannot be verified: give the full list")
        for key, item in control.items.items()
        if key.lower() in ALGORITHM_LISTS and render(key, item["value"])[:1] in "+-^"
    ]
    seen: dict[str, str] = {}
    for key in control.items:
        if key.lower() in seen:
            problems.append(Lint("", f"items.{key} and items.{seen[key.lower()]} are the same keyword"))
        seen.setdefault(key.lower(), key)
    if SPEC.option(control, "allow_lockout"):
        return problems
    reasons = lockouts(settings, host)
    if not reasons and control.mode is Mode.ENFORCE and policy.preflight:
        refusal = _effective_lockout(control, host)
        reasons = [refusal] if refusal else []
    return problems + [Lint("", f"{reason} (set allow_lockout = true to accept)") for reason in reasons]


def _effective_lockout(control: ControlPolicy, host: Host) -> Optional[str]:
    """The runtime guard, run at load time over the candidate this policy would write.

    Only where sshd is installed (elsewhere nothing would be written) and
    only in enforce mode (audit writes nothing: the shipped audit policy must
    load on a node nobody has set up keys on yet). A candidate sshd -t
    refuses is left to apply, which fails it with sshd's message.
    """
    ctl = SshdControl(control, host)
    if not ctl.installed():
        return None
    try:
        return ctl.would_lock_out(ctl.plan())
    except HostError:
        return None


def _cidr(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        return f"{value!r}: not a network in CIDR form ({exc})"
    return None


# A name sshd -C can take (no comma, =, space) and useradd would make.
_ACCOUNT = matches(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*\$?", "an account name")


SPEC = ControlSpec(
    name=NAME,
    build=SshdControl,
    options={
        "allow_lockout": Field(bool, default=False, doc="accept settings that would leave no way to log in"),
        "operators": Field(
            list,
            list_of(str, _ACCOUNT),
            default=(),
            doc="accounts that must keep a way in (empty: any login account)",
        ),
        "management_sources": Field(
            list, list_of(str, _cidr), doc="networks operators log in from (default: 0.0.0.0/0 and ::/0)"
        ),
    },
    item_fields={
        "value": Field((str, int, bool, list), _value_check, required=True, doc="the keyword's value"),
    },
    item_key=_key_check,
    lint=lint,
    doc="the effective sshd configuration (sshd -T), healed by a validated drop-in",
)
