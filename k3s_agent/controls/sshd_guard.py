"""The sshd lock-out guard on the effective per-connection configuration.

For each operator account and each management network, sshd itself is asked
what it would do for that connection (`sshd -T -C user=U,host=A,addr=A` over
the candidate config: Match blocks applied, Includes read, defaults filled
in), and the answer is judged with sshd's own rules (auth.c allowed_user,
auth2.c, sshd_config(5)). The candidate passes when at least one operator
can still log in, with a shell, from every management network. The rules
table is in docs/sshd.md ("Lock-out guard").

This module decides; it runs nothing: the caller passes `ask` (one sshd -T
-C call) and `where` (which file:line set a keyword), so the rules can be
tested against the real sshd and the wording of a refusal stays in one place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from typing import Callable, Optional, Union

from k3s_agent import hostfs
from k3s_agent.controls.sshd_accounts import EMPTY, UNKNOWN, USABLE, Account, Accounts, login_shell
from k3s_agent.controls.sshd_lockout import (
    AuthorizedKey,
    authorized_keys,
    expired,
    key_file_paths,
    trusted_path,
)
from k3s_agent.host import Host

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Effective = Mapping[str, list[str]]  # parse_effective() of one `sshd -T -C` answer
Ask = Callable[[str, str], Effective]  # (user, address) -> effective config; raises GuardError
Where = Callable[[str, str], str]  # (keyword, effective value) -> "Keyword value (file:line)"

ANYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
# "Anywhere" is probed from documentation addresses (RFC 5737, RFC 3849): an
# address no Match block names on purpose, unlike 0.0.0.1 or ::1 (loopback).
_ANY_PROBE = {4: "192.0.2.10", 6: "2001:db8::10"}
# At most this many accounts are asked about (2 sshd calls each with the
# default networks, ~15 ms a call): operators first, then login accounts.
MAX_ACCOUNTS = 20
# ForceCommand (or a key's command="...") that gives no shell: the account
# authenticates and is thrown out at once, or gets file transfer only.
NO_SHELL_COMMANDS = frozenset(
    {"false", "true", "nologin", "sftp-server", "internal-sftp", "exit", "logout", "sync"}
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@$-]*")
RSA_CERT_ALGORITHMS = frozenset(
    {
        "ssh-rsa-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
        "rsa-sha2-512-cert-v01@openssh.com",
    }
)
_KEYWORDS = {
    "addressfamily": "AddressFamily",
    "listenaddress": "ListenAddress",
    "allowusers": "AllowUsers",
    "denyusers": "DenyUsers",
    "allowgroups": "AllowGroups",
    "denygroups": "DenyGroups",
    "permitrootlogin": "PermitRootLogin",
    "maxsessions": "MaxSessions",
    "forcecommand": "ForceCommand",
    "pubkeyauthentication": "PubkeyAuthentication",
    "passwordauthentication": "PasswordAuthentication",
    "kbdinteractiveauthentication": "KbdInteractiveAuthentication",
    "authorizedkeysfile": "AuthorizedKeysFile",
    "pubkeyacceptedalgorithms": "PubkeyAcceptedAlgorithms",
    "authenticationmethods": "AuthenticationMethods",
    "usepam": "UsePAM",
    "permitemptypasswords": "PermitEmptyPasswords",
    "maxauthtries": "MaxAuthTries",
    "chrootdirectory": "ChrootDirectory",
    "requiredrsasize": "RequiredRSASize",
    "hostkeyalgorithms": "HostKeyAlgorithms",
}


class GuardError(Exception):
    """sshd could not be asked (it refused the candidate, or did not answer)."""


def keyword_name(keyword: str) -> str:
    return _KEYWORDS.get(keyword, keyword)


def probe_address(network: Network) -> str:
    """One address inside the network, not its network address (which names no host)."""
    if network.prefixlen == 0:
        return _ANY_PROBE[network.version]
    if network.num_addresses <= 2:
        return str(network.network_address + (network.num_addresses - 1))
    return str(network.network_address + 1)


# Networks named in Match Address, AllowUsers/DenyUsers user@host: at most this many split
# a management network into parts probed one by one (and at most MAX_PARTS of those).
MAX_BOUNDARIES, MAX_PARTS = 32, 16


def probe_addresses(network: Network, boundaries: Sequence[Network] = ()) -> list[str]:
    """One address per part of the network that the config's address patterns tell apart.

    `Match Address 10.20.128.0/17` inside management 10.20.0.0/16 shuts out half
    of it: probing only 10.20.0.1 would not see that. "Anywhere" (/0) stays one
    documentation address: it means "from some address", not from every one.
    """
    first = probe_address(network)
    if network.prefixlen == 0:
        return [first]
    inside = [
        b
        for b in boundaries
        if b.version == network.version and b.overlaps(network) and not network.subnet_of(b)
    ][:MAX_BOUNDARIES]
    pieces = [network]
    for boundary in inside:
        pieces = [part for piece in pieces for part in _split(piece, boundary)]
    chosen: dict[tuple[bool, ...], str] = {}
    pieces.sort(key=lambda piece: (piece.prefixlen, piece.network_address))  # big parts first: real hosts
    for address in [first, *(probe_address(piece) for piece in pieces)]:
        signature = tuple(ipaddress.ip_address(address) in b for b in inside)
        chosen.setdefault(signature, address)
    return list(chosen.values())[:MAX_PARTS]


def _split(piece: Network, boundary: Network) -> list[Network]:
    if not piece.overlaps(boundary) or piece.subnet_of(boundary):  # type: ignore[arg-type]
        return [piece]
    return [*piece.address_exclude(boundary), boundary]  # type: ignore[arg-type]


def address_boundaries(match_criteria: Sequence[str], user_patterns: Sequence[str]) -> list[Network]:
    """The networks and addresses named by `Match ... Address <list>` lines and by the
    host part of AllowUsers/DenyUsers `user@host` patterns (names and wildcards are skipped)."""
    lists = []
    for criteria in match_criteria:
        words = criteria.split()
        lists += [words[i + 1] for i, w in enumerate(words[:-1]) if w.lower() == "address"]
    lists += [p.partition("@")[2] for p in user_patterns if "@" in p]
    found = []
    for entry in (e.lstrip("!") for text in lists for e in text.split(",")):
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return found


@dataclasses.dataclass
class Probe:
    """Everything the rules need for one account from one address."""

    account: Account
    address: str
    effective: Effective
    keys: Callable[[list[str], bool], list[AuthorizedKey]]
    host: Host

    def one(self, keyword: str, default: str = "") -> str:
        values = self.effective.get(keyword)
        return values[0] if values else default

    def all(self, keyword: str) -> list[str]:
        return [word for line in self.effective.get(keyword, []) for word in line.split()]


# -- the rules: each returns why the account cannot log in from this address, or None ----


def _reachable(p: Probe, where: Where) -> Optional[str]:
    version = ipaddress.ip_address(p.address).version
    family = p.one("addressfamily", "any")
    if family in ("inet", "inet6") and family != ("inet" if version == 4 else "inet6"):
        return f"{where('addressfamily', family)}: sshd does not listen on IPv{version}"
    listening = [_listen_host(a) for a in p.all("listenaddress")]
    same = [a for a in listening if a is not None and a.version == version]
    if listening and not any(not a.is_loopback for a in same):
        shown = " ".join(p.all("listenaddress"))
        return f"{where('listenaddress', shown)}: nothing an IPv{version} management address can reach"
    return None


def _listen_host(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 or text.startswith("[") else text
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _user_lists(p: Probe, where: Where) -> Optional[str]:
    """auth.c allowed_user: DenyUsers, AllowUsers, DenyGroups, AllowGroups, in that order."""
    name, groups = p.account.name, p.account.groups
    for pattern in p.all("denyusers"):
        if user_pattern_matches(pattern, name, p.address):
            return f"{where('denyusers', pattern)} denies {name}"
    allowed = p.all("allowusers")
    if allowed and not any(user_pattern_matches(pat, name, p.address) for pat in allowed):
        return f"{where('allowusers', ' '.join(allowed))} does not admit {name} from {p.address}"
    for pattern in p.all("denygroups"):
        if any(fnmatch.fnmatchcase(g, pattern) for g in groups):
            return f"{where('denygroups', pattern)} denies a group of {name}"
    allowed = p.all("allowgroups")
    if allowed and not any(fnmatch.fnmatchcase(g, pat) for g in groups for pat in allowed):
        return f"{where('allowgroups', ' '.join(allowed))} admits no group of {name}"
    return None


def user_pattern_matches(pattern: str, user: str, address: str) -> bool:
    """sshd's match_user: USER or USER@HOST, HOST a pattern list of names, addresses or CIDRs."""
    wanted, at, hosts = pattern.partition("@")
    if not fnmatch.fnmatchcase(user, wanted):
        return False
    return not at or host_list_matches(hosts, address)


