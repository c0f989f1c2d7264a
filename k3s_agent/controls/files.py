"""File permissions and ownership of K3s's sensitive files (CIS 1.1.x, 4.1.x).

Items are keyed by an absolute path or glob. `mode` is exact, `max_mode` is
CIS's "or more restrictive": healing clears exactly the bits above the limit.
Owner and group are names resolved on this host. Nothing is ever done through
a symlink (see hostfs): a link where a file is expected is drift for a human.

One finding per matched path for plain items (key = the path), one finding
per item for recursive ones (key = the item's pattern), one `absent` (or
`drift` when `required`) finding when nothing matches.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import re
import stat
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

from k3s_agent import hostfs
from k3s_agent.controls.base import ControlSpec, Lint, Watch, split_declined
from k3s_agent.host import Host
from k3s_agent.model import Finding, Status
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, setting

NAME = "files"
_MODE = re.compile(r"0?[0-7]{3}|[0-7]{4}")
_SHOWN_PER_FINDING = 5  # a recursive finding lists this many deviating entries


# -- policy values --------------------------------------------------------------------


def parse_mode(text: str) -> int:
    return int(text, 8)


def _mode_check(value: Any) -> Optional[str]:
    if not _MODE.fullmatch(value):
        return f'{value!r} is not an octal mode string like "0600" (give it as a string, in quotes)'
    return None


def _user_check(value: Any) -> Optional[str]:
    try:
        pwd.getpwnam(value)
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        return f"no user {value!r} on this host"
    return None


def _group_check(value: Any) -> Optional[str]:
    try:
        grp.getgrnam(value)
    except (KeyError, ValueError):
        return f"no group {value!r} on this host"
    return None


TYPES = {"file": "regular file", "dir": "directory", "any": "file or directory"}


def _type_check(value: Any) -> Optional[str]:
    return None if value in TYPES else 'must be "file", "dir" or "any"'


_MAX_LEVELS = 64  # also bounds the glob expansion's recursion
_NAME_MAX, _PATH_MAX = 255, 4095  # bytes, as the kernel counts (limits.h)


def _key_check(key: str) -> Optional[str]:
    # First: a NUL or an escape sequence must not reach a syscall, a log line or a terminal.
    bad = next((ch for ch in key if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
    if bad is not None:
        return f"contains control character U+{ord(bad):04X}"
    if not key.startswith("/"):
        return "must be an absolute path or glob"
    if len(key.encode("utf-8", "surrogatepass")) > _PATH_MAX:
        return f"longer than {_PATH_MAX} bytes (PATH_MAX)"
    if key.count("/") > _MAX_LEVELS:
        return f"more than {_MAX_LEVELS} levels deep"
    if any(len(p.encode("utf-8", "surrogatepass")) > _NAME_MAX for p in key.split("/")):
        return f"a component is longer than {_NAME_MAX} bytes (NAME_MAX)"
    parts = key.split("/")[1:]
    if key != "/" and any(p in ("", ".", "..") for p in parts):
        return "must be a normalised path (no //, . or .., no trailing /)"
    if "**" in key:
        return "** is not supported: use recursive = true on the directory"
    return None


def fmt_mode(mode: int) -> str:
    return f"{mode:04o}"


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str
    mode: Optional[int] = None
    max_mode: Optional[int] = None
    owner: Optional[str] = None
    group: Optional[str] = None
    uid: int = -1
    gid: int = -1
    recursive: bool = False
    required: bool = False
    cis: Optional[str] = None
    type: str = "any"

    @classmethod
    def from_item(cls, pattern: str, item: dict[str, Any]) -> Rule:
        owner, group = item.get("owner"), item.get("group")
        return cls(
            pattern=pattern,
            mode=parse_mode(item["mode"]) if "mode" in item else None,
            max_mode=parse_mode(item["max_mode"]) if "max_mode" in item else None,
            owner=owner,
            group=group,
            uid=pwd.getpwnam(owner).pw_uid if owner else -1,
            gid=grp.getgrnam(group).gr_gid if group else -1,
            recursive=bool(setting(item, SPEC.item_fields, "recursive")),
            required=bool(setting(item, SPEC.item_fields, "required")),
            cis=item.get("cis"),
            type=setting(item, SPEC.item_fields, "type"),
        )

    def mismatch(self, st: os.stat_result) -> Optional[str]:
        """Why an entry is not what the item expects (a directory where a file should be)."""
        if self.type == "file" and not stat.S_ISREG(st.st_mode):
            want = TYPES["file"]
        elif self.type == "dir" and not stat.S_ISDIR(st.st_mode):
            want = TYPES["dir"]
        else:
            return None
        kind = hostfs.kind_of(st.st_mode)
        return f'a {kind} where a {want} is expected (type = "{self.type}"); not changed'

    def describe(self) -> str:
        bits = []
        if self.mode is not None:
            bits.append(fmt_mode(self.mode))
        if self.max_mode is not None:
            bits.append(f"<={fmt_mode(self.max_mode)}")
        if self.owner or self.group:
            bits.append(f"{self.owner or '*'}:{self.group or '*'}")
        if self.recursive:
            bits.append("recursive")
        return " ".join(bits)

    def mode_applies(self, st: os.stat_result) -> bool:
        # In a recursive item the mode governs regular files only: directories
        # need their x bits, and a "0600" meant for files would lock them.
        return not self.recursive or stat.S_ISREG(st.st_mode)

    def mode_for(self, st: os.stat_result) -> Optional[int]:
        return self.target_mode(stat.S_IMODE(st.st_mode)) if self.mode_applies(st) else None

    def target_mode(self, current: int) -> Optional[int]:
        """The mode to set, or None when `current` complies."""
        if self.mode is not None and current != self.mode:
            return self.mode
        if self.max_mode is not None and current & ~self.max_mode:
            return current & self.max_mode
        return None

    def problems(self, st: os.stat_result) -> list[str]:
        """What is wrong with one entry (empty: compliant)."""
        found = []
        if self.uid != -1 and st.st_uid != self.uid:
            found.append(f"owner {user_name(st.st_uid)}, want {self.owner}")
        if self.gid != -1 and st.st_gid != self.gid:
            found.append(f"group {group_name(st.st_gid)}, want {self.group}")
        if self.mode_applies(st):
            current = stat.S_IMODE(st.st_mode)
            if self.target_mode(current) is not None:
                if self.mode is not None:
                    found.append(f"mode {fmt_mode(current)}, want {fmt_mode(self.mode)}")
                else:
                    extra = current & ~(self.max_mode or 0)
                    found.append(
                        f"mode {fmt_mode(current)} exceeds {fmt_mode(self.max_mode or 0)} "
                        f"(bits {fmt_mode(extra)} too many)"
                    )
        return found


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def observed(st: os.stat_result) -> str:
    return f"{fmt_mode(stat.S_IMODE(st.st_mode))} {user_name(st.st_uid)}:{group_name(st.st_gid)}"


def precedence(rule: Rule) -> tuple[int, int]:
    """Exact paths first, then the longest (most specific) glob."""
    return (1 if hostfs.has_magic(rule.pattern) else 0, -len(rule.pattern))


# -- the control ------------------------------------------------------------------------

LEFT = "left for an operator"


def unfixable(entry: hostfs.Entry) -> Optional[str]:
    """Why a deviating entry must not be changed by us (None: it may)."""
    if entry.problem:
        return entry.problem
    if entry.mount:
        return "a mount point: never changed through"
    if stat.S_ISREG(entry.st.st_mode) and entry.st.st_nlink > 1:
        # A chmod here would change every name of this inode (a planted hard link
        # would let us loosen a file elsewhere); fs.protected_hardlinks is not everywhere.
        return f"{entry.st.st_nlink} hard links: a change here would change every name of this file"
    return None


def notes_on(entry: hostfs.Entry) -> str:
    """What to add to `observed` about an entry we judge but would not change."""
    notes = [" (mount point)"] if entry.mount else []
    if stat.S_ISREG(entry.st.st_mode) and entry.st.st_nlink > 1:
        notes.append(f", {entry.st.st_nlink} hard links")
    return "".join(notes)


class FilesControl:
    name = NAME

    def __init__(self, policy: ControlPolicy, host: Host):
        self.host = host
        rules = [Rule.from_item(key, dict(item)) for key, item in policy.items.items()]
        self.rules = sorted(rules, key=precedence)
        self.plain = [r for r in self.rules if not r.recursive]
        self.recursive = [r for r in self.rules if r.recursive]
        self.owner_of: dict[str, Rule] = {}  # finding key -> rule, from the last check
        self.entries_seen = 0
        self.mounts = hostfs.MountTable()

    # -- observe ------------------------------------------------------------------

    def check(self) -> list[Finding]:
        findings: list[Finding] = []
        owner_of: dict[str, Rule] = {}
        self.entries_seen = 0
        self.mounts = self.host.mounts()
        for rule in self.plain:
            for finding in self._guarded(rule, lambda r=rule: self._check_plain(r, owner_of)):
                owner_of[finding.key] = rule
                findings.append(finding)
        for rule in self.recursive:
            findings += self._guarded(rule, lambda r=rule: [self._check_recursive(r)])
            owner_of[rule.pattern] = rule
        self.owner_of = owner_of
        return findings

    def _guarded(self, rule: Rule, check: Callable[[], list[Finding]]) -> list[Finding]:
        """One item's findings; an error the kernel gives for this item fails this item only."""
        try:
            return check()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in a key the loader did not vet
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return [self._base(rule, rule.pattern).with_status(Status.FAILED, f"{rule.pattern!r}: {reason}")]

    def _base(self, rule: Rule, key: str) -> Finding:
        return Finding(NAME, key, Status.OK, desired=rule.describe(), cis=rule.cis)

    def _nothing(self, rule: Rule) -> Finding:
        base = self._base(rule, rule.pattern)
        if rule.required:
            never = "we never create files: K3s (or its operator) must"
            return _declined(base.with_status(Status.DRIFT, "required, but nothing matches"), never)
        return base.with_status(Status.ABSENT, "not present on this node")

    def _check_plain(self, rule: Rule, claimed: dict[str, Rule]) -> list[Finding]:
        findings, matched = [], 0
        try:
            for entry in self.host.expand(rule.pattern, self.mounts):
                matched += 1
                if matched > hostfs.MAX_ENTRIES:
                    base = self._base(rule, rule.pattern)
                    findings.append(
                        _declined(base.with_status(Status.DRIFT, f"{hostfs.too_many()} (this cycle)"))
                    )
                    break
                if entry.path in claimed:
                    continue  # a more specific item governs this path
                self.entries_seen += 1
                findings.append(self._judge(rule, entry))
        except hostfs.Refused as exc:
            return [_declined(self._base(rule, rule.pattern).with_status(Status.DRIFT, str(exc)))]
        return findings if matched else [self._nothing(rule)]

    def _judge(self, rule: Rule, entry: hostfs.Entry) -> Finding:
        base = self._base(rule, entry.path)
        kind = stat.S_IFMT(entry.st.st_mode)
        if entry.problem:
            return _declined(base.with_status(Status.DRIFT, entry.problem), "left for the next cycle")
        # A link or a special file: hostfs.change refuses it, so apply would only say so.
        if entry.link is not None:
            return dataclasses.replace(
                base,
                status=Status.DRIFT,
                observed=f"symlink -> {entry.link}",
                message=f"a symlink (-> {entry.link}) where a file is expected; "
                "not followed: remove it or point the policy at the real file",
                declined=LEFT,
            )
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = hostfs.kind_of(entry.st.st_mode)
            return dataclasses.replace(
                base,
                status=Status.DRIFT,
                observed=what,
                message=f"a {what}, not a file or directory",
                declined=LEFT,
            )
        found = dataclasses.replace(base, observed=observed(entry.st) + notes_on(entry))
        mismatch = rule.mismatch(entry.st)
        if mismatch:
            return _declined(found.with_status(Status.DRIFT, mismatch))
        problems = rule.problems(entry.st)
        if not problems:
            return found
        reason = unfixable(entry)
        drift = found.with_status(Status.DRIFT, "; ".join([*problems, reason] if reason else problems))
        return _declined(drift) if reason else drift

    def _check_recursive(self, rule: Rule) -> Finding:
        base = self._base(rule, rule.pattern)
        notes, deviations, mounts, total, fixable = [], [], [], 0, 0
        try:
            for entry in self._tree(rule):
                if entry.problem:  # a race or a cap: said first, so it is never cut off
                    notes.append(f"{entry.path}: {entry.problem}")
                    continue
                total += 1
                if entry.mount and stat.S_ISDIR(entry.st.st_mode):
                    mounts.append(entry.path)
                problems = rule.problems(entry.st) if entry.link is None else []
                if problems:
                    reason = unfixable(entry)
                    fixable += reason is None
                    shown = [reason, *problems] if reason else problems
                    deviations.append(f"{entry.path}: {'; '.join(shown)}")
        except hostfs.Refused as exc:
            return _declined(base.with_status(Status.DRIFT, str(exc)))
        self.entries_seen += total
        if total == 0 and not notes:
            return self._nothing(rule)
        skipped = f"; {len(mounts)} mount point not entered ({', '.join(mounts[:3])})" if mounts else ""
        found = dataclasses.replace(base, observed=f"{len(deviations)} of {total} entries deviate{skipped}")
        if not deviations and not notes:
            return dataclasses.replace(found, observed=f"{total} entries comply{skipped}")
        shown = notes + deviations[:_SHOWN_PER_FINDING]
        more = len(deviations) - min(len(deviations), _SHOWN_PER_FINDING)
        drift = found.with_status(Status.DRIFT, "; ".join(shown) + (f"; and {more} more" if more else ""))
        if fixable:
            return drift
        # Nothing here apply would change (_heal_tree refuses each): deviations it must
        # not touch (hard links, mount points), races or a walk cap only.
        return _declined(drift)

    def _tree(self, rule: Rule) -> Iterator[hostfs.Entry]:
        """Every match of the pattern and everything below it.

        Symlinks below the top are yielded (and counted) but never judged or
        descended: their own owner/mode mean nothing and the target is not ours.
        Mount points are yielded but never entered.
        """
        for top in self.host.expand(rule.pattern, self.mounts):
            if top.problem:
                raise hostfs.Raced(f"{top.path}: {top.problem}")
            if top.link is not None:
                raise hostfs.Refused(f"{top.path} is a symlink (-> {top.link}); not followed")
            mismatch = rule.mismatch(top.st)
            if mismatch:
                raise hostfs.Refused(f"{top.path} is {mismatch}")
            yield top
            yield from self.host.walk(top, self.mounts)

    # -- heal ---------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        results, todo = split_declined(drift)
        self.mounts = self.host.mounts()  # fresh: a mount may have come since check
        return results + [self._heal(finding) for finding in todo]

    def _heal(self, finding: Finding) -> Finding:
        rule = self.owner_of.get(finding.key)
        if rule is None:
            return finding.with_status(Status.FAILED, "no policy item governs this path any more")
        try:
            if rule.recursive:
                return self._heal_tree(rule, finding)
            note = self._fix(rule, finding.key)
        except hostfs.Refused as exc:
            return finding.with_status(Status.DRIFT, f"{exc}; {LEFT}")
        except OSError as exc:
            return finding.with_status(Status.FAILED, f"{finding.key}: {exc.strerror}")
        return finding.with_status(Status.HEALED, note or "already compliant")

    def _heal_tree(self, rule: Rule, finding: Finding) -> Finding:
        notes, refused = [], []
        for entry in list(self._tree(rule)):
            if entry.link is not None or not (entry.problem or rule.problems(entry.st)):
                continue
            reason = unfixable(entry)
            if reason:
                refused.append(f"{entry.path}: {reason}")
                continue
            try:
                notes.append(f"{entry.path}: {self._fix(rule, entry.path)}")
            except hostfs.Refused as exc:
                refused.append(str(exc))
            except FileNotFoundError:
                continue  # removed since the walk (K3s rotates temporary certs): nothing to fix
        if refused:
            return finding.with_status(Status.DRIFT, "; ".join(refused + notes)[:2000])
        shown = "; ".join(notes[:_SHOWN_PER_FINDING])
        more = len(notes) - _SHOWN_PER_FINDING
        return finding.with_status(
            Status.HEALED, f"fixed {len(notes)} entries: {shown}" + (f"; and {more} more" if more > 0 else "")
        )

    def _fix(self, rule: Rule, path: str) -> str:
        before, after = self.host.change(path, rule.uid, rule.gid, rule.mode_for, self.mounts)
        return describe_change(before, after)

    def watches(self) -> list[Watch]:
        folders = set()
        for rule in self.rules:
            literal = []
            for part in rule.pattern.split("/")[1:]:
                if hostfs.has_magic(part):
                    break
                literal.append(part)
            folder = "/" + "/".join(literal)
            if len(literal) == len(rule.pattern.split("/")[1:]) and not rule.recursive:
                folder = os.path.dirname(folder)
            folders.add(folder)
        return [Watch("path", f) for f in sorted(folders)]

    def describe(self) -> dict[str, object]:
        return {
            "items": len(self.rules),
            "entries_checked": self.entries_seen,
            "mount_points_known": len(self.mounts.points),
            "mount_table_truncated": self.mounts.truncated,
        }


