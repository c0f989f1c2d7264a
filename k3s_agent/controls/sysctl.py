"""Kernel parameters: runtime values in /proc/sys, persisted in sysctl.d.

Runtime drift is healed by writing /proc/sys; the boot-time truth is healed by
rewriting our own /etc/sysctl.d/90-k3s-agentd.conf. A file that loads after
ours and sets a different value wins at boot: that is reported (naming the
file), never "healed" by editing someone else's file.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from typing import Any, Optional

from k3s_agent.controls.base import ControlSpec, Lint, Watch, split_declined
from k3s_agent.host import Host, HostError, TooLarge, proc_writable, read_capped, read_head, write_proc
from k3s_agent.k3s.facts import read_facts
from k3s_agent.model import Finding, Status
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, brief

NAME = "sysctl"
NOT_OURS = "not ours to edit"  # why apply leaves a later sysctl.d file that wins at boot
PERSIST_FILE = "/etc/sysctl.d/90-k3s-agentd.conf"
# systemd-sysctl and `sysctl --system` read these, files ordered by name across
# all directories (earlier directories shadow same-named files), then
# /etc/sysctl.conf last (sysctl.d(5), procps sysctl(8)).
SYSCTL_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)
SYSCTL_CONF = "/etc/sysctl.conf"

PROC_SYS = "/proc/sys/"
_SWAP = str.maketrans("./", "/.")


def proc_path(key: str) -> str:
    """The canonical form of a sysctl key: its path under /proc/sys.

    Every spelling sysctl(8) and systemd-sysctl accept is the same key: dotted
    (net.ipv4.ip_forward), slashed (net/ipv4/ip_forward), and here also the
    full /proc/sys/ path. As sysctl.d(5) says: "If the first separator is a
    slash, remaining slashes and dots are left intact. If the first separator
    is a dot, dots and slashes are interchanged" -- so an interface name with
    a dot is net/ipv4/conf/eth0.100/rp_filter or net.ipv4.conf.eth0/100.rp_filter.
    """
    if key.startswith(PROC_SYS):
        key = key[len(PROC_SYS) :]
    first = re.search(r"[./]", key)
    return key.translate(_SWAP) if first and first.group() == "." else key


def display_key(key: str) -> str:
    """The dotted spelling of a key, as `sysctl -a` prints it (dots inside names as '/')."""
    return proc_path(key).translate(_SWAP)


def _canonical(table: dict[str, str]) -> dict[str, str]:
    return {proc_path(key): value for key, value in table.items()}


# Values that break pod networking on a K3s node (flannel/kube-proxy need
# forwarding and bridged traffic through iptables). net.ipv4.ip_forward and
# net.ipv4.conf.all.forwarding are one kernel switch (writing either sets
# both, Documentation/networking/ip-sysctl.rst); IPv4 forwards by the input
# device's setting, and new devices (cni0, the pods' veths) copy
# conf.default.forwarding, so 0 there breaks every pod started after it.
K3S_NEEDS = _canonical(
    {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.forwarding": "1",
        "net.ipv4.conf.default.forwarding": "1",
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.bridge.bridge-nf-call-ip6tables": "1",
    }
)
K3S_NEEDS_DUAL_STACK = _canonical(
    {
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv6.conf.all.disable_ipv6": "0",
        "net.ipv6.conf.default.disable_ipv6": "0",
    }
)
# Keys that name one kernel value: two different values in one policy would
# be healed against each other every cycle.
TIED = ((proc_path("net.ipv4.ip_forward"), proc_path("net.ipv4.conf.all.forwarding")),)

# kubelet refuses to start with --protect-kernel-defaults unless these hold
# (k8s pkg/kubelet/cm/container_manager_linux.go setupKernelTunables).
KUBELET_REQUIRED = _canonical(
    {
        "vm.overcommit_memory": "1",
        "vm.panic_on_oom": "0",
        "kernel.panic": "10",
        "kernel.panic_on_oops": "1",
    }
)
KUBELET_CHECKED_IF_SET = _canonical(
    {
        "kernel.keys.root_maxkeys": "1000000",
        "kernel.keys.root_maxbytes": "25000000",
    }
)

_TOP = re.compile(r"[a-z0-9_][a-z0-9_-]*")
_COMPONENT = re.compile(r"[A-Za-z0-9_@:-][A-Za-z0-9_@:.-]*")


def key_problem(key: str) -> Optional[str]:
    """Why key is no sysctl name (empty parts, '..', odd characters), or None."""
    parts = proc_path(key).split("/")
    if len(parts) >= 2 and _TOP.fullmatch(parts[0]) and all(_COMPONENT.fullmatch(p) for p in parts[1:]):
        return None
    return f"{brief(key)} is not a dotted sysctl name like net.ipv4.ip_forward (or a /proc/sys path)"


def normalize(value: Any) -> str:
    """The kernel's way of printing a value: whitespace-separated fields, one space apart."""
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