def host_list_matches(patterns: str, address: str) -> bool:
    """A comma-separated pattern list (match.c): a negated match wins, else any match."""
    matched = False
    for raw in filter(None, patterns.split(",")):
        negated, pattern = raw.startswith("!"), raw.lstrip("!")
        if _host_matches(pattern, address):
            if negated:
                return False
            matched = True
    return matched


def _host_matches(pattern: str, address: str) -> bool:
    if "/" in pattern:
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    return fnmatch.fnmatchcase(address.lower(), pattern.lower())


def _root(p: Probe, where: Where) -> Optional[str]:
    if p.account.uid != 0:
        return None
    permit = p.one("permitrootlogin", "prohibit-password")
    if permit in ("no", "forced-commands-only"):
        return f"{where('permitrootlogin', permit)} shuts root out"
    return None


def _sessions(p: Probe, where: Where) -> Optional[str]:
    if p.one("maxsessions", "10") == "0":
        return f"{where('maxsessions', '0')} allows no session"
    # auth2.c userauth_finish: failures >= max_authtries disconnects, checked after the
    # client's first "none" request too, so 0 ends every connection before a key is tried
    # (OpenSSH 9.2, tried: "Received disconnect ...: Too many authentication failures").
    if p.one("maxauthtries", "6") == "0":
        return f"{where('maxauthtries', '0')} disconnects before the first method"
    return None


