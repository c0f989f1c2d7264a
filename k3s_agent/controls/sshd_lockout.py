"""The sshd lock-out guard: would these settings leave nobody a way in?

A policy lint (docs/sshd.md, "Lock-out guard"). It looks at the accounts of
this host (getpwall/getgrall) and, when only keys can log in, at their
authorized_keys files, which it reads as root inside users' homes: so it
reads them the way sshd would use them and never through a link a user made.
"""

from __future__ import annotations

import contextlib
import fnmatch
import grp
import os
import pwd
import stat
from collections.abc import Mapping
from typing import Optional

from k3s_agent.controls import fsafe
from k3s_agent.host import Host

# Links followed while resolving a key file's path (the kernel allows 40).
MAX_LINKS = 16


def lockouts(settings: Mapping[str, str], host: Host) -> list[str]:
    """Ways the settings would leave no way in (sshd defaults where a key is unset)."""
    pubkey = settings.get("pubkeyauthentication", "yes") != "no"
    password = settings.get("passwordauthentication", "yes") != "no"
    keyboard = settings.get("kbdinteractiveauthentication") == "yes"
    found = []
    if not (pubkey or password or keyboard):
        found.append(
            "PubkeyAuthentication no with PasswordAuthentication no (and no KbdInteractiveAuthentication"
            " yes) leaves no way to log in"
        )
    if "allowusers" in settings or "allowgroups" in settings:
        need_key = not (password or keyboard)
        if not any(_can_log_in(user, settings, host, need_key) for user in pwd.getpwall()):
            what = "an authorized key" if need_key else "a usable account"
            users, groups = settings.get("allowusers", "-"), settings.get("allowgroups", "-")
            found.append(
                f"AllowUsers/AllowGroups admit no existing account with {what} "
                f"(AllowUsers {users}, AllowGroups {groups})"
            )
    return found


def _can_log_in(user: pwd.struct_passwd, settings: Mapping[str, str], host: Host, need_key: bool) -> bool:
    if user.pw_uid == 0 and settings.get("permitrootlogin") in ("no", "forced-commands-only"):
        return False
    allowed = settings.get("allowusers")
    if allowed is not None and not any(_user_matches(user.pw_name, p) for p in allowed.split()):
        return False
    groups = settings.get("allowgroups")
    if groups is not None and not (set(groups.split()) & _groups_of(user)):
        return False
    return not need_key or _has_authorized_key(user, settings, host)


def _user_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern.split("@", 1)[0])


def _groups_of(user: pwd.struct_passwd) -> set[str]:
    names = {g.gr_name for g in grp.getgrall() if user.pw_name in g.gr_mem}
    with contextlib.suppress(KeyError):
        names.add(grp.getgrgid(user.pw_gid).gr_name)
    return names


def _has_authorized_key(user: pwd.struct_passwd, settings: Mapping[str, str], host: Host) -> bool:
    files = settings.get("authorizedkeysfile", ".ssh/authorized_keys .ssh/authorized_keys2").split()
    strict = settings.get("strictmodes", "yes") != "no"
    for spec in files:
        path = spec.replace("%h", user.pw_dir).replace("%u", user.pw_name).replace("%%", "%")
        if not path.startswith("/"):
            path = os.path.join(user.pw_dir, path)
        text = _key_file(host, os.path.normpath(path), user, strict)
        if any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
            return True
    return False


def _key_file(host: Host, path: str, user: pwd.struct_passwd, strict: bool) -> str:
    """An authorized_keys file as sshd would use it, else "".

    Read as root, in a user's home, so never through a link the user could
    have made (a user's ~/.ssh -> /root/.ssh must not pass root's keys off as
    theirs, nor tell them whether root has any); links only root could have
    made are followed (Fedora CoreOS's /home -> var/home). Under StrictModes,
    only when sshd would accept it: the file and its directories up to the
    home owned by root or the user, not group/world-writable (sshd's
    auth_secure_path).
    """
    real = trusted_path(host, path) if path.startswith("/") else None
    home = trusted_path(host, user.pw_dir) if user.pw_dir.startswith("/") else None
    if real is None or home is None:
        return ""
    try:
        data, st = fsafe.read_file(host, real)  # no link left on the way: one swapped in now is refused
        trusted = not strict or all(_secure(s, user) for s in (st, *_dirs_up_to(host, real, home)))
    except (fsafe.Refused, OSError):
        return ""
    return data.decode("utf-8", errors="replace") if trusted else ""


def trusted_path(host: Host, path: str) -> Optional[str]:
    """path with its symlinks resolved, if only root could have made each of them:
    the link owned by root, in a root-owned directory nobody else can write.
    None for any other link, too many links, or a missing component."""
    resolved, parts, links = "/", [p for p in path.split("/") if p], 0
    while parts:
        part = parts.pop(0)
        if part in (".", ".."):
            resolved = os.path.dirname(resolved) if part == ".." else resolved
            continue
        candidate = os.path.join(resolved, part)
        try:
            st = os.stat(host.path(candidate), follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                resolved = candidate
                continue
            links += 1
            if links > MAX_LINKS or st.st_uid != 0 or not _root_only(host, resolved):
                return None
            target = os.readlink(host.path(candidate))
        except OSError:
            return None
        resolved = "/" if target.startswith("/") else resolved
        parts = [p for p in target.split("/") if p] + parts
    return resolved


def _root_only(host: Host, folder: str) -> bool:
    st = os.stat(host.path(folder), follow_symlinks=False)
    return st.st_uid == 0 and not st.st_mode & 0o022


def _secure(st: os.stat_result, user: pwd.struct_passwd) -> bool:
    return st.st_uid in (0, user.pw_uid) and not st.st_mode & 0o022


def _dirs_up_to(host: Host, path: str, home: str) -> list[os.stat_result]:
    """The directories from path's up to home (or to / for a path outside it)."""
    found = []
    folder = os.path.dirname(path)
    while True:
        found.append(os.stat(host.path(folder), follow_symlinks=False))
        if folder in (home, "/"):
            return found
        folder = os.path.dirname(folder)