class SysctlControl:
    name = NAME

    def __init__(self, policy: ControlPolicy, host: Host):
        self.host = host
        self.persist = SPEC.option(policy, "persist")
        # Keyed by /proc/sys path (the loader refuses two spellings of one key);
        # findings use the dotted display form.
        self.items = {proc_path(key): normalize(item["value"]) for key, item in policy.items.items()}
        self.cis = {proc_path(key): item.get("cis") for key, item in policy.items.items()}

    # -- observe ------------------------------------------------------------

    def check(self) -> list[Finding]:
        findings = [self._check_runtime(path, want) for path, want in self.items.items()]
        if self.persist:
            findings.append(self._check_persisted())
            findings += self._check_boot_overrides()
        return findings

    def _proc_file(self, key: str) -> str:
        return self.host.proc_path(os.path.join("sys", proc_path(key)))

    def _check_runtime(self, path: str, want: str) -> Finding:
        key = display_key(path)
        base = Finding(NAME, key, Status.OK, desired=want, cis=self.cis.get(path))
        try:
            seen = normalize(read_capped(self._proc_file(path)).decode("utf-8", errors="replace"))
        except FileNotFoundError:
            return base.with_status(Status.ABSENT, "no such parameter on this kernel")
        except PermissionError as exc:
            return base.with_status(Status.UNSUPPORTED, f"cannot read: {exc.strerror}")
        except TooLarge as exc:
            return base.with_status(Status.FAILED, str(exc))
        found = Finding(NAME, key, Status.OK, desired=want, observed=seen, cis=self.cis.get(path))
        if seen == want:
            return found
        if not proc_writable(self._proc_file(path)):
            return found.with_status(Status.UNSUPPORTED, "read-only here (container or lockdown)")
        return found.with_status(Status.DRIFT, "runtime value differs")

    def desired_file(self) -> str:
        lines = [
            "# Managed by k3s-agentd: rewritten from its policy, local edits are reverted.",
            "# Change values in /etc/k3s-agentd/policy.d/*.toml instead.",
        ]
        lines += [f"{display_key(path)} = {want}" for path, want in sorted(self.items.items())]
        return "\n".join(lines) + "\n"

    def _check_persisted(self) -> Finding:
        want = self.desired_file()
        base = Finding(NAME, PERSIST_FILE, Status.OK, desired="managed content")
        try:
            seen = self.host.read_text(PERSIST_FILE)
        except HostError as exc:
            return base.with_status(Status.DRIFT, str(exc))
        if seen == want:
            return base
        what = "missing" if seen is None else "differs from the policy"
        return Finding(NAME, PERSIST_FILE, Status.DRIFT, "managed content", what, what)

    def _check_boot_overrides(self) -> list[Finding]:
        winners, unread = boot_settings(self.host)
        findings = [
            Finding(
                NAME,
                f"{exc.path}@boot",
                Status.DRIFT,
                desired="a readable sysctl.d file",
                observed="not read",
                message=f"{exc}: what it sets at boot is unknown",
                declined=NOT_OURS,
            )
            for exc in unread
        ]
        for path, (source, value) in winners.items():
            want = self.items.get(path)
            if want is None or source == PERSIST_FILE or normalize(value) == want:
                continue
            findings.append(
                Finding(
                    NAME,
                    f"{display_key(path)}@boot",
                    Status.DRIFT,
                    desired=want,
                    observed=normalize(value),
                    message=f"{source} loads after {PERSIST_FILE} and sets {value!r}: it wins at boot",
                    cis=self.cis.get(path),
                    declined=NOT_OURS,
                )
            )
        return findings

    # -- heal -------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        results, todo = split_declined(drift)  # the @boot findings: another file wins
        for finding in todo:
            if finding.key == PERSIST_FILE:
                results.append(self._write_persisted(finding))
            else:
                results.append(self._write_runtime(finding))
        return results

    def _write_runtime(self, finding: Finding) -> Finding:
        try:
            write_proc(self._proc_file(finding.key), str(finding.desired))
        except OSError as exc:
            status = Status.UNSUPPORTED if exc.errno in (errno.EROFS, errno.EACCES) else Status.FAILED
            return finding.with_status(status, f"write failed: {exc.strerror}")
        return finding.with_status(Status.HEALED, f"set to {finding.desired!r} (was {finding.observed!r})")

    def _write_persisted(self, finding: Finding) -> Finding:
        try:
            backup = self.host.write_atomic(PERSIST_FILE, self.desired_file().encode(), mode=0o644)
        except (OSError, HostError) as exc:
            return finding.with_status(Status.FAILED, f"cannot write {PERSIST_FILE}: {exc}")
        note = f" (previous copy: {backup})" if backup else ""
        return finding.with_status(Status.HEALED, f"rewrote {PERSIST_FILE}{note}")

    def watches(self) -> list[Watch]:
        return [Watch("path", d) for d in SYSCTL_DIRS[:2]] + [Watch("path", SYSCTL_CONF)]

    def fingerprint(self) -> tuple[str, ...]:
        """The runtime values, raw: the kernel sends no event when one is written
        (`sysctl -w`), so the daemon samples this every half second (one small
        read per key, ~10 us each) and checks this control when it moves."""
        return tuple(_read_raw(self._proc_file(key)) for key in self.items)

    def describe(self) -> dict[str, object]:
        return {"persist_file": PERSIST_FILE if self.persist else None, "items": len(self.items)}