def _account_expired(p: Probe, where: Where) -> Optional[str]:
    if p.account.expired:
        return "its account has expired (/etc/shadow field 8): PAM and sshd refuse it, keys too"
    return None


def _chroot(p: Probe, where: Where) -> Optional[str]:
    """session.c safely_chroot: every component root-owned, not group/world-writable; then
    the account's shell runs inside it, so it must exist there."""
    spec = p.one("chrootdirectory", "none")
    if spec.lower() == "none":
        return None
    shown = where("chrootdirectory", spec)
    folder = key_file_paths(p.account, [spec])[0] if spec.startswith(("/", "%h")) else None
    real = trusted_path(p.host, folder) if folder else None
    if real is None:
        return f"{shown}: not an absolute directory that exists (the session fails)"
    path = real
    while True:
        try:
            st = p.host.lstat(path)
        except OSError:
            return f"{shown}: {path} cannot be read"
        if st.st_uid != 0 or st.st_mode & 0o022 or not p.host.is_dir(path, follow=True):
            return f"{shown}: {path} is not a root-owned directory only root can write (the session fails)"
        if path == "/":
            break
        path = os.path.dirname(path)
    shell = os.path.join(real, p.account.shell.lstrip("/"))
    if not p.host.is_file(shell):
        return f"{shown}: no {p.account.shell} inside it to run as the shell"
    return None


def _forced(p: Probe, where: Where) -> Optional[str]:
    command = p.one("forcecommand", "none")
    if command != "none" and forbids_shell(command):
        return f"{where('forcecommand', command)} gives no shell"
    return None


def forbids_shell(command: str) -> bool:
    """A forced command that ends the session or gives file transfer only (docs/sshd.md table)."""
    words = command.split()
    return bool(words) and os.path.basename(words[0]) in NO_SHELL_COMMANDS


