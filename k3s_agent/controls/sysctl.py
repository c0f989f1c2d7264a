"""Kernel parameters: runtime values in /proc/sys, persisted in sysctl.d.

Runtime drift is healed by writing /proc/sys; the boot-time truth is healed by
rewriting our own /etc/sysctl.d/90-k3s-agentd.conf. A file that loads after
ours and sets a different value wins at boot: that is reported (naming the
file), never "healed" by editing someone else's file.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from collections.abc import Sequence
from typing import Any, Optional

from k3s_agent.controls.base import ControlSpec, Lint, Watch
from k3s_agent.host import Host, HostError
from k3s_agent.model import Finding, Status
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, matches

NAME = "sysctl"
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

# kubelet refuses to start with --protect-kernel-defaults unless these hold
# (k8s pkg/kubelet/cm/container_manager_linux.go setupKernelTunables).
KUBELET_REQUIRED = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
}
KUBELET_CHECKED_IF_SET = {
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# Values that break pod networking on a K3s node (flannel/kube-proxy need
# forwarding and bridged traffic through iptables).
K3S_NEEDS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
K3S_NEEDS_DUAL_STACK = {
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.all.disable_ipv6": "0",
    "net.ipv6.conf.default.disable_ipv6": "0",
}

_KEY = matches(
    r"[a-z0-9_][a-z0-9_-]*(?:[./][A-Za-z0-9_@:-][A-Za-z0-9_@:.-]*)+",
    "a dotted sysctl name like net.ipv4.ip_forward",
)


def normalize(value: Any) -> str:
    """The kernel's way of printing a value: whitespace-separated fields, one space apart."""
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


class SysctlControl:
    name = NAME

    def __init__(self, policy: ControlPolicy, host: Host):
        self.host = host
        self.persist = policy.option("persist", True)
        self.items = {key: normalize(item["value"]) for key, item in policy.items.items()}
        self.cis = {key: item.get("cis") for key, item in policy.items.items()}

    # -- observe ------------------------------------------------------------

    def check(self) -> list[Finding]:
        findings = [self._check_runtime(key, want) for key, want in self.items.items()]
        if self.persist:
            findings.append(self._check_persisted())
            findings += self._check_boot_overrides()
        return findings

    def _proc_file(self, key: str) -> str:
        # A key with '/' keeps its dots (interface names such as eth0.100).
        relative = key.replace("/", os.sep) if "/" in key else key.replace(".", os.sep)
        return self.host.proc_path(os.path.join("sys", relative))

    def _check_runtime(self, key: str, want: str) -> Finding:
        base = Finding(NAME, key, Status.OK, desired=want, cis=self.cis.get(key))
        try:
            with open(self._proc_file(key)) as handle:
                seen = normalize(handle.read())
        except FileNotFoundError:
            return base.with_status(Status.ABSENT, "no such parameter on this kernel")
        except PermissionError as exc:
            return base.with_status(Status.UNSUPPORTED, f"cannot read: {exc.strerror}")
        found = Finding(NAME, key, Status.OK, desired=want, observed=seen, cis=self.cis.get(key))
        if seen == want:
            return found
        if not os.access(self._proc_file(key), os.W_OK):
            return found.with_status(Status.UNSUPPORTED, "read-only here (container or lockdown)")
        return found.with_status(Status.DRIFT, "runtime value differs")

    def desired_file(self) -> str:
        lines = [
            "# Managed by k3s-agentd: rewritten from its policy, local edits are reverted.",
            "# Change values in /etc/k3s-agentd/policy.d/*.toml instead.",
        ]
        lines += [f"{key} = {want}" for key, want in sorted(self.items.items())]
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
        findings = []
        for key, (source, value) in boot_winners(self.host).items():
            want = self.items.get(key)
            if want is None or source == PERSIST_FILE or normalize(value) == want:
                continue
            findings.append(
                Finding(
                    NAME,
                    f"{key}@boot",
                    Status.DRIFT,
                    desired=want,
                    observed=normalize(value),
                    message=f"{source} loads after {PERSIST_FILE} and sets {value!r}: it wins at boot",
                    cis=self.cis.get(key),
                )
            )
        return findings

    # -- heal -------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        results = []
        for finding in drift:
            if finding.key == PERSIST_FILE:
                results.append(self._write_persisted(finding))
            elif finding.key.endswith("@boot"):
                results.append(finding.with_status(Status.DRIFT, finding.message + "; not ours to edit"))
            else:
                results.append(self._write_runtime(finding))
        return results

    def _write_runtime(self, finding: Finding) -> Finding:
        try:
            with open(self._proc_file(finding.key), "w") as handle:
                handle.write(str(finding.desired))
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
        with open(path, "rb") as handle:
            return handle.read(4096).decode(errors="replace")
    except OSError as exc:
        return f"<{exc.errno}>"


