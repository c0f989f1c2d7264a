"""The sshd lock-out guard: would these settings leave nobody a way in?

The settings-only fallback lint (when sshd cannot be asked) and the safe
reading of users' authorized_keys files that sshd_guard builds on: read as
root inside users' homes, so read the way sshd would use them and never
through a link a user made. Accounts come from sshd_accounts (through the
Host, not NSS).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import dataclasses
import fnmatch
import os
import stat
import time
from collections.abc import Mapping
from typing import Optional

from k3s_agent import hostfs
from k3s_agent.controls.sshd_accounts import Account, read_accounts
from k3s_agent.host import Host

# Links followed while resolving a key file's path (the kernel allows 40).
MAX_LINKS = 16
DEFAULT_KEY_FILES = ".ssh/authorized_keys .ssh/authorized_keys2"
# Bounds on what one account's key files cost us (sshd has no limit; we need one key).
MAX_KEY_FILES, MAX_KEYS, MAX_KEY_BYTES = 8, 1000, 1 << 20
# sshd(8) AUTHORIZED_KEYS FILE FORMAT (OpenSSH 9.2 auth-options.c): a line with
# any other option is skipped by sshd ("bad key options"), so it is no way in.
KEY_OPTIONS = frozenset(
    {
        "agent-forwarding", "cert-authority", "command", "environment", "expiry-time", "from",
        "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-x11-forwarding",
        "permitlisten", "permitopen", "port-forwarding", "principals", "pty", "no-touch-required",
        "verify-required", "restrict", "tunnel", "user-rc", "x11-forwarding",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AuthorizedKey:
    """One usable line of an authorized_keys file."""

    keytype: str  # ssh-ed25519, ssh-rsa, sk-ssh-ed25519@openssh.com, ...
    options: Mapping[str, str]  # from, command, cert-authority, ... (flags map to "")
    bits: int = 0  # RSA modulus size (sshd refuses keys under RequiredRSASize)
    blob: str = ""  # the base64 key, to tell keys apart (AuthenticationMethods publickey,publickey)


def lockouts(settings: Mapping[str, str], host: Host) -> list[str]:
    """Ways the policy's own settings would leave no way in (sshd defaults where a key is unset).

    The fallback when sshd cannot be asked (not installed where the policy is
    checked); where it can, sshd_guard judges the effective per-connection
    configuration instead.
    """
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
        accounts = read_accounts(host).all()
        if not any(_can_log_in(user, settings, host, need_key) for user in accounts):
            what = "an authorized key" if need_key else "a usable account"
            users, groups = settings.get("allowusers", "-"), settings.get("allowgroups", "-")
            found.append(
                f"AllowUsers/AllowGroups admit no existing account with {what} "
                f"(AllowUsers {users}, AllowGroups {groups})"
            )
    return found


def _can_log_in(user: Account, settings: Mapping[str, str], host: Host, need_key: bool) -> bool:
    if user.uid == 0 and settings.get("permitrootlogin") in ("no", "forced-commands-only"):
        return False
    allowed = settings.get("allowusers")
    if allowed is not None and not any(_user_matches(user.name, p) for p in allowed.split()):
        return False
    groups = settings.get("allowgroups")
    if groups is not None and not (set(groups.split()) & user.groups):
        return False
    return not need_key or _has_authorized_key(user, settings, host)


def _user_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern.split("@", 1)[0])


def _has_authorized_key(user: Account, settings: Mapping[str, str], host: Host) -> bool:
    files = settings.get("authorizedkeysfile", DEFAULT_KEY_FILES).split()
    return bool(authorized_keys(host, user, files, settings.get("strictmodes", "yes") != "no"))


def key_file_paths(user: Account, files: list[str]) -> list[str]:
    """AuthorizedKeysFile entries for one user: `none` is no file; %h, %u, %U, %% expanded;
    relative paths are under the home (sshd_config(5) TOKENS)."""
    paths = []
    for spec in files:
        if spec.lower() == "none":
            continue
        path = (
            spec.replace("%%", "\0")
            .replace("%h", user.home)
            .replace("%u", user.name)
            .replace("%U", str(user.uid))
            .replace("\0", "%")
        )
        paths.append(os.path.normpath(path if path.startswith("/") else os.path.join(user.home, path)))
    return paths


def authorized_keys(host: Host, user: Account, files: list[str], strict: bool) -> list[AuthorizedKey]:
    """The keys sshd would take from the user's key files (bounded, never through a user's link)."""
    found: list[AuthorizedKey] = []
    for path in key_file_paths(user, files)[:MAX_KEY_FILES]:
        for line in _key_file(host, path, user, strict).splitlines()[:MAX_KEYS]:
            key = parse_key_line(line)
            if key is not None:
                found.append(key)
    return found


def parse_key_line(line: str) -> Optional[AuthorizedKey]:
    """sshd(8) AUTHORIZED_KEYS FILE FORMAT: [options] keytype base64 [comment]."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    words = _split_outside_quotes(text, " \t")
    if len(words) >= 2 and _is_keytype(words[0]):
        return _key(words[0], words[1], {})
    if len(words) >= 3 and _is_keytype(words[1]):
        options = _options(words[0])
        if not set(options) <= KEY_OPTIONS:
            return None  # sshd skips the whole line
        return _key(words[1], words[2], options)
    return None


