"""The host's local accounts as the sshd lock-out guard needs them.

Read from /etc/passwd, /etc/group and /etc/shadow through the Host (so a
temporary root works in tests, and `--root` judges the tree it is given),
never through getpwall(3): NSS would mix in directory accounts the guard
cannot see the homes of, and would read the real host under a test root.

Every read is bounded and refuses links; /etc/shadow is read only when it is
root's and nobody else can write it (a shadow file another user could edit
tells nothing about who can log in). Not readable (not root): passwords are
"unknown", which the guard counts as set, and says so.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Iterable
from typing import Optional

from k3s_agent import hostfs
from k3s_agent.host import Host

PASSWD, GROUP, SHADOW = "/etc/passwd", "/etc/group", "/etc/shadow"
# 10k accounts make a ~700 KiB passwd; a bigger file is read this far and said to be cut.
MAX_BYTES = 8 << 20
# sshd runs a session with the user's shell; these end it at once or refuse it
# (shells of system accounts on Debian, RHEL, SUSE, Alpine). Any other shell,
# even one missing from /etc/shells, is a login shell: sshd itself only needs
# it to exist and be executable (auth.c allowed_user).
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "true", "sync", "halt", "shutdown"})
DEFAULT_SHELL = "/bin/sh"  # sshd: an empty shell field means _PATH_BSHELL

# Password states.
USABLE, LOCKED, EMPTY, UNKNOWN = "usable", "locked", "empty", "unknown"


@dataclasses.dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    password: str = UNKNOWN  # USABLE, LOCKED (! or * prefix, or no hash), EMPTY, UNKNOWN
    hash_prefix: str = ""  # the first character of the shadow hash ("!" locks keys too when UsePAM no)
    groups: frozenset[str] = frozenset()
    gids: frozenset[int] = frozenset()  # primary and supplementary: sshd reads key files with these
    expired: bool = False  # shadow(5) field 8 is today or earlier: PAM (pam_unix) and sshd refuse it


@dataclasses.dataclass(frozen=True)
class Accounts:
    by_name: dict[str, Account]
    notes: tuple[str, ...] = ()  # what could not be read, for the refusal text

    def get(self, name: str) -> Optional[Account]:
        return self.by_name.get(name)

    def all(self) -> list[Account]:
        return list(self.by_name.values())


def read_accounts(host: Host) -> Accounts:
    """Every account in /etc/passwd with its groups and shadow password state."""
    notes: list[str] = []
    passwd = _read_table(host, PASSWD, notes, root_only=False) or []
    groups = _read_table(host, GROUP, notes, root_only=False) or []
    shadow = _read_table(host, SHADOW, notes, root_only=True)
    members = _memberships(groups)
    gid_names = {_int(row[2]): row[0] for row in groups if len(row) > 2}
    name_gids = {row[0]: _int(row[2]) for row in groups if len(row) > 2}
    rows = None if shadow is None else {row[0]: row for row in shadow if len(row) > 1}
    hashes = None if rows is None else {name: row[1] for name, row in rows.items()}
    found: dict[str, Account] = {}
    for row in passwd:
        if len(row) < 7 or row[0] in found or _int(row[2]) < 0:
            continue
        name, field, uid, gid, home, shell = row[0], row[1], _int(row[2]), _int(row[3]), row[5], row[6]
        secret = _secret(field, hashes, name)
        primary = gid_names.get(gid)
        names = members.get(name, set()) | ({primary} if primary else set())
        found[name] = Account(
            name,
            uid,
            gid,
            home,
            shell or DEFAULT_SHELL,
            password_state(secret),
            (secret or "")[:1],
            frozenset(names),
            frozenset({gid} | {name_gids[g] for g in names if g in name_gids}),
            _expired((rows or {}).get(name)),
        )
    return Accounts(found, tuple(notes))


def password_state(secret: Optional[str]) -> str:
    """shadow(5): empty = no password; ! or * (or anything not a crypt hash) = locked."""
    if secret is None:
        return UNKNOWN
    if secret == "":
        return EMPTY
    if secret[0] in "!*" or len(secret) < 3:
        return LOCKED
    return USABLE


def login_shell(host: Host, account: Account) -> Optional[str]:
    """Why the account's shell gives no session, None when it does."""
    if os.path.basename(account.shell) in NO_LOGIN_SHELLS:
        return f"its shell is {account.shell}"
    try:
        st = host.stat(account.shell)
    except (OSError, ValueError):
        return f"its shell {account.shell} does not exist"
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return f"its shell {account.shell} is not executable"
    return None


def _read_table(host: Host, path: str, notes: list[str], root_only: bool) -> Optional[list[list[str]]]:
    try:
        data, st = host.read_no_links(path, MAX_BYTES)
    except FileNotFoundError:
        notes.append(f"no {path}")
        return None
    except (hostfs.Refused, OSError) as exc:
        notes.append(f"{path} not read ({exc})" if root_only else f"{path}: {exc}")
        return None
    if root_only and (st.st_uid != 0 or st.st_mode & 0o022):
        notes.append(f"{path} is not root's alone: not trusted")
        return None
    if st.st_size > MAX_BYTES:
        notes.append(f"{path} is larger than {MAX_BYTES} bytes: read only that far")
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [line.split(":") for line in lines if line and not line.startswith(("#", "+", "-"))]


def _secret(field: str, hashes: Optional[dict[str, str]], name: str) -> Optional[str]:
    """The password hash: in passwd itself, else in shadow ("x"); no shadow line = no password set."""
    if field not in ("x", "*x*"):
        return field
    if hashes is None:
        return None
    return hashes.get(name, "!")


def _expired(row: Optional[list[str]]) -> bool:
    """shadow(5) field 8, days since 1970; empty = never. pam_unix and sshd's
    auth_shadow_acctexpired both refuse the account once today >= that day (0 included)."""
    if row is None or len(row) < 8 or not row[7].strip():
        return False
    expire = _int(row[7].strip())
    return expire >= 0 and int(time.time() // 86400) >= expire


def _memberships(groups: Iterable[list[str]]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for row in groups:
        if len(row) > 3:
            for user in filter(None, row[3].split(",")):
                members.setdefault(user.strip(), set()).add(row[0])
    return members


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1