def _read_raw(path: str) -> str:
    try:
        return read_head(path, 4096).decode(errors="replace")
    except OSError as exc:
        return f"<{exc.errno}>"


# -- boot-time order ------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"^\s*-?\s*([^=#;\s][^=]*?)\s*=\s*(.*?)\s*$")


def boot_files(host: Host) -> list[str]:
    """sysctl.d files in the order they are applied at boot (host paths)."""
    by_name: dict[str, str] = {}
    for directory in SYSCTL_DIRS:
        for name in host.glob(directory, "*.conf"):
            by_name.setdefault(name, f"{directory}/{name}")
    ordered = [by_name[name] for name in sorted(by_name)]
    return [*ordered, SYSCTL_CONF]


def boot_winners(host: Host) -> dict[str, tuple[str, str]]:
    """/proc/sys path -> (file, value) of the last assignment at boot."""
    return boot_settings(host)[0]


def boot_settings(host: Host) -> tuple[dict[str, tuple[str, str]], list[TooLarge]]:
    """(/proc/sys path -> (file, value) of the last assignment at boot, files too large to read)."""
    winners: dict[str, tuple[str, str]] = {}
    unread: list[TooLarge] = []
    for source in boot_files(host):
        try:
            text = host.read_text(source)
        except TooLarge as exc:
            unread.append(exc)
            continue
        except HostError:  # a link (a /dev/null mask) or a special file: not ours to judge
            continue
        for line in (text or "").splitlines():
            match = _ASSIGNMENT.match(line)
            if match:
                winners[proc_path(match.group(1).strip())] = (source, match.group(2))
    return winners, unread


# -- policy --------------------------------------------------------------------------


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    """K3s safety lints, on every spelling of a key (each Lint names the key as written)."""
    spelled = {proc_path(key): key for key in control.items}
    values = {proc_path(key): normalize(item["value"]) for key, item in control.items.items()}

    def lints(needs: dict[str, str], why: str) -> list[Lint]:
        return [
            Lint(spelled[path], f"{_shown(spelled[path])}={values[path]} {why} (needs {want})")
            for path, want in needs.items()
            if path in values and values[path] != want
        ]

    problems = lints(K3S_NEEDS, "breaks K3s pod networking")
    # K3s's configuration resolved as K3s does (k3s_agent.k3s.facts); never raises.
    if SPEC.option(control, "dual_stack") or read_facts(host).dual_stack:
        problems += lints(K3S_NEEDS_DUAL_STACK, "breaks IPv6 on this dual-stack cluster")
    problems += _tied(spelled, values)
    requiring = _protect_kernel_defaults_item(policy)
    if requiring is not None:
        for path, want in KUBELET_REQUIRED.items():
            if values.get(path) != want:
                seen = "missing" if path not in values else f"set to {values[path]}"
                problems.append(
                    Lint(
                        spelled.get(path, display_key(path)),
                        f"{display_key(path)} is {seen}: kubelet with protect-kernel-defaults refuses "
                        f"to start unless it is {want}",
                        because=("k3s_args", requiring),
                    )
                )
        problems += lints(KUBELET_CHECKED_IF_SET, "breaks kubelet with protect-kernel-defaults")
    return problems


def _tied(spelled: dict[str, str], values: dict[str, str]) -> list[Lint]:
    """Two keys of one kernel value set differently: never acceptable (they would flap)."""
    return [
        Lint(
            spelled[b],
            f"{_shown(spelled[b])}={values[b]} but {_shown(spelled[a])}={values[a]}: "
            "the kernel ties the two together, they must agree",
            overridable=False,
        )
        for a, b in TIED
        if a in values and b in values and values[a] != values[b]
    ]


def _shown(key: str) -> str:
    """The key as written, with its dotted form when spelled otherwise."""
    dotted = display_key(key)
    return key if key == dotted else f"{key} (= {dotted})"


def protect_kernel_defaults_required(policy: Policy) -> bool:
    return _protect_kernel_defaults_item(policy) is not None


def _protect_kernel_defaults_item(policy: Policy) -> Optional[str]:
    """The k3s_args item that requires protect-kernel-defaults, if any."""
    k3s_args = policy.controls.get("k3s_args")
    if k3s_args is None or not k3s_args.enabled:
        return None
    return next((key for key in k3s_args.items if key.endswith("protect-kernel-defaults")), None)


def _build(policy: ControlPolicy, host: Host) -> SysctlControl:
    return SysctlControl(policy, host)


SPEC = ControlSpec(
    name=NAME,
    build=_build,
    options={
        "persist": Field(bool, default=True, doc=f"also keep {PERSIST_FILE} in step"),
        "dual_stack": Field(
            bool,
            default=False,
            doc="true: dual-stack for the IPv6 lints (false: as K3s's config says)",
        ),
    },
    item_fields={"value": Field((str, int), required=True, doc="value as sysctl prints it")},
    item_key=key_problem,
    canonical_key=proc_path,
    lint=lint,
    doc="kernel parameters, runtime and persisted",
)