def _locked(p: Probe, where: Where) -> Optional[str]:
    # auth.c allowed_user(): `if (!options.use_pam && platform_locked_account(pw))` refuses the
    # account, keys too; configure.ac sets LOCKED_PASSWD_PREFIX "!" on Linux. With PAM, a locked
    # password only stops password login (arlimus.github.io, "SSH and locked users").
    if p.one("usepam", "no") == "no" and p.account.hash_prefix == "!":
        return f"its password is locked (!) and {where('usepam', 'no')}: sshd refuses the account"
    return None


def _host_keys(p: Probe, where: Where) -> Optional[str]:
    """HostKeyAlgorithms that offers none of sshd's host keys: key exchange fails for every
    client ("No supported key exchange algorithms"), while sshd -t passes. Types come from
    each HostKey's .pub file; none readable (or a HostKeyAgent) = not judged."""
    if p.one("hostkeyagent", "none").lower() != "none":
        return None
    types = {t for t in (_host_key_type(p.host, path) for path in p.all("hostkey")) if t}
    offered = set(p.one("hostkeyalgorithms").split(","))
    if not types or not offered - {""} or any(_signs_with(t) & offered for t in types):
        return None
    shown = where("hostkeyalgorithms", p.one("hostkeyalgorithms"))
    return f"{shown} offers none of the host keys ({' '.join(sorted(types))}): no client can connect"


def _host_key_type(host: Host, path: str) -> Optional[str]:
    root = host.root.rstrip("/")
    path = path[len(root) :] if root and path.startswith(root + "/") else path  # --root configs
    try:
        data, _ = host.read_no_links(path + ".pub", 64 << 10)
    except (hostfs.Refused, OSError, ValueError):
        return None
    words = data.decode("utf-8", errors="replace").split()
    return words[0] if words else None


def _signs_with(keytype: str) -> set[str]:
    return {"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"} if keytype == "ssh-rsa" else {keytype}


RULES = (_reachable, _host_keys, _user_lists, _root, _sessions, _forced, _locked, _account_expired, _chroot)


# -- methods --------------------------------------------------------------------------------------


def _methods(p: Probe, where: Where) -> tuple[set[str], list[str]]:
    """(usable methods, why each other one is not)."""
    usable, why = set(), []
    for method, judge in (
        ("publickey", _publickey),
        ("password", _password),
        ("keyboard-interactive", _keyboard),
    ):
        reason = judge(p, where)
        if reason is None:
            usable.add(method)
        else:
            why.append(f"{method}: {reason}")
    return usable, why


UNSEEN = 1 << 16  # keys from AuthorizedKeysCommand or certificates: we cannot count them


def _publickey(p: Probe, where: Where) -> Optional[str]:
    reason, _ = _public_keys(p, where)
    return reason


def _public_keys(p: Probe, where: Where) -> tuple[Optional[str], int]:
    """(why publickey is not usable or None, how many distinct keys are)."""
    if p.one("pubkeyauthentication", "yes") == "no":
        return where("pubkeyauthentication", "no"), 0
    if p.one("authorizedkeyscommand", "none") != "none" or p.one("trustedusercakeys", "none") != "none":
        return None, UNSEEN  # keys from a command or certificates: a way in we cannot see, so counted
    files = p.all("authorizedkeysfile")
    if not files or [f.lower() for f in files] == ["none"]:
        return where("authorizedkeysfile", "none"), 0
    keys = p.keys(files, p.one("strictmodes", "yes") != "no")
    if not keys:
        return f"no authorized key in {' '.join(files)} (as sshd would read it)", 0
    algorithms = p.one("pubkeyacceptedalgorithms")
    accepted = set(algorithms.split(","))
    usable = [k for k in keys if _accepted(k, accepted)]
    if not usable:
        types = " ".join(sorted({k.keytype for k in keys}))
        return f"key types {types} not in {where('pubkeyacceptedalgorithms', algorithms)}", 0
    # sshd-auth: RSA keys shorter than RequiredRSASize are refused (OpenSSH 9.1+, default 1024)
    minimum = int(p.one("requiredrsasize", "0") or 0)
    sized = [k for k in usable if k.keytype != "ssh-rsa" or not k.bits or k.bits >= minimum]
    if not sized:
        bits = " ".join(sorted({str(k.bits) for k in usable}))
        return f"RSA keys of {bits} bits are under {where('requiredrsasize', str(minimum))}", 0
    fresh = [k for k in sized if not expired(k)]
    if not fresh:
        return "every key has expired (expiry-time=)", 0
    usable = [k for k in fresh if _key_usable_from(k, p.address)]
    if not usable:
        return f"every key is restricted (from=/command=) away from {p.address} or from a shell", 0
    return None, len({k.blob or id(k) for k in usable})