def _key(keytype: str, encoded: str, options: dict[str, str]) -> Optional[AuthorizedKey]:
    """The key if its base64 blob is one sshd can load: a truncated or mangled
    paste (a line broken in two, a key of another type) is skipped by sshd too."""
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    fields = _ssh_strings(blob)
    if not fields or fields[0] != keytype.encode():
        return None
    if "-cert-" not in keytype and sum(4 + len(f) for f in fields) != len(blob):
        return None  # a plain key is only length-prefixed fields (RFC 4253 6.6); certs have more
    bits = int.from_bytes(fields[2], "big").bit_length() if keytype == "ssh-rsa" and len(fields) > 2 else 0
    return AuthorizedKey(keytype, options, bits, encoded)


def _ssh_strings(blob: bytes) -> list[bytes]:
    """The length-prefixed fields at the start of a key blob (stops at the first that overruns)."""
    fields, at = [], 0
    while at + 4 <= len(blob):
        size = int.from_bytes(blob[at : at + 4], "big")
        if at + 4 + size > len(blob):
            break
        fields.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return fields


def expired(key: AuthorizedKey, now: Optional[float] = None) -> bool:
    """expiry-time="YYYYMMDD[HHMM[SS]][Z]" in the past (local time unless Z): sshd refuses the key.
    A value sshd cannot parse makes it skip the line: counted as expired."""
    value = key.options.get("expiry-time")
    if value is None:
        return False
    utc = value.upper().endswith("Z")
    digits = value[:-1] if utc else value
    if not digits.isdigit() or len(digits) not in (8, 12, 14):
        return True
    digits = digits.ljust(14, "0")
    try:
        parsed = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return True
    deadline = calendar.timegm(parsed) if utc else time.mktime(parsed)
    return (time.time() if now is None else now) >= deadline


def _is_keytype(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-")) or word.endswith("@openssh.com")


def _options(text: str) -> dict[str, str]:
    found = {}
    for part in _split_outside_quotes(text, ","):
        name, _, value = part.partition("=")
        found[name.strip().lower()] = value.strip().strip('"')
    return found


def _split_outside_quotes(text: str, separators: str) -> list[str]:
    words, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch in separators and not quoted:
            if current:
                words.append(current)
            current = ""
        else:
            current += ch
    if current:
        words.append(current)
    return words


def _key_file(host: Host, path: str, user: Account, strict: bool) -> str:
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
    home = trusted_path(host, user.home) if user.home.startswith("/") else None
    if real is None or home is None:
        return ""
    try:
        # no link left on the way: one swapped in now is refused
        data, st = host.read_no_links(real, MAX_KEY_BYTES)
        trusted = not strict or all(_secure(s, user) for s in (st, *_dirs_up_to(host, real, home)))
        trusted = trusted and readable_by(host, real, st, user)
    except (hostfs.Refused, OSError):
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
            st = host.lstat(candidate)
            if not stat.S_ISLNK(st.st_mode):
                resolved = candidate
                continue
            links += 1
            if links > MAX_LINKS or st.st_uid != 0 or not _root_only(host, resolved):
                return None
            target = host.readlink(candidate)
        except OSError:
            return None
        resolved = "/" if target.startswith("/") else resolved
        parts = [p for p in target.split("/") if p] + parts
    return resolved


def _root_only(host: Host, folder: str) -> bool:
    st = host.lstat(folder)
    return st.st_uid == 0 and not st.st_mode & 0o022


def readable_by(host: Host, path: str, st: os.stat_result, user: Account) -> bool:
    """sshd opens key files as the user (auth2-pubkey.c temporarily_use_uid): a file
    or a directory on its way the user cannot read or search is no key. Mode bits
    only (an ACL that grants more is not seen: refusing then is the safe error)."""
    if user.uid == 0:
        return True
    if not _may(st, user, 0o4):
        return False
    folder = os.path.dirname(path)
    while folder != "/":  # "/" itself is searchable by all (and under --root is the tree's own dir)
        if not _may(host.lstat(folder), user, 0o1):
            return False
        folder = os.path.dirname(folder)
    return True


def _may(st: os.stat_result, user: Account, bit: int) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in user.gids or st.st_gid == user.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _secure(st: os.stat_result, user: Account) -> bool:
    return st.st_uid in (0, user.uid) and not st.st_mode & 0o022


def _dirs_up_to(host: Host, path: str, home: str) -> list[os.stat_result]:
    """The directories from path's up to home (or to / for a path outside it)."""
    found = []
    folder = os.path.dirname(path)
    while True:
        found.append(host.lstat(folder))
        if folder in (home, "/"):
            return found
        folder = os.path.dirname(folder)