# -- boot-time order ------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"^\s*-?\s*([^=#;\s][^=]*?)\s*=\s*(.*?)\s*$")


def boot_files(host: Host) -> list[str]:
    """sysctl.d files in the order they are applied at boot (host paths)."""
    by_name: dict[str, str] = {}
    for directory in SYSCTL_DIRS:
        for path in glob.glob(os.path.join(glob.escape(host.path(directory)), "*.conf")):
            by_name.setdefault(os.path.basename(path), f"{directory}/{os.path.basename(path)}")
    ordered = [by_name[name] for name in sorted(by_name)]
    return [*ordered, SYSCTL_CONF]


def boot_winners(host: Host) -> dict[str, tuple[str, str]]:
    """key -> (file, value) of the last assignment at boot."""
    winners: dict[str, tuple[str, str]] = {}
    for source in boot_files(host):
        try:
            text = host.read_text(source)
        except HostError:
            continue
        for line in (text or "").splitlines():
            match = _ASSIGNMENT.match(line)
            if match:
                key = match.group(1).strip().replace("/", ".")
                winners[key] = (source, match.group(2))
    return winners


# -- policy --------------------------------------------------------------------------


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    values = {key: normalize(item["value"]) for key, item in control.items.items()}
    problems = [
        Lint(key, f"{key}={values[key]} breaks K3s pod networking (needs {want})")
        for key, want in K3S_NEEDS.items()
        if key in values and values[key] != want
    ]
    if control.option("dual_stack", False) or k3s_is_dual_stack(host):
        problems += [
            Lint(key, f"{key}={values[key]} breaks IPv6 on this dual-stack cluster (needs {want})")
            for key, want in K3S_NEEDS_DUAL_STACK.items()
            if key in values and values[key] != want
        ]
    if protect_kernel_defaults_required(policy):
        for key, want in KUBELET_REQUIRED.items():
            if values.get(key) != want:
                seen = "missing" if key not in values else f"set to {values[key]}"
                problems.append(
                    Lint(
                        key,
                        f"{key} is {seen}: kubelet with protect-kernel-defaults refuses "
                        f"to start unless it is {want}",
                    )
                )
        problems += [
            Lint(key, f"{key}={values[key]}: kubelet with protect-kernel-defaults needs {want}")
            for key, want in KUBELET_CHECKED_IF_SET.items()
            if key in values and values[key] != want
        ]
    return problems


def protect_kernel_defaults_required(policy: Policy) -> bool:
    k3s_args = policy.controls.get("k3s_args")
    if k3s_args is None or not k3s_args.enabled:
        return False
    return any(key.endswith("protect-kernel-defaults") for key in k3s_args.items)


def k3s_is_dual_stack(host: Host) -> bool:
    """True when K3s's config names an IPv6 cluster CIDR (best effort, never raises)."""
    paths = ["/etc/rancher/k3s/config.yaml"]
    paths += sorted(
        "/etc/rancher/k3s/config.yaml.d/" + os.path.basename(p)
        for p in glob.glob(host.path("/etc/rancher/k3s/config.yaml.d/*.y*ml"))
    )
    for path in paths:
        try:
            text = host.read_text(path) or ""
        except HostError:
            continue
        if re.search(r"(?m)^\s*cluster-cidr\s*\+?:.*[0-9a-fA-F]*:[0-9a-fA-F]*:", text):
            return True
    return False


def _build(policy: ControlPolicy, host: Host) -> SysctlControl:
    return SysctlControl(policy, host)


def _key_check(key: str) -> Optional[str]:
    return _KEY(key)


SPEC = ControlSpec(
    name=NAME,
    build=_build,
    options={
        "persist": Field(bool, doc=f"also keep {PERSIST_FILE} in step"),
        "dual_stack": Field(bool, doc="treat the cluster as dual-stack for the IPv6 lints"),
    },
    item_fields={"value": Field((str, int), required=True, doc="value as sysctl prints it")},
    item_key=_key_check,
    lint=lint,
    doc="kernel parameters, runtime and persisted",
)