def _accepted(key: AuthorizedKey, accepted: set[str]) -> bool:
    """sshd -T lists signature algorithms: an RSA key signs with rsa-sha2-256/512 (or ssh-rsa)."""
    if "cert-authority" in key.options:
        return any(a.endswith("-cert-v01@openssh.com") for a in accepted)
    if key.keytype == "ssh-rsa":
        return bool(accepted & {"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"})
    if key.keytype == "ssh-rsa-cert-v01@openssh.com":
        return bool(accepted & RSA_CERT_ALGORITHMS)
    return key.keytype in accepted


def _key_usable_from(key: AuthorizedKey, address: str) -> bool:
    allowed = key.options.get("from")
    if allowed is not None and not host_list_matches(allowed, address):
        return False
    command = key.options.get("command")
    return command is None or not forbids_shell(command)


def _password(p: Probe, where: Where) -> Optional[str]:
    if p.one("passwordauthentication", "yes") == "no":
        return where("passwordauthentication", "no")
    if p.account.uid == 0 and p.one("permitrootlogin") in ("prohibit-password", "without-password"):
        return where("permitrootlogin", p.one("permitrootlogin"))
    return _secret(p, where)


def _keyboard(p: Probe, where: Where) -> Optional[str]:
    if p.one("kbdinteractiveauthentication", "yes") == "no":
        return where("kbdinteractiveauthentication", "no")
    if p.one("usepam", "no") == "no":
        return f"{where('usepam', 'no')} (keyboard-interactive needs PAM on Linux)"
    if p.account.uid == 0 and p.one("permitrootlogin") in ("prohibit-password", "without-password"):
        return where("permitrootlogin", p.one("permitrootlogin"))
    return _secret(p, where)


def _secret(p: Probe, where: Where) -> Optional[str]:
    state = p.account.password
    if state in (USABLE, UNKNOWN):
        return None
    if state == EMPTY:
        if p.one("permitemptypasswords", "no") == "yes":
            return None
        return f"its password is empty and {where('permitemptypasswords', 'no')}"
    return "its password is locked"


def _authenticates(p: Probe, where: Where) -> Optional[str]:
    usable, why = _methods(p, where)
    lists = p.one("authenticationmethods", "any")
    if lists == "any":
        return None if usable else "no usable method (" + "; ".join(why) + ")"
    keys = _public_keys(p, where)[1] if "publickey" in usable else 0
    for alternative in lists.split():
        steps = alternative.split(",")
        # publickey twice needs two different keys (auth2-pubkey.c: a key already used is refused)
        if all(_step_usable(step, usable) for step in steps) and steps.count("publickey") <= keys:
            return None
    if keys and any(a.split(",").count("publickey") > keys for a in lists.split()):
        why.append(f"publickey: {keys} distinct key(s), fewer than a list asks for")
    return f"{where('authenticationmethods', lists)} needs methods it lacks (" + "; ".join(why) + ")"


def _step_usable(step: str, usable: set[str]) -> bool:
    """One step of an AuthenticationMethods list. Only keyboard-interactive takes a
    submethod, and OpenSSH on Linux has one device: pam (auth2-chall.c devices[])."""
    method, _, sub = step.partition(":")
    if sub and (method, sub) != ("keyboard-interactive", "pam"):
        return False
    return method in usable


# -- the verdict -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str  # the refusal ("" when ok)
    probed: int  # sshd -T -C calls made