def _declined(finding: Finding, why: str = LEFT) -> Finding:
    """A drift apply leaves alone, and why (Finding.declined)."""
    return dataclasses.replace(finding, declined=why)


def describe_change(before: os.stat_result, after: os.stat_result) -> str:
    """What a heal did, e.g. "mode 0755 -> 0644 (removed 0111); owner nobody -> root"."""
    notes = []
    if before.st_uid != after.st_uid:
        notes.append(f"owner {user_name(before.st_uid)} -> {user_name(after.st_uid)}")
    if before.st_gid != after.st_gid:
        notes.append(f"group {group_name(before.st_gid)} -> {group_name(after.st_gid)}")
    old, new = stat.S_IMODE(before.st_mode), stat.S_IMODE(after.st_mode)
    if old != new:
        removed, added = old & ~new, new & ~old
        change = f"mode {fmt_mode(old)} -> {fmt_mode(new)}"
        details = [f"removed {fmt_mode(removed)}"] if removed else []
        details += [f"added {fmt_mode(added)}"] if added else []
        notes.append(f"{change} ({', '.join(details)})")
    return "; ".join(notes)


# -- policy lint -------------------------------------------------------------------------

# A path, or a glob's fixed part, must be at least this many levels deep: "/",
# "/etc", "/*", "/etc/*", "/usr/bin/*", "/var/lib/*" or "/etc/shadow" would
# change system files on every node. K3s's files are all deeper.
_MIN_FIXED_LEVELS = 3
# Paths where a non-root owner hands a user the system (and `nobody`, the
# overflow user shared by unrelated daemons, should own nothing anywhere).
_SYSTEM_DIRS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/root")
_OVERFLOW_UID = 65534


