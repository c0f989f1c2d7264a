"""The sshd lock-out guard, table-driven, against the real sshd (-t and -T -C) over a temporary root.

Each case is a policy (items and section options), the temp root's own
accounts (etc/passwd, etc/shadow, etc/group, authorized_keys) and possibly
someone else's drop-in. At run time a refused candidate is a failed heal that
writes nothing; at load time (enforce) the same refusal is a policy error.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from k3s_agent.controls.sshd import DROPIN, SshdControl
from k3s_agent.host import Host
from k3s_agent.model import Mode, Status
from k3s_agent.policy.loader import Layer, compose
from k3s_agent.policy.model import ControlPolicy
from k3s_agent.policy.schema import PolicyError
from tests.support import sshdroot
from tests.support.sshdroot import ED25519, HASH, RSA, add_account

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("sshd", path="/usr/sbin:/usr/bin") is None, reason="needs openssh-server"
    ),
]

# The default profile's authentication settings, and one drift to heal (the main file sets yes).
PROFILE = {"PermitRootLogin": "no", "PasswordAuthentication": "no", "PubkeyAuthentication": "yes"}
DRIFT = {"X11Forwarding": "no"}
FOREIGN = "etc/ssh/sshd_config.d/50-local.conf"
Setup = Callable[[Path], None]


def ops(**kwargs: Any) -> Setup:
    """The operator account "ops" (uid 1000), with kwargs for add_account."""
    return lambda root: add_account(root, "ops", 1000, **{"keys": (ED25519,), **kwargs}) and None


def foreign(text: str) -> Setup:
    return lambda root: (root / FOREIGN).write_text(text) and None


def both(*setups: Setup) -> Setup:
    def run(root: Path) -> None:
        for setup in setups:
            setup(root)

    return run


def many_users(count: int) -> Setup:
    def run(root: Path) -> None:
        for n in range(count):
            add_account(root, f"user{n:02d}", 2000 + n)

    return run


def mode(rel: str, bits: int, owner: Optional[int] = None, group: Optional[int] = None) -> Setup:
    """chmod (and chown) a path under root: key files and homes sshd reads as the user."""

    def run(root: Path) -> None:
        if owner is not None:
            os.chown(root / rel, owner, owner if group is None else group)
        os.chmod(root / rel, bits)

    return run


def expire(name: str) -> Setup:
    """shadow(5) field 8 = 1 (1970-01-02): the account has expired."""

    def run(root: Path) -> None:
        shadow = root / "etc/shadow"
        lines = [
            ":".join([*f[:7], "1", *f[8:]]) if f[0] == name else ":".join(f)
            for f in (line.split(":") for line in shadow.read_text().splitlines())
        ]
        shadow.write_text("\n".join(lines) + "\n")

    return run


def jail(*files: str) -> Setup:
    """A root-owned /srv/jail (sshd's ChrootDirectory rules) holding files."""

    def run(root: Path) -> None:
        for folder in ("srv", "srv/jail"):
            (root / folder).mkdir(mode=0o755, exist_ok=True)
        for name in files:
            (root / "srv/jail" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "srv/jail" / name).write_text("")

    return run


def keys_in_etc(root: Path) -> None:
    add_account(root, "ops", 1000)
    (root / "etc/ssh/keys").mkdir()
    (root / "etc/ssh/keys/ops").write_text(ED25519 + "\n")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    setup: Setup
    items: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    refused: tuple[str, ...] = ()  # substrings of the refusal; () = the heal goes through


CASES = [
    # -- the holes of issue 11 ---------------------------------------------------------------
    Case(
        "no-key-password-off",
        ops(keys=()),
        PROFILE,
        refused=(
            "ops: ",
            "no usable method",
            "publickey: no authorized key",
            "PasswordAuthentication no (/etc/ssh/sshd_config.d/01-k3s-agentd.conf:",
        ),
    ),
    Case(
        "authorized-keys-file-none",
        ops(),
        {**PROFILE, "AuthorizedKeysFile": "none"},
        refused=("AuthorizedKeysFile none (/etc/ssh/sshd_config.d/01-k3s-agentd.conf:",),
    ),
    Case(
        "allow-users-only-nologin",
        both(
            ops(), lambda r: add_account(r, "svc", 999, keys=(ED25519,), shell="/usr/sbin/nologin") and None
        ),
        {**PROFILE, "AllowUsers": "svc"},
        refused=("AllowUsers svc", "does not admit ops"),
    ),
    Case(
        "allow-users-only-locked-no-pam",
        both(
            ops(),
            foreign("UsePAM no\n"),
            lambda r: add_account(r, "lock", 1001, password="!" + HASH) and None,
        ),
        {"PasswordAuthentication": "yes", "AllowUsers": "lock", **DRIFT},
        refused=("lock: ", "locked (!)", "UsePAM no (/etc/ssh/sshd_config.d/50-local.conf:1)"),
    ),
    Case(
        "accepted-algorithms-exclude-key",
        ops(keys=(RSA,)),
        {**PROFILE, "PubkeyAcceptedAlgorithms": ["ssh-ed25519"]},
        refused=("key types ssh-rsa not in PubkeyAcceptedAlgorithms ssh-ed25519",),
    ),
    Case(
        "match-address-star-pubkey-no",
        both(ops(), foreign("Match Address *\n  PubkeyAuthentication no\n")),
        PROFILE,
        refused=("PubkeyAuthentication no (/etc/ssh/sshd_config.d/50-local.conf:2 in Match Address *)",),
    ),
    Case(
        "max-sessions-0",
        ops(),
        {**PROFILE, "MaxSessions": 0},
        refused=("MaxSessions 0 (/etc/ssh/sshd_config.d/01-k3s-agentd.conf:", "allows no session"),
    ),
    Case(
        "listen-loopback-only",
        ops(),
        {**PROFILE, "ListenAddress": "127.0.0.1"},
        refused=("ListenAddress 127.0.0.1:22", "nothing an IPv4 management address can reach"),
    ),
    Case(
        "listen-v4-node-address-v6-management",
        ops(),
        {**PROFILE, "ListenAddress": "10.1.2.3"},
        refused=("from ::/0", "ListenAddress 10.1.2.3:22", "nothing an IPv6 management address can reach"),
    ),
    Case(
        "force-command-false",
        ops(),
        {**PROFILE, "ForceCommand": "/bin/false"},
        refused=("ForceCommand /bin/false", "gives no shell"),
    ),
    Case(
        "force-command-internal-sftp",
        ops(),
        {**PROFILE, "ForceCommand": "internal-sftp -l INFO"},
        refused=("ForceCommand internal-sftp",),
    ),
    Case(
        "address-family-inet-default-management",
        ops(),
        {**PROFILE, "AddressFamily": "inet"},
        refused=("from ::/0 (probed as 2001:db8::10)", "AddressFamily inet", "does not listen on IPv6"),
    ),
    Case(
        "address-family-inet-v6-management",
        ops(),
        {**PROFILE, "AddressFamily": "inet"},
        {"management_sources": ["fd00:10::/64"]},
        refused=("from fd00:10::/64 (probed as fd00:10::1)",),
    ),
    Case(
        "deny-users-star",
        ops(),
        {**PROFILE, "DenyUsers": "*"},
        refused=("DenyUsers * (/etc/ssh/sshd_config.d/01-k3s-agentd.conf:", "denies ops"),
    ),
    Case(
        "deny-users-at-management-net",
        ops(),
        {**PROFILE, "DenyUsers": "ops@10.0.0.0/8"},
        {"management_sources": ["10.0.0.0/8"]},
        refused=("denies ops",),
    ),
    Case(
        "root-only-key-permit-root-no",
        lambda r: add_account(r, "root", 0, keys=(ED25519,)) and None,
        PROFILE,
        refused=("root: ", "PermitRootLogin no", "shuts root out"),
    ),
    Case(
        "operator-missing",
        ops(),
        PROFILE,
        {"operators": ["alice"]},
        refused=("no operator", "alice: not in /etc/passwd"),
    ),
    Case(
        "operator-nologin",
        both(
            ops(), lambda r: add_account(r, "svc", 999, keys=(ED25519,), shell="/usr/sbin/nologin") and None
        ),
        PROFILE,
        {"operators": ["svc"]},
        refused=("svc: its shell is /usr/sbin/nologin",),
    ),
    Case(
        "key-from-elsewhere",
        ops(keys=('from="10.0.0.0/8" ' + ED25519,)),
        PROFILE,
        refused=("restricted (from=/command=) away from 192.0.2.10",),
    ),
    Case(
        "match-user-force-nologin",
        both(ops(), foreign("Match User ops\n  ForceCommand /usr/sbin/nologin\n")),
        PROFILE,
        refused=(
            "ForceCommand /usr/sbin/nologin (/etc/ssh/sshd_config.d/50-local.conf:2 in Match User ops)",
        ),
    ),
    Case(
        "allow-groups-not-ops",
        ops(groups=("admins",)),
        {**PROFILE, "AllowGroups": "wheel"},
        refused=("AllowGroups wheel", "admits no group of ops"),
    ),
    Case(
        "locked-password-no-pam-key",
        both(ops(), foreign("UsePAM no\n")),
        PROFILE,
        refused=("its password is locked (!)",),
    ),
    Case(
        "kbd-interactive-without-pam",
        both(ops(keys=(), password=HASH), foreign("UsePAM no\n")),
        {**PROFILE, "KbdInteractiveAuthentication": "yes"},
        refused=("keyboard-interactive needs PAM",),
    ),
    Case(
        "auth-methods-key-and-password",
        ops(),
        {**PROFILE, "PasswordAuthentication": "yes", "AuthenticationMethods": "publickey,password"},
        refused=("AuthenticationMethods publickey,password", "password: its password is locked"),
    ),
    Case(
        "empty-password",
        ops(keys=(), password=""),
        {**PROFILE, "PasswordAuthentication": "yes"},
        refused=("its password is empty and PermitEmptyPasswords no",),
    ),
    Case(
        "capped-account-probe",
        many_users(24),
        PROFILE,
        refused=("only the first 20 of 25 accounts were probed",),
    ),
    # -- found attacking the guard: each passed validate and apply, and locked ops out ------------
    Case(
        "match-local-address",
        both(ops(), foreign("Match LocalAddress *\n  PubkeyAuthentication no\n")),
        PROFILE,
        refused=("PubkeyAuthentication no (/etc/ssh/sshd_config.d/50-local.conf:2 in Match LocalAddress *)",),
    ),
    Case(
        "match-address-half-of-management",
        both(ops(), foreign("Match Address 10.20.128.0/17\n  PubkeyAuthentication no\n")),
        PROFILE,
        {"management_sources": ["10.20.0.0/16"]},
        refused=("from 10.20.0.0/16 (probed as 10.20.128.1)", "in Match Address 10.20.128.0/17"),
    ),
    Case(
        "deny-users-half-of-management",
        ops(),
        {**PROFILE, "DenyUsers": "ops@10.20.0.128/25"},
        {"management_sources": ["10.20.0.0/24"]},
        refused=("(probed as 10.20.0.129)", "denies ops"),
    ),
    Case(
        "auth-methods-two-keys-one-key",
        ops(),
        {**PROFILE, "AuthenticationMethods": "publickey,publickey"},
        refused=("AuthenticationMethods publickey,publickey", "1 distinct key(s)"),
    ),
    Case(
        "auth-methods-bsdauth-on-linux",
        ops(keys=(), password=HASH),
        {
            **PROFILE,
            "KbdInteractiveAuthentication": "yes",
            "AuthenticationMethods": "keyboard-interactive:bsdauth",
        },
        refused=("AuthenticationMethods keyboard-interactive:bsdauth",),
    ),
    Case(
        "auth-methods-publickey-submethod",
        ops(),
        {**PROFILE, "AuthenticationMethods": "publickey:x"},
        refused=("AuthenticationMethods publickey:x",),
    ),
    Case(
        "key-file-root-0600",
        both(ops(), mode("home/ops/.ssh/authorized_keys", 0o600, owner=0)),
        PROFILE,
        refused=("publickey: no authorized key in .ssh/authorized_keys",),
    ),
    Case(
        "home-root-0700",
        both(ops(), mode("home/ops", 0o700, owner=0)),
        PROFILE,
        refused=("publickey: no authorized key",),
    ),
    Case("ssh-dir-0000", both(ops(), mode("home/ops/.ssh", 0o000)), PROFILE, refused=("no authorized key",)),
    Case(
        "key-expired",
        ops(keys=('expiry-time="20200101" ' + ED25519,)),
        PROFILE,
        refused=("every key has expired (expiry-time=)",),
    ),
    Case(
        "key-unknown-option",
        ops(keys=("no-such-option " + ED25519,)),
        PROFILE,
        refused=("no authorized key",),
    ),
    Case("key-cut-short", ops(keys=(ED25519[:50],)), PROFILE, refused=("no authorized key",)),
    Case(
        "required-rsa-size",
        ops(keys=(RSA,)),
        {**PROFILE, "RequiredRSASize": 4096},
        refused=("RSA keys of 2048 bits are under RequiredRSASize 4096",),
    ),
    Case(
        "account-expired",
        both(ops(), expire("ops")),
        PROFILE,
        refused=("ops: ", "its account has expired"),
    ),
    Case(
        "account-expired-no-pam",
        both(ops(password=HASH), foreign("UsePAM no\n"), expire("ops")),
        {**PROFILE, "PasswordAuthentication": "yes"},
        refused=("its account has expired",),
    ),
    Case(
        "chroot-home-owned-by-user",
        ops(),
        {**PROFILE, "ChrootDirectory": "%h"},
        refused=("ChrootDirectory %h", "/home/ops is not a root-owned directory"),
    ),
    Case(
        "chroot-missing",
        both(ops(), foreign("Match User ops\n  ChrootDirectory /srv/jail\n")),
        PROFILE,
        refused=("ChrootDirectory /srv/jail (/etc/ssh/sshd_config.d/50-local.conf:2 in Match User ops)",),
    ),
    Case(
        "chroot-without-shell",
        both(ops(), jail()),
        {**PROFILE, "ChrootDirectory": "/srv/jail"},
        refused=("no /bin/bash inside it",),
    ),
    Case(
        "max-auth-tries-0",
        ops(),
        {**PROFILE, "MaxAuthTries": 0},
        refused=("MaxAuthTries 0 (/etc/ssh/sshd_config.d/01-k3s-agentd.conf:", "disconnects"),
    ),
    Case(
        "host-key-algorithms-exclude-every-host-key",
        ops(),
        {**PROFILE, "HostKeyAlgorithms": ["rsa-sha2-512"]},
        refused=("HostKeyAlgorithms rsa-sha2-512", "offers none of the host keys (ssh-ed25519)"),
    ),
    # -- ways in the guard must see ----------------------------------------------------------
    Case("default-profile-with-key", ops(), PROFILE),
    Case("password-login", ops(keys=(), password=HASH), {**PROFILE, "PasswordAuthentication": "yes"}),
    Case(
        "kbd-interactive-with-pam",
        ops(keys=(), password=HASH),
        {**PROFILE, "KbdInteractiveAuthentication": "yes"},
    ),
    Case(
        "rsa-key-rsa-sha2-accepted",
        ops(keys=(RSA,)),
        {**PROFILE, "PubkeyAcceptedAlgorithms": ["rsa-sha2-512", "ssh-ed25519"]},
    ),
    Case(
        "address-family-inet-v4-management",
        ops(),
        {**PROFILE, "AddressFamily": "inet"},
        {"management_sources": ["10.0.0.0/8"]},
    ),
    Case(
        "listen-node-address",
        ops(),
        {**PROFILE, "ListenAddress": "10.1.2.3"},
        {"management_sources": ["10.0.0.0/8"]},
    ),
    Case(
        "deny-users-other-net",
        ops(),
        {**PROFILE, "DenyUsers": "ops@10.0.0.0/8"},
        {"management_sources": ["192.168.0.0/16"]},
    ),
    Case(
        "key-from-management-net",
        ops(keys=('from="10.0.0.0/8" ' + ED25519,)),
        PROFILE,
        {"management_sources": ["10.0.0.0/8"]},
    ),
    Case("force-command-recorder", ops(), {**PROFILE, "ForceCommand": "/usr/bin/tlog-rec-session"}),
    Case("allow-groups-ops", ops(groups=("admins",)), {**PROFILE, "AllowGroups": "admins"}),
    Case("locked-password-key-with-pam", ops(password="!"), PROFILE),
    Case(
        "keys-file-tokens",
        keys_in_etc,
        {**PROFILE, "AuthorizedKeysFile": "/etc/ssh/keys/%u", "StrictModes": "no"},
    ),
    Case(
        "match-address-other-net",
        both(ops(), foreign("Match Address 172.16.0.0/12\n  PubkeyAuthentication no\n")),
        PROFILE,
    ),
    Case("operator-listed-ok", both(ops(), many_users(3)), PROFILE, {"operators": ["ops"]}),
    Case("chroot-with-shell", both(ops(), jail("bin/bash")), {**PROFILE, "ChrootDirectory": "/srv/jail"}),
    Case("key-expires-later", ops(keys=('expiry-time="20991231" ' + ED25519,)), PROFILE),
    Case(
        "auth-methods-two-keys",
        ops(keys=(ED25519, RSA)),
        {**PROFILE, "AuthenticationMethods": "publickey,publickey"},
    ),
    Case("rsa-key-big-enough", ops(keys=(RSA,)), {**PROFILE, "RequiredRSASize": 2048}),
    Case(
        "match-address-outside-management",
        both(ops(), foreign("Match Address 10.30.0.0/16\n  PubkeyAuthentication no\n")),
        PROFILE,
        {"management_sources": ["10.20.0.0/16"]},
    ),
    Case(
        "match-local-address-other",
        both(ops(), foreign("Match LocalAddress 10.9.9.9\n  PubkeyAuthentication no\n")),
        PROFILE,
    ),
    Case(
        "key-file-group-readable",
        both(ops(groups=("keys",)), mode("home/ops/.ssh/authorized_keys", 0o640, owner=0, group=5004)),
        PROFILE,
    ),
    Case("host-key-algorithms-with-the-host-key", ops(), {**PROFILE, "HostKeyAlgorithms": ["ssh-ed25519"]}),
    Case("allow-lockout-lets-it-through", ops(), {**PROFILE, "DenyUsers": "*"}, {"allow_lockout": True}),
]


@pytest.fixture(scope="session")
def host_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sshdroot.host_key(tmp_path_factory.mktemp("hostkey"))


def _root(root: Path, host_key: Path, case: Case) -> Path:
    sshdroot.install_sshd(root, host_key)
    if "root-only" not in case.name:
        add_account(root, "root", 0)
    case.setup(root)
    return root


def _control(root: Path, case: Case) -> SshdControl:
    items = {k: {"value": v} for k, v in {**DRIFT, **case.items}.items()}
    policy = ControlPolicy("sshd", Mode.ENFORCE, True, case.options, items)
    return SshdControl(policy, Host(root=str(root)), sshd=sshdroot.SSHD, reload=lambda: "reload skipped")


def test_the_table_has_the_holes_and_the_ways_in() -> None:
    assert sum(1 for c in CASES if c.refused) >= 20 and sum(1 for c in CASES if not c.refused) >= 10
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_heal_is_refused_exactly_when_no_operator_could_log_in(
    root: Path, host_key: Path, case: Case
) -> None:
    ctl = _control(_root(root, host_key, case), case)
    drift = [f for f in ctl.check() if f.status is Status.DRIFT]
    assert drift, "every case heals at least X11Forwarding"
    results = ctl.apply(drift)
    dropin = root / DROPIN.lstrip("/")
    if not case.refused:
        assert {r.status for r in results} == {Status.HEALED}, results[0].message
        assert dropin.exists()
        overridden = "allow_lockout = true let this through: lock-out:" in results[0].message
        assert overridden == bool(case.options.get("allow_lockout"))
        return
    message = results[0].message
    assert {r.status for r in results} == {Status.FAILED}, message
    assert message.startswith("not written: lock-out:") and "allow_lockout = true" in message
    for part in case.refused:
        assert part in message, f"{part!r} not in: {message}"
    assert not dropin.exists()  # nothing written, nothing reloaded


def _load(root: Path, case: Case, mode: str = "enforce", preflight: bool = True) -> Optional[str]:
    section = {"items": {k: {"value": v} for k, v in {**DRIFT, **case.items}.items()}, **case.options}
    layer = Layer(
        "/etc/k3s-agentd/policy.d/10-ssh.toml",
        {"extends": "none", "mode": mode, "controls": {"sshd": section}},
    )
    try:
        compose(Host(root=str(root)), [layer], preflight=preflight)
    except PolicyError as exc:
        return str(exc)
    return None


LOAD_CASES = [
    c
    for c in CASES
    if c.name
    in (
        "no-key-password-off",
        "match-address-star-pubkey-no",
        "deny-users-star",
        "default-profile-with-key",
        "allow-lockout-lets-it-through",
    )
]


@pytest.mark.parametrize("case", LOAD_CASES, ids=[c.name for c in LOAD_CASES])
def test_the_same_guard_refuses_the_policy_at_load_time(root: Path, host_key: Path, case: Case) -> None:
    error = _load(_root(root, host_key, case), case)
    if not case.refused:
        assert error is None
        return
    assert error is not None and "10-ssh.toml: controls.sshd: lock-out:" in error
    assert all(part in error for part in case.refused), error
    assert "(set allow_lockout = true to accept)" in error
    assert _load(root, case, mode="audit") is None  # audit writes nothing: the policy loads
    # a read-only report (`k3s-agentctl check`, `diff`) still reports: the run-time
    # guard refuses the write, the check says where the node stands
    assert _load(root, case, preflight=False) is None


def test_a_locked_out_heal_names_every_probed_account(root: Path, host_key: Path) -> None:
    case = Case("two", both(ops(keys=()), lambda r: add_account(r, "dev", 1001) and None), PROFILE)
    ctl = _control(_root(root, host_key, case), case)
    message = ctl.apply([f for f in ctl.check() if f.status is Status.DRIFT])[0].message
    # people first, then root; accounts locked out alike are named together
    assert "ops, dev: from 0.0.0.0/0 (probed as 192.0.2.10): no usable method" in message
    assert "; root: from 0.0.0.0/0 (probed as 192.0.2.10): PermitRootLogin no" in message


def test_an_operator_that_gets_in_is_found_with_two_sshd_calls(root: Path, host_key: Path) -> None:
    case = Case("fast", both(ops(), many_users(30)), PROFILE, {"operators": ["ops"]})
    ctl = _control(_root(root, host_key, case), case)
    assert {r.status for r in ctl.apply([f for f in ctl.check() if f.status is Status.DRIFT])} == {
        Status.HEALED
    }
    assert ctl.facts["guard_probes"] == 2  # one v4 and one v6 management address