def judge(probe: Probe, where: Where) -> Optional[str]:
    """Why the account cannot get a shell over this connection, None when it can."""
    for rule in (*RULES, _authenticates):
        reason = rule(probe, where)
        if reason is not None:
            return reason
    return None


def guard(
    host: Host,
    accounts: Accounts,
    operators: Sequence[str],
    networks: Sequence[Network],
    ask: Ask,
    where: Where,
    boundaries: Sequence[Network] = (),
) -> Verdict:
    """Can at least one operator still log in from every management network (each part of it
    the config's address patterns tell apart)?"""
    chosen, total = candidates(host, accounts, operators)
    addresses = [(net, a) for net in networks for a in probe_addresses(net, boundaries)]
    locked_out: dict[str, list[str]] = {}  # reason -> accounts, so 20 alike read as one line
    calls = 0
    for account, reason in chosen:
        if reason is None:
            reason, used = _from_everywhere(host, account, addresses, ask, where)
            calls += used
            if reason is None:
                return Verdict(True, "", calls)
        locked_out.setdefault(reason, []).append(account.name)
    lines = [f"{_names(names)}: {reason}" for reason, names in locked_out.items()]
    return Verdict(False, _refusal(operators, chosen, total, addresses, lines, accounts), calls)


def _names(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _from_everywhere(
    host: Host, account: Account, addresses: Sequence[tuple[Network, str]], ask: Ask, where: Where
) -> tuple[Optional[str], int]:
    cache: dict[tuple[tuple[str, ...], bool], list[AuthorizedKey]] = {}

    def keys(files: list[str], strict: bool) -> list[AuthorizedKey]:
        if (tuple(files), strict) not in cache:
            cache[(tuple(files), strict)] = authorized_keys(host, account, files, strict)
        return cache[(tuple(files), strict)]

    for used, (network, address) in enumerate(addresses, 1):
        reason = judge(Probe(account, address, ask(account.name, address), keys, host), where)
        if reason is not None:
            return f"from {network} (probed as {address}): {reason}", used
    return None, len(addresses)


def candidates(
    host: Host, accounts: Accounts, operators: Sequence[str]
) -> tuple[list[tuple[Account, Optional[str]]], int]:
    """The accounts to probe, each with a reason known without sshd (or None), and how many there were.

    With `operators` set, only they count: a service account with a
    password is not the people who run the node. Without, every account with
    a login shell does: people first (uid >= 1000), then root, then the rest.
    """
    if operators:
        chosen = []
        for name in operators[:MAX_ACCOUNTS]:
            account = accounts.get(name)
            if account is None:
                chosen.append((Account(name, -1, -1, "/nonexistent", ""), "not in /etc/passwd"))
            else:
                chosen.append((account, login_shell(host, account)))
        return chosen, len(operators)
    # A name sshd -C cannot take (a comma or = would split the spec) is not asked about.
    logins = [a for a in accounts.all() if _SAFE_NAME.fullmatch(a.name) and login_shell(host, a) is None]
    logins.sort(key=lambda a: (0 if a.uid >= 1000 else 1 if a.uid == 0 else 2, a.uid, a.name))
    return [(a, None) for a in logins[:MAX_ACCOUNTS]], len(logins)


def _refusal(
    operators: Sequence[str],
    chosen: list[tuple[Account, Optional[str]]],
    total: int,
    addresses: Sequence[tuple[Network, str]],
    locked_out: list[str],
    accounts: Accounts,
) -> str:
    nets = ", ".join(dict.fromkeys(str(net) for net, _ in addresses))
    who = "no operator (operators = [...])" if operators else "no account with a login shell"
    if not chosen:
        text = f"lock-out: {who} exists to log in from {nets}"
    else:
        text = f"lock-out: {who} could still log in from every management network ({nets}): " + "; ".join(
            locked_out
        )
    if total > len(chosen):
        text += (
            f" [only the first {len(chosen)} of {total} accounts were probed: name the ones that matter"
            " in operators = [...]]"
        )
    if accounts.notes:
        text += " [" + "; ".join(accounts.notes) + "]"
    return text