def fixed_levels(key: str) -> int:
    """How many leading components of a key are literal: "/etc/ssh/*.conf" -> 2."""
    parts = [p for p in key.split("/") if p]
    return next((i for i, part in enumerate(parts) if hostfs.has_magic(part)), len(parts))


def _too_shallow(key: str) -> Optional[Lint]:
    if fixed_levels(key) >= _MIN_FIXED_LEVELS:
        return None
    return Lint(
        key,
        f"{key} is too close to / (a path needs {_MIN_FIXED_LEVELS} levels and a glob "
        f"{_MIN_FIXED_LEVELS} literal ones before its first wildcard): it would change system files",
    )


def _bad_owner(key: str, owner: Optional[str]) -> Optional[Lint]:
    if not owner or _user_check(owner):
        return None
    uid = pwd.getpwnam(owner).pw_uid
    if uid == _OVERFLOW_UID or owner == "nobody":
        return Lint(key, f"gives {key} to user {owner}, which every unprivileged daemon may run as")
    if uid != 0 and any(key == d or key.startswith(d + "/") for d in _SYSTEM_DIRS):
        return Lint(key, f"gives system path {key} to user {owner}: that user could then change the node")
    return None


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    problems = []
    for key, item in control.items.items():
        # Section-level (key ""): no accept_risk can make these mean anything.
        if "mode" in item and "max_mode" in item:
            problems.append(Lint("", f'items."{key}": set either mode or max_mode, not both'))
        if not any(k in item for k in ("mode", "max_mode", "owner", "group")):
            what = "mode, max_mode, owner or group"
            problems.append(Lint("", f'items."{key}": says nothing to enforce (no {what})'))
        if item.get("recursive") and item.get("type") == "file":
            problems.append(Lint("", f'items."{key}": recursive needs type = "dir" or "any"'))
        problems += [p for p in (_too_shallow(key), _bad_owner(key, item.get("owner"))) if p]
    return problems


SPEC = ControlSpec(
    name=NAME,
    build=FilesControl,
    item_fields={
        "mode": Field(str, _mode_check, doc='exact mode, octal string: "0600"'),
        "max_mode": Field(str, _mode_check, doc='"0644" = 0644 or stricter; heal clears the extra bits'),
        "owner": Field(str, _user_check, doc="user name, resolved on this host"),
        "group": Field(str, _group_check, doc="group name, resolved on this host"),
        "recursive": Field(bool, default=False, doc="also everything below (mode: regular files only)"),
        "required": Field(bool, default=False, doc="missing = drift (false: missing = absent)"),
        "type": Field(str, _type_check, default="any", doc='"file", "dir" or "any"; a mismatch is reported'),
    },
    item_key=_key_check,
    lint=lint,
    doc="mode and ownership of K3s's sensitive files, never through a symlink",
)
