"""K3s effective arguments: configured (unit + env + config.yaml[.d]) and running
(the `Running <component>` journal lines since the current start), both compared
with the policy.

Per item the verdict separates what a restart would change from what it would not:
  configured ok, running ok          -> ok
  configured ok, running not         -> pending ("restart pending")
  configured not, running ok         -> drift ("running but not configured":
                                        someone started K3s by hand; lost at restart)
  configured not, running not        -> drift (missing / wrong value)
An unset flag counts as the component's own default (args.COMPONENT_DEFAULTS).
A drift the item's `benchmark` table (the benchmark's weaker requirement) does
not share is ok, "stricter than CIS x.y: ..." (beyond_benchmark = "enforce": drift).
A `manual = true` item (a benchmark's manual check) is judged the same way but
only reported: status manual, never drift, never remediated. Several items may
judge one flag under keys "<component>:<flag>#<label>" (one of them at most not
manual). `when = "embedded-etcd"` items (the apiserver's etcd client TLS) apply
only where K3s runs embedded etcd; elsewhere they are absent.
Remediation is opt-in (`remediate = "config"`): the missing settings are written
to <config>.d/90-k3s-agentd.yaml, each component flag once, only after every
path the new args name is in place; the item becomes pending. K3s is never
restarted by the agent.

The audit policy and the admission (Pod Security + EventRateLimit) config that
the apiserver args point to are kept in place like managed files: they must
exist, parse, and (when the policy gives their content) match it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
from collections.abc import Sequence
from importlib import resources
from typing import Any, Optional

import yaml

from k3s_agent.controls.base import ControlSpec, Lint, Watch, split_declined
from k3s_agent.host import Host, HostError
from k3s_agent.k3s import args as k3sargs
from k3s_agent.k3s import etcd as k3setcd
from k3s_agent.k3s import yamlcap
from k3s_agent.k3s.config import ConfigError, Configured, config_files, configured, merge_files, read_config
from k3s_agent.k3s.node import K3sNode, Observer
from k3s_agent.model import Finding, Status
from k3s_agent.policy.benchmark import BENCHMARKS, cis_number
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, list_of, matches, non_empty, one_of

NAME = "k3s_args"
OWN_DROPIN = "90-k3s-agentd.yaml"
SERVICE_KEY = "k3s:service"
CONFIG_KEY = "k3s:config"
JOURNAL_KEY = "k3s:running-args"
FILE_KEY = "k3s:file:"  # + the path of a unit, env or kubelet file that could not be read
# etcd: embedded etcd's config file, fields in dotted form ("etcd:peer-transport-security.cert-file").
ETCD = k3setcd.COMPONENT
COMPONENTS = (k3sargs.K3S, *k3sargs.COMPONENTS, ETCD)
_NAME = "[a-z0-9][a-z0-9-]*"
# "<component>:<flag>[#label]": a label lets several items judge one flag.
_KEY = re.compile(
    r"(?:(?:{}):{}|{}:{}(?:\.{})*)(?:#[A-Za-z0-9._-]+)?".format(
        "|".join(re.escape(c) for c in COMPONENTS if c != ETCD), _NAME, ETCD, _NAME, _NAME
    )
)
# Why the agent reports etcd drift and never fixes it.
ETCD_REMEDY = (
    "K3s rewrites this file from its own settings at each start (an --etcd-arg, or a changed "
    "file, would be why): fix K3s's configuration and restart K3s; the agent never edits it"
)
EMBEDDED_ETCD = "embedded-etcd"
# pflag StringSlice flags: given twice, the values add up (all others: the last wins).
LIST_FLAGS = frozenset(
    {
        "enable-admission-plugins",
        "disable-admission-plugins",
        "authorization-mode",
        "tls-cipher-suites",
        "api-audiences",
        "kubelet-preferred-address-types",
        "controllers",
        "tls-san",
        "node-label",
        "node-taint",
        "disable",
        "cluster-cidr",
        "service-cidr",
    }
)
# K3s flags whose effect shows in a component's Running line.
K3S_WITNESS = {
    "secrets-encryption": ("kube-apiserver", "encryption-provider-config"),
    "protect-kernel-defaults": ("kubelet", "protect-kernel-defaults"),
}
NEEDS_OPERATOR = "needs an operator"  # the service, its config, the journal: never ours to change
NOT_REMEDIATED = 'not remediated: set remediate = "config" to let the agent write K3s config'
NO_CONTENT = "the policy gives no content for it"
ETCD_DECLINED = "verify-only: K3s writes etcd's config itself"
FILE_KINDS = {
    "audit_policy": ("audit.k8s.io/", "Policy"),
    "admission_config": ("apiserver.", "AdmissionConfiguration"),
}


# What an item (or its `benchmark` table) may require of a flag.
REQUIREMENTS = ("value", "contains", "subset_of", "at_least", "set", "forbidden", "matches")


@dataclasses.dataclass(frozen=True)
class Judgement:
    ok: bool
    observed: Optional[str]
    why: str
    by_default: bool = False  # judged on the component's own default: the flag is not set


# In an etcd item's values: the node's configured data dir (K3sNode.data_dir), as
# k3s_agent.k3s.args.DATA_DIR_DEFAULTS spells it; etcd's file names paths K3s made under it.
DATA_DIR_MARK = "{data_dir}"


def on_data_dir(item: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """The item with DATA_DIR_MARK in its values (a string or a list of them) replaced by data_dir."""

    def put(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(DATA_DIR_MARK, data_dir.rstrip("/") or "/")
        if isinstance(value, list):
            return [put(v) for v in value]
        return value

    return {field: put(value) for field, value in item.items()}


def judge(
    values: Optional[Sequence[str]], item: dict[str, Any], flag: str, default: Optional[str] = None
) -> Judgement:
    """Does this flag's values (None/[] = not set) satisfy the item?

    An unset flag is judged by `default`, the value the component itself runs with
    (k3s_agent.k3s.args.COMPONENT_DEFAULTS), except for `set` and `subset_of`, which
    ask for the flag itself (kube-bench: the flag must be in the Running line).
    """
    given = list(values or [])
    if not given and item.get("unset_ok"):
        # The benchmark passes the flag when it is not passed at all, whatever the
        # component's default (kube-bench: `set: false` as an `or` alternative).
        return Judgement(True, None, "not set: the benchmark passes an unset flag")
    # set = true wants a value in effect ("--tls-cert-file=" is the component's default,
    # nothing set; given twice, pflag keeps the last); set = false wants no occurrence
    # at all, as kube-bench's presence test does.
    if "set" in item and (bool(_effective(given, flag)) if item["set"] else bool(given)) != bool(item["set"]):
        return Judgement(False, _effective(given, flag), "not set" if item["set"] else "must not be set")
    by_default = not given and default is not None
    values = [default] if by_default and default is not None else given
    effective = _effective(values, flag)
    shown = f"{effective} (default)" if by_default else effective
    members = k3sargs.list_members(values)
    unset = "not set" + (f", default {effective}" if by_default else "")
    if "value" in item:
        want = k3sargs.normalize_scalar(item["value"])
        if effective is None:
            return Judgement(False, None, f"not set (want {want})")
        if not k3sargs.same_value(item["value"], effective, bool(item.get("ordered", False))):
            return Judgement(False, shown, f"{unset if by_default else 'is ' + effective} (want {want})")
    if "matches" in item and (effective is None or not re.fullmatch(item["matches"], effective)):
        seen = unset if by_default else ("not set" if effective is None else f"is {effective}")
        return Judgement(False, shown, f"{seen} (want matching {item['matches']})")
    if "at_least" in item:
        number = _number(effective)
        if number is None or number < item["at_least"]:
            seen = unset if by_default else ("not set" if effective is None else f"is {effective}")
            return Judgement(False, shown, f"{seen} (want >= {item['at_least']:g})")
    if "subset_of" in item:
        extra = sorted(k3sargs.list_members(given) - set(item["subset_of"]))
        if not given:
            return Judgement(False, None, "not set (want a subset of the allowed list)")
        if extra:
            return Judgement(False, effective, f"has {','.join(extra)}, not in the allowed list")
    missing = [m for m in item.get("contains", ()) if m not in members]
    if missing:
        return Judgement(False, shown, f"lacks {','.join(missing)}")
    forbidden = item.get("forbidden", ())
    if "*" in forbidden and given:
        return Judgement(False, effective, "must not be set")
    # Exact matches name themselves; else the first entry the value means ("0" for "false").
    bad = (
        sorted(m for m in forbidden if m in members or m == effective)
        or [m for m in forbidden if _has(members, m) or (effective is not None and _same(m, effective))][:1]
    )
    if bad:
        note = " (its default)" if by_default else ""
        return Judgement(False, shown, f"has forbidden {','.join(bad)}{note}")
    return Judgement(True, shown, "", by_default)


def _same(want: str, seen: str) -> bool:
    """Equal as the component reads them; "Key=value" map entries by key and value
    (--feature-gates=RotateKubeletServerCertificate=False is the forbidden ...=false)."""
    if k3sargs.same_value(want, seen):
        return True
    want_key, sep, want_value = want.partition("=")
    seen_key, seen_sep, seen_value = seen.partition("=")
    return bool(sep and seen_sep) and want_key == seen_key and k3sargs.same_value(want_value, seen_value)


def _has(members: set[str], want: str) -> bool:
    return want in members or any(_same(want, member) for member in members)


def _effective(values: Sequence[str], flag: str) -> Optional[str]:
    if flag in LIST_FLAGS and len(values) > 1:
        return ",".join(values)
    return values[-1] if values else None


def _number(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _server_only(key: str) -> bool:
    return k3sargs.server_only(*split_key(key))


def split_key(key: str) -> tuple[str, str]:
    """("kube-apiserver", "enable-admission-plugins") of "kube-apiserver:enable-admission-plugins[#label]"."""
    component, flag = key.split(":", 1)
    return component, flag.split("#", 1)[0]


class K3sArgsControl:
    name = NAME

    def __init__(self, policy: ControlPolicy, host: Host, observer: Optional[Observer] = None):
        self.host = host
        self.items = {key: _for_benchmark(dict(item), policy.benchmark) for key, item in policy.items.items()}
        self.remediate = SPEC.option(policy, "remediate")
        self.observer = observer or Observer(host)
        self.files = {
            kind: (SPEC.option(policy, f"{kind}_file"), SPEC.option(policy, f"{kind}_content"))
            for kind in FILE_KINDS
            if SPEC.option(policy, f"{kind}_file")
        }
        self.beyond_benchmark = SPEC.option(policy, "beyond_benchmark")
        # Named in "stricter than CIS x.y" messages: the benchmark in force unless set.
        self.cis_version = SPEC.option(policy, "cis_version") or cis_number(policy.benchmark)
        self.last: Optional[K3sNode] = None

    # -- observe ----------------------------------------------------------------------

    def check(self) -> list[Finding]:
        node = self.observer.observe()
        self.last = node
        service = node.service
        if not service.installed:
            return [self._finding(key, Status.ABSENT, message="K3s is not installed") for key in self.items]
        findings = [self._service_finding(node)]
        if node.config_error:
            findings.append(Finding(NAME, CONFIG_KEY, Status.DRIFT, message=node.config_error))
        # Each problem starts with its file's path ("<path>: <why>").
        findings += [
            Finding(NAME, FILE_KEY + problem.split(": ", 1)[0], Status.DRIFT, message=problem)
            for problem in node.problems
        ]
        if service.running and node.running is not None:
            missing = [c for c in self._components(node) if node.running.get(c) is None]
            if node.running.error or missing:
                why = node.running.error or "no 'Running {}' line since {}".format(
                    "/".join(missing), node.running.since
                )
                findings.append(
                    Finding(NAME, JOURNAL_KEY, Status.DRIFT, message=why + ": running arguments unverified")
                )
        for key, item in self.items.items():
            findings.append(self._check_item(node, key, item))
        if service.role == "server":
            findings += [
                self._check_file(kind, path, content) for kind, (path, content) in self.files.items()
            ]
        return self._declined(node, findings)

    def _declined(self, node: K3sNode, findings: list[Finding]) -> list[Finding]:
        """The drift apply will leave, marked with why (Finding.declined): decided as apply decides."""
        drift = [f.key for f in findings if f.status is Status.DRIFT]
        files = {path: content for path, content in self.files.values()}
        why = {key: NEEDS_OPERATOR for key in drift if key not in files and key not in self.items}
        why.update((key, NO_CONTENT) for key in drift if key in files and self._content(files[key]) is None)
        # etcd's config is K3s's own file, rewritten at each start: verify-only
        why.update((key, ETCD_DECLINED) for key in drift if key in self.items and split_key(key)[0] == ETCD)
        items = [key for key in drift if key in self.items and key not in why]
        if items:
            # the config moved under us: apply decides, and says why
            with contextlib.suppress(ConfigError, OSError, HostError):
                refused, dropin = self._plan(node, items)
                why.update(refused)
                unready = self._not_written(node, dropin, prepare=False)
                why.update((key, unready) for key in items if unready and key not in why)
        return [dataclasses.replace(f, declined=why[f.key]) if f.key in why else f for f in findings]

    def _components(self, node: K3sNode) -> list[str]:
        """The components whose Running line the journal must show since K3s's start."""
        wanted = {split_key(k)[0] for k in self.items} - {k3sargs.K3S, ETCD}
        if node.service.role != "server":
            # An agent runs kube-proxy unless its SERVER disables it (k3s-io/k3s pkg/agent/
            # config: AgentConfig.DisableKubeProxy = controlConfig.DisableKubeProxy): nothing
            # on the agent says so, so a missing kube-proxy line is no journal problem there.
            wanted -= {*k3sargs.SERVER_COMPONENTS, "kube-proxy"}
        elif self._kube_proxy_disabled(node):
            wanted -= {"kube-proxy"}
        return sorted(wanted)

    @staticmethod
    def _kube_proxy_disabled(node: K3sNode) -> bool:
        """A server configured with disable-kube-proxy (a server flag: `k3s agent` drops it
        from its own config files and runs kube-proxy unless its server says otherwise)."""
        conf = node.configured
        return node.service.role == "server" and conf is not None and _true(conf.value("disable-kube-proxy"))

    def _service_finding(self, node: K3sNode) -> Finding:
        service = node.service
        desired = "running"
        if not service.running:
            state = service.state.get("ActiveState", "no process")
            return Finding(
                NAME,
                SERVICE_KEY,
                Status.DRIFT,
                desired,
                state,
                f"K3s is installed ({service.unit_name}) but not running",
            )
        where = f"pid {service.process.pid} ({service.process.comm})" if service.process else ""
        if service.under_unit is False:
            return Finding(
                NAME,
                SERVICE_KEY,
                Status.DRIFT,
                desired,
                where,
                f"K3s runs outside {service.unit_name} (started by hand?): its arguments are not the unit's",
            )
        return Finding(NAME, SERVICE_KEY, Status.OK, desired, f"{service.role} {where}".strip())

    def _finding(self, key: str, status: Status, **kw: Any) -> Finding:
        return Finding(NAME, key, status, cis=self.items.get(key, {}).get("cis"), **kw)

    def _check_item(self, node: K3sNode, key: str, item: dict[str, Any]) -> Finding:
        component, flag = split_key(key)
        desired = _describe_item(item)
        if component == ETCD:
            return self._check_etcd(node, key, flag, item)
        if k3sargs.server_only(component, flag) and node.service.role != "server":
            where = f"{component} runs" if component != k3sargs.K3S else f"--{flag} is a flag of"
            return self._finding(key, Status.ABSENT, desired=desired, message=f"{where} servers only")
        if component == "kube-proxy" and self._kube_proxy_disabled(node):
            return self._finding(key, Status.ABSENT, desired=desired, message="kube-proxy is disabled")
        etcd = self._embedded_etcd(node)
        if item.get("when") == EMBEDDED_ETCD and not etcd:
            why = "K3s runs no embedded etcd here (sqlite or an external datastore): not applicable"
            return self._finding(key, Status.ABSENT, desired=desired, message=why)
        if node.configured is None:
            return self._finding(key, Status.DRIFT, desired=desired, message="configured arguments unknown")
        conf, run = self._judgements(node, component, flag, item, etcd)
        observed: Any = conf.observed
        if run is not None and run.observed != conf.observed:
            observed = {"configured": conf.observed, "running": run.observed}
        verdict = _verdict(component, conf, run)
        if item.get("manual"):
            return self._finding(
                key, Status.MANUAL, desired=desired, observed=observed, message=_manual_note(verdict)
            )
        bench = item.get("benchmark")
        # Only drift is softened: a pending restart would still bring the stricter value.
        if verdict[0] is Status.DRIFT and bench:
            b_conf, b_run = self._judgements(node, component, flag, bench, etcd)
            if _verdict(component, b_conf, b_run)[0] is Status.OK:
                # Met by the benchmark, failed by the policy: the policy is stricter.
                note = (
                    f"stricter than CIS {self.cis_version}: {verdict[1]}; "
                    f"the benchmark ({_describe_item(bench)}) is met"
                )
                status = Status.OK if self.beyond_benchmark == "report" else verdict[0]
                return self._finding(key, status, desired=desired, observed=observed, message=note)
        status, message = verdict
        if status is Status.DRIFT and not conf.ok and not (run is not None and run.ok):
            message += _blame(node)
        return self._finding(key, status, desired=desired, observed=observed, message=message)

    def _check_etcd(self, node: K3sNode, key: str, field: str, item: dict[str, Any]) -> Finding:
        """A field of the etcd config K3s wrote at its last start: what etcd runs with.

        Verify-only (ETCD_REMEDY); a server without embedded etcd is not applicable.
        DATA_DIR_MARK in the item's values stands for the node's data dir (2.7's CA paths).
        """
        item = on_data_dir(item, node.data_dir)
        desired = _describe_item(item)
        if node.service.role != "server":
            return self._finding(key, Status.ABSENT, desired=desired, message="etcd runs on servers only")
        conf = node.etcd_config
        if conf is None:
            where = k3setcd.config_path(node.data_dir)
            why = f"not applicable: no embedded etcd ({where} absent: SQLite/kine or an external datastore)"
            return self._finding(key, Status.ABSENT, desired=desired, message=why)
        if conf.data is None:
            return self._finding(key, Status.DRIFT, desired=desired, message=f"{conf.error}: etcd unverified")
        got = judge(conf.values(field), item, field, k3setcd.default(field))
        if got.ok:
            message = "not set: the etcd default meets it" if got.by_default else got.why
            return self._finding(key, Status.OK, desired=desired, observed=got.observed, message=message)
        message = f"{conf.path}: {field} {got.why}; {ETCD_REMEDY}"
        return self._finding(key, Status.DRIFT, desired=desired, observed=got.observed, message=message)

    def _judgements(
        self, node: K3sNode, component: str, flag: str, item: dict[str, Any], etcd: bool = False
    ) -> tuple[Judgement, Optional[Judgement]]:
        default = None if component == k3sargs.K3S else k3sargs.component_default(component, flag)
        conf = judge(self._configured_values(node.configured, component, flag, etcd), item, flag, default)
        return conf, self._running_judgement(node, component, flag, item, default)

    @staticmethod
    def _configured_values(
        conf: Configured, component: str, flag: str, etcd: bool = False
    ) -> Optional[list[str]]:
        if component == k3sargs.K3S:
            return list(conf.values(flag))
        return k3sargs.configured_component_args(component, conf.flags, etcd=etcd).get(flag)

    def _embedded_etcd(self, node: K3sNode) -> bool:
        """K3s runs embedded etcd rather than kine (sqlite) or an external datastore.

        k3s-io/k3s pkg/cluster/managed.go: a managed etcd already initialized (its WAL
        dir <data-dir>/server/db/etcd/member/wal exists, pkg/etcd/etcd.go IsInitialized),
        or, with no --datastore-endpoint, --cluster-init or joining a --server.
        """
        conf = node.configured
        if conf is None or node.service.role != "server":
            return False
        data_dir = conf.value("data-dir") or k3sargs.DATA_DIR
        if self.host.is_dir(f"{data_dir}/server/db/etcd/member/wal"):
            return True
        if conf.value("datastore-endpoint"):
            return False
        return _true(conf.value("cluster-init")) or bool(conf.value("server"))

    def _running_judgement(
        self, node: K3sNode, component: str, flag: str, item: dict[str, Any], default: Optional[str] = None
    ) -> Optional[Judgement]:
        if component == k3sargs.K3S:
            witness = K3S_WITNESS.get(flag)
            if witness is None:
                return None
            args = node.running_args(witness[0])
            if args is None:
                return None
            values = args.get(witness[1])
            if flag == "secrets-encryption":
                # The K3s flag itself is not logged; its effect is the provider config arg.
                values = ["true"] if values else ["false"]
            return judge(values, item, flag)
        args = node.running_args(component)
        return None if args is None else judge(args.get(flag), item, flag, default)

    def _configured_without_own(self, node: K3sNode) -> Optional[Configured]:
        if node.service.unit is None or node.configured is None:
            return None
        return _configured_excluding(self.host, node, own_dropin(node.configured))

    # -- managed files (audit policy, admission config) -------------------------------

    def _check_file(self, kind: str, path: str, content: Optional[str]) -> Finding:
        api_prefix, want_kind = FILE_KINDS[kind]
        base = Finding(NAME, path, Status.OK, desired=f"{want_kind} ({api_prefix}*)")
        try:
            text = self.host.read_text(path)
        except HostError as exc:
            return base.with_status(Status.DRIFT, str(exc))
        if text is None:
            return dataclasses.replace(base, status=Status.DRIFT, observed="missing", message="missing")
        try:
            data = yamlcap.safe_load(text)
        except yaml.YAMLError as exc:
            return base.with_status(Status.DRIFT, f"not valid YAML: {exc}")
        if (
            not isinstance(data, dict)
            or data.get("kind") != want_kind
            or not str(data.get("apiVersion", "")).startswith(api_prefix)
        ):
            return base.with_status(Status.DRIFT, f"not a {want_kind}")
        if content is not None:
            want = load_content(self.host, content)
            if want is not None and _same_yaml(want, data) is False:
                return dataclasses.replace(
                    base, status=Status.DRIFT, observed="differs", message="differs from the policy's content"
                )
        st = self.host.lstat(path)
        if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != 0:
            return base.with_status(
                Status.DRIFT, f"mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}, want 0600 root"
            )
        return base

    # -- heal ---------------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        node = self.last or self.observer.observe()
        files = {path: (kind, content) for kind, (path, content) in self.files.items()}
        # declined by check(): the service, config and journal findings, a file
        # without content, items K3s's config would not take from our drop-in
        results, todo = split_declined(drift)
        fixable = []
        for finding in todo:
            if finding.key in files:
                results.append(self._write_file(finding, *files[finding.key]))
            elif finding.key in self.items and split_key(finding.key)[0] == ETCD:
                results.append(finding)  # verify-only: its message says what the operator does
            elif finding.key in self.items:
                fixable.append(finding)
            else:
                results.append(finding.with_status(Status.DRIFT, f"{finding.message}; {NEEDS_OPERATOR}"))
        if fixable:
            results += self._remediate(node, fixable)
        return results

    def _content(self, content: Optional[str]) -> Optional[str]:
        return load_content(self.host, content) if content else None

    def _write_file(self, finding: Finding, kind: str, content: Optional[str]) -> Finding:
        text = self._content(content)
        if text is None:
            return finding.with_status(Status.DRIFT, f"{finding.message}; {NO_CONTENT}")
        try:
            saved = self.host.write_atomic(finding.key, text.encode(), mode=0o600)
        except (OSError, HostError) as exc:
            return finding.with_status(Status.FAILED, f"cannot write {finding.key}: {exc}")
        note = f" (previous copy: {saved})" if saved else ""
        return finding.with_status(Status.HEALED, f"wrote the policy's {kind.replace('_', ' ')}{note}")

    def _dropin(self, node: K3sNode) -> tuple[str, str, Configured]:
        """(our drop-in's path, its content, K3s's config with it in place)."""
        assert node.configured is not None
        without = self._configured_without_own(node)
        path = own_dropin(node.configured)
        # An agent's drop-in never carries server settings (K3s would drop them with a warning).
        items = {
            k: v
            for k, v in self.items.items()
            if node.service.role == "server" or not k3sargs.server_only(*split_key(k))
        }
        settings = desired_settings(
            items,
            without or node.configured,
            carried_args(self.host, node.configured, path),
            self._embedded_etcd(node),
        )
        text = render_dropin(settings)
        # Would it work? Re-read K3s's config with the new file in place before writing it.
        return path, text, _configured_with(self.host, node, path, text)

    def _plan(
        self, node: K3sNode, keys: Sequence[str]
    ) -> tuple[dict[str, str], Optional[tuple[str, str, Configured]]]:
        """(why apply leaves each item it leaves, the drop-in it would write: None if none)."""
        if self.remediate != "config":
            return dict.fromkeys(keys, NOT_REMEDIATED), None
        if node.configured is None or node.service.unit is None:
            return dict.fromkeys(keys, "no K3s unit to configure"), None
        dropin = self._dropin(node)
        path, _, after = dropin
        etcd = self._embedded_etcd(node)
        why = {}
        for key in keys:
            component, flag = split_key(key)
            if node.service.role != "server" and _server_only(key):
                continue  # not judged on an agent (absent), so never drift
            if not self._holds_after(after, key, etcd):
                why[key] = (
                    f"cannot be fixed from {path}: an ExecStart flag, a later drop-in "
                    "or a forbidden value set elsewhere wins"
                )
            elif (
                component != k3sargs.K3S
                and len(self._configured_values(after, component, flag, etcd) or []) > 1
            ):
                why[key] = (
                    f"cannot be fixed from {path}: --{flag} would be passed twice "
                    "(also on the ExecStart line or in a later drop-in); kube-bench reads one"
                )
        return why, dropin

    def _remediate(self, node: K3sNode, drift: list[Finding]) -> list[Finding]:
        refused, dropin = self._plan(node, [f.key for f in drift])
        results = [
            f.with_status(Status.DRIFT, f"{f.message}; {refused[f.key]}") for f in drift if f.key in refused
        ]
        agent = node.service.role != "server"
        # a server component's item on an agent: answered as it is (check says absent)
        results += [f for f in drift if f.key not in refused and agent and _server_only(f.key)]
        todo = [f for f in drift if f.key not in refused and not (agent and _server_only(f.key))]
        if not todo or dropin is None:
            return results
        path, text, after = dropin
        unready = self._not_written(node, dropin, prepare=True)
        if unready:
            return results + [f.with_status(Status.DRIFT, f"{f.message}; {unready}") for f in todo]
        try:
            current = self.host.read_text(path)
            saved = None if current == text else self.host.write_atomic(path, text.encode(), mode=0o600)
        except (OSError, HostError) as exc:
            return results + [f.with_status(Status.FAILED, f"cannot write {path}: {exc}") for f in todo]
        note = f" (previous copy: {saved})" if saved else ""
        return results + [
            f.with_status(
                Status.PENDING,
                f"written to {path}{note}: restart pending (systemctl restart {node.service.unit_name})",
            )
            for f in todo
        ]

    def _holds_after(self, after: Configured, key: str, etcd: bool = False) -> bool:
        component, flag = split_key(key)
        item = self.items[key]
        default = None if component == k3sargs.K3S else k3sargs.component_default(component, flag)
        return judge(self._configured_values(after, component, flag, etcd), item, flag, default).ok

    # -- paths the apiserver needs before K3s may be restarted on our drop-in ----------

    def _not_written(
        self, node: K3sNode, dropin: Optional[tuple[str, str, Configured]], prepare: bool
    ) -> Optional[str]:
        """Why apply leaves the drop-in unwritten (a path the apiserver needs is not ready);
        None when it writes it. apply prepares the paths; check (prepare=False) only
        foresees the same decision, writing nothing."""
        if dropin is None or node.service.role != "server":
            return None
        path, _, after = dropin
        missing = self._prepare_paths(after, prepare)
        return f"{path} not written: {'; '.join(missing)} (K3s would not start)" if missing else None

    def _prepare_paths(self, after: Configured, prepare: bool = True) -> list[str]:
        """Make every file/dir the apiserver args name ready; what cannot be, as reasons.

        kube-apiserver exits at start on a missing --audit-policy-file or
        --admission-control-config-file, and on EventRateLimit without its
        configuration; K3s exits with it. So they must be in place first.
        prepare=False: the same reasons, foreseen without a write (a managed file
        the policy has content for, a log dir still to make, count as ready).
        """
        args = k3sargs.configured_component_args("kube-apiserver", after.flags)
        problems = []
        managed = {path: (kind, content) for kind, (path, content) in self.files.items()}
        for flag in ("audit-policy-file", "admission-control-config-file"):
            value = _last(args, flag)
            if value:
                problems += self._ensure_file(flag, value, managed.get(value), prepare)
        log = _last(args, "audit-log-path")
        if log and log != "-" and log.startswith("/"):
            problems += self._ensure_log_dir(os.path.dirname(log) or "/", prepare)
        plugins = k3sargs.list_members(args.get("enable-admission-plugins", []))
        admission = _last(args, "admission-control-config-file")
        if "EventRateLimit" in plugins and not problems:
            problems += self._event_rate_limit_ready(admission, managed.get(admission or ""))
        return problems

    def _ensure_file(
        self, flag: str, path: str, managed: Optional[tuple[str, Optional[str]]], prepare: bool = True
    ) -> list[str]:
        if managed is not None:
            kind, content = managed
            check = self._check_file(kind, path, content)
            if check.status is Status.OK:
                return []
            if not prepare:  # _write_file's one refusal we can foresee; a failing write we cannot
                return (
                    []
                    if self._content(content) is not None
                    else [f"--{flag} {path}: {check.message}; {NO_CONTENT}"]
                )
            written = self._write_file(check, kind, content)
            return [] if written.status is Status.HEALED else [f"--{flag} {path}: {written.message}"]
        try:
            st = self.host.stat(path)
        except FileNotFoundError:
            return [f"--{flag} {path} is missing"]
        if not stat.S_ISREG(st.st_mode):
            return [f"--{flag} {path} is not a regular file"]
        return _root_only(f"--{flag} {path}", st)

    def _ensure_log_dir(self, folder: str, prepare: bool = True) -> list[str]:
        try:
            st = self.host.ensure_dir(folder, mode=0o700) if prepare else self._log_dir_stat(folder)
        except (OSError, HostError) as exc:
            return [f"--audit-log-path directory {folder}: {exc}"]
        return [] if st is None else _root_only(f"--audit-log-path directory {folder}", st)

    def _log_dir_stat(self, folder: str) -> Optional[os.stat_result]:
        """What ensure_dir would answer, without making it: None when it would make it (0700 root)."""
        try:
            st = self.host.lstat(folder)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise HostError(f"{folder}: exists and is not a directory")  # ensure_dir's refusal
        return st

    def _event_rate_limit_ready(
        self, admission: Optional[str], managed: Optional[tuple[str, Optional[str]]] = None
    ) -> list[str]:
        """EventRateLimit needs its configuration in the admission config (inline or a `path`).

        A managed admission config is read from the policy's content: what
        _ensure_file has just put there (apply), or would (check).
        """
        if not admission:
            return ["EventRateLimit without --admission-control-config-file"]
        try:
            own = self._content(managed[1]) if managed is not None else None
            data = yamlcap.safe_load(
                own if own is not None else self.host.read_text(admission, follow=True) or ""
            )
        except (HostError, yaml.YAMLError) as exc:
            return [f"{admission}: {exc}"]
        plugins = data.get("plugins", []) if isinstance(data, dict) else []
        entry = next((p for p in plugins if isinstance(p, dict) and p.get("name") == "EventRateLimit"), None)
        if entry is None or not (entry.get("configuration") or entry.get("path")):
            return [f"{admission} has no EventRateLimit configuration"]
        ref = entry.get("path")
        if ref:
            # A relative path is relative to the admission config file (apiserver ReadAdmissionConfiguration).
            full = ref if str(ref).startswith("/") else os.path.join(os.path.dirname(admission), str(ref))
            return self._ensure_file("admission-control-config-file (EventRateLimit path)", full, None)
        return []

    def watches(self) -> list[Watch]:
        return [
            Watch("path", "/etc/rancher/k3s"),
            Watch("path", "/etc/rancher/k3s/config.yaml.d"),
            Watch("path", "/etc/systemd/system"),
        ]

    def describe(self) -> dict[str, object]:
        node = self.last
        if node is None:
            return {"items": len(self.items)}
        service = node.service
        return {
            "installed": service.installed,
            "role": service.role,
            "unit": service.unit_name,
            "pid": service.process.pid if service.process else None,
            "invocation": service.invocation_id,
            "config_files": list(node.configured.files) if node.configured else [],
            "running_since": node.running.since if node.running else None,
            "running_components": sorted(node.running.components) if node.running else [],
            "remediate": self.remediate,
        }


# -- remediation content ---------------------------------------------------------------------


def _verdict(component: str, conf: Judgement, run: Optional[Judgement]) -> tuple[Status, str]:
    """Configured x running -> (status, message), the table in the module docstring."""
    if conf.ok and (run is None or run.ok):
        if run is None:
            return Status.OK, "configured (running value not verifiable)"
        if run.by_default:
            return Status.OK, f"not set: the {component} default meets it"
        return Status.OK, run.why
    if conf.ok:
        return Status.PENDING, f"configured but not running: restart pending (running {run.why})"
    if run is not None and run.ok:
        return (
            Status.DRIFT,
            f"running but not configured (configured {conf.why}): lost at the next restart",
        )
    return Status.DRIFT, conf.why


def _manual_note(verdict: tuple[Status, str]) -> str:
    """A manual check's message: what the benchmark's audit would see, for review."""
    status, why = verdict
    seen = {Status.OK: "met", Status.PENDING: "met once K3s restarts"}.get(status, "not met")
    detail = f": {why}" if why and status is not Status.OK else ""
    return f"manual check, reported for review (never required or remediated): {seen}{detail}"


def _blame(node: K3sNode) -> str:
    """Our own drop-in is in place and the item still fails: something later wins."""
    if node.configured is None or own_dropin(node.configured) not in node.configured.files:
        return ""
    return f" (despite {own_dropin(node.configured)}: a later drop-in or an ExecStart flag overrides it)"


def own_dropin(conf: Configured) -> str:
    return f"{conf.config_path}.d/{OWN_DROPIN}"


def desired_settings(
    items: dict[str, dict[str, Any]],
    base: Configured,
    carried: Optional[dict[str, list[str]]] = None,
    etcd: bool = False,
) -> dict[str, Any]:
    """What to write so every item that `base` (K3s's config without our file) misses holds.

    `etcd`: K3s runs embedded etcd here (K3s then passes the apiserver's etcd client
    TLS itself); without it a `when = "embedded-etcd"` item is absent, never written.

    Component args go in as a whole `<component>-arg` list that REPLACES the one of
    the config files before ours (docs.k3s.io "Configuration File" > "Multiple Config
    Files": "the last value found for a given key will be used. A `+` can be appended
    to the key to append"). `carried` holds those files' entries: the operator's
    entries for other flags are carried over, theirs for a flag we set are dropped
    (our value already holds their list members), so each flag is passed ONCE. An
    appended second `enable-admission-plugins` is what kube-bench (reading one) fails.
    """
    out: dict[str, Any] = {}
    ours: dict[str, list[str]] = {}
    for key, item in sorted(items.items()):
        if item.get("manual"):
            continue  # reported only, never written
        component, flag = split_key(key)
        if component == ETCD:
            continue  # K3s's own file: verify-only
        if item.get("when") == EMBEDDED_ETCD and not etcd:
            continue  # not applicable on this node (check says absent)
        values = K3sArgsControl._configured_values(base, component, flag, etcd)
        default = None if component == k3sargs.K3S else k3sargs.component_default(component, flag)
        if judge(values, item, flag, default).ok:
            continue
        value = _remedy(item, values or [])
        if value is None:
            continue  # a forbidden value set elsewhere: nothing we can add fixes that
        if component == k3sargs.K3S:
            out[flag] = value
        else:
            ours.setdefault(k3sargs.EXTRA_ARG_FLAG[component], []).append(
                f"{flag}={k3sargs.normalize_scalar(value)}"
            )
    for arg_key, entries in ours.items():
        mine = {_arg_name(entry) for entry in entries}
        kept = [e for e in (carried or {}).get(arg_key, []) if _arg_name(e) not in mine]
        out[arg_key] = kept + entries
    return out


def _remedy(item: dict[str, Any], values: Sequence[str]) -> Any:
    """The value that satisfies the item, None when adding a value cannot."""
    if "value" in item:
        return item["value"]
    if "at_least" in item:
        number = item["at_least"]
        return int(number) if float(number).is_integer() else number
    if item.get("subset_of"):
        return ",".join(item["subset_of"])
    if item.get("contains"):
        members = sorted(k3sargs.list_members(values) | set(item["contains"]))
        return ",".join(m for m in members if m not in item.get("forbidden", ()))
    return None


def _arg_name(entry: str) -> str:
    """`name` of a "[--]name[+-]=value" extra-arg entry."""
    body = entry[2:] if entry.startswith("--") else entry
    return body.partition("=")[0].rstrip("+-")


def carried_args(host: Host, conf: Configured, own: str) -> dict[str, list[str]]:
    """`<component>-arg` entries of the config files K3s reads before `own` (merged as K3s does)."""
    files = config_files(host, conf.config_path)
    before = [f for f in files if f != own and (f == conf.config_path or f < own)]
    out: dict[str, list[str]] = {}
    keys = set(k3sargs.EXTRA_ARG_FLAG.values())
    for flag in merge_files(read_config(host, before)):
        name, _, value = flag.lstrip("-").partition("=")
        if name in keys:
            out.setdefault(name, []).append(value)
    return out


def render_dropin(settings: dict[str, Any]) -> str:
    head = (
        '# Managed by k3s-agentd (remediate = "config"): rewritten from its policy.\n'
        "# K3s reads it at its next start; the agent never restarts K3s.\n"
    )
    return head + (yaml.safe_dump(settings, default_flow_style=False, sort_keys=True) if settings else "{}\n")


def _configured_excluding(host: Host, node: K3sNode, skip: str) -> Configured:
    unit, conf = node.service.unit, node.configured
    files = [f for f in config_files(host, conf.config_path) if f != skip]
    return configured(host, unit.exec_start, unit.environment, files=files)


def _configured_with(host: Host, node: K3sNode, path: str, text: str) -> Configured:
    """K3s's config as it would be with `text` at `path` (a drop-in)."""
    unit, conf = node.service.unit, node.configured
    present = [f for f in config_files(host, conf.config_path) if f != path]
    main = [f for f in present if f == conf.config_path]
    dropins = sorted([*(f for f in present if f != conf.config_path), path])
    return configured(host, unit.exec_start, unit.environment, files=main + dropins, overrides={path: text})


def load_content(host: Host, name: str) -> Optional[str]:
    """Content given by the policy: an absolute path (read under the host root) or the
    name of a YAML file shipped with the built-in profiles."""
    if name.startswith("/"):
        try:
            return read_trusted(host, name)
        except (OSError, HostError):
            return None
    for folder in (resources.files("k3s_agent.policy") / "profiles").iterdir():
        candidate = folder / name
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return None


def read_trusted(host: Host, absolute: str) -> Optional[str]:
    """A content file's text, refused unless root owns it and only root can write it.

    Its content becomes K3s's audit policy or admission config, written as root:
    a file another user can edit must not decide that (same rule as the policy files).
    """
    got = host.read_stat(absolute)  # no final link followed; bounded
    if got is None:
        return None
    data, st = got
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise HostError(
            f"{absolute}: mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}; "
            "content must be owned by root and not group/other-writable"
        )
    return data.decode("utf-8", errors="replace")


def _same_yaml(text: str, data: Any) -> Optional[bool]:
    """Whether the policy's content says the same as data; None when it cannot be read."""
    try:
        return bool(yamlcap.safe_load(text) == data)
    except yaml.YAMLError:
        return None


def _describe_item(item: dict[str, Any]) -> str:
    parts = []
    if "value" in item:
        parts.append(f"= {k3sargs.normalize_scalar(item['value'])}")
    if "at_least" in item:
        parts.append(f">= {item['at_least']:g}")
    if "set" in item:
        parts.append("set" if item["set"] else "not set")
    if item.get("subset_of"):
        parts.append("subset of " + ",".join(item["subset_of"]))
    if item.get("contains"):
        parts.append("contains " + ",".join(item["contains"]))
    if "matches" in item:
        parts.append(f"matches {item['matches']}")
    if item.get("forbidden"):
        parts.append("not " + ",".join(item["forbidden"]))
    if item.get("unset_ok"):
        parts.append("or not set")
    return "; ".join(parts)


def _last(args: k3sargs.Args, flag: str) -> Optional[str]:
    values = args.get(flag)
    return values[-1] if values else None


def _true(value: Optional[str]) -> bool:
    return value is not None and k3sargs.go_bool(value) is True


# -- policy ----------------------------------------------------------------------------------


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    problems = []
    for key, item in control.items.items():
        if not any(k in item for k in REQUIREMENTS):
            problems.append(Lint(key, f"says nothing: give one of {', '.join(REQUIREMENTS)}"))
    enforced: dict[tuple[str, str], str] = {}
    for key, item in sorted(control.items.items()):
        if item.get("manual"):
            continue
        other = enforced.setdefault(split_key(key), key)
        if other != key:
            problems.append(Lint(key, f"judges the same flag as {other}: only one of them may be enforced"))
    plugins = control.items.get("kube-apiserver:enable-admission-plugins", {})
    wanted = set(plugins.get("contains", ())) | set(k3sargs.split_list(str(plugins.get("value", ""))))
    if "EventRateLimit" in wanted and "kube-apiserver:admission-control-config-file" not in control.items:
        problems.append(
            Lint(
                "kube-apiserver:enable-admission-plugins",
                "EventRateLimit without kube-apiserver:admission-control-config-file: "
                "kube-apiserver refuses to start without its configuration",
            )
        )
    for kind, flag in (
        ("audit_policy", "audit-policy-file"),
        ("admission_config", "admission-control-config-file"),
    ):
        item = control.items.get(f"kube-apiserver:{flag}", {})
        path = SPEC.option(control, f"{kind}_file")
        if path and "value" in item and item["value"] != path:
            problems.append(
                Lint(f"kube-apiserver:{flag}", f"points at {item['value']} but {kind}_file keeps {path}")
            )
    for kind in FILE_KINDS:
        content = SPEC.option(control, f"{kind}_content")
        if content and not content.startswith("/") and load_content(host, content) is None:
            problems.append(Lint("", f"{kind}_content: no built-in file named {content!r}"))
        elif content and content.startswith("/"):
            try:
                read_trusted(host, content)
            except (OSError, HostError) as exc:
                problems.append(Lint("", f"{kind}_content: {exc}"))
    return problems


def _key_check(key: str) -> Optional[str]:
    if not _KEY.fullmatch(key):
        return f"{key!r} is not <component>:<flag> with component one of {', '.join(COMPONENTS)}"
    return None


def _benchmark_check(table: Any) -> Optional[str]:
    """Why a `benchmark` value is wrong: a requirement table, or a table of them per
    benchmark name ({ "k3s-cis-1.8" = { subset_of = [...] }, ... })."""
    if table and all(name in BENCHMARKS for name in table):
        for name, requirement in table.items():
            problem = _requirement_check(requirement) if isinstance(requirement, dict) else "expected a table"
            if problem:
                return f"{name}: {problem}"
        return None
    return _requirement_check(table)


def _for_benchmark(item: dict[str, Any], benchmark: str) -> dict[str, Any]:
    """The item with its `benchmark` requirement of the benchmark in force: a per-benchmark
    table gives that benchmark's entry (none: the item is the benchmark's own requirement)."""
    table = item.get("benchmark")
    if not (isinstance(table, dict) and table and all(name in BENCHMARKS for name in table)):
        return item
    out = {k: v for k, v in item.items() if k != "benchmark"}
    if benchmark in table:
        out["benchmark"] = table[benchmark]
    return out


def _requirement_check(table: dict[str, Any]) -> Optional[str]:
    unknown = sorted(set(table) - {*REQUIREMENTS, "ordered"})
    if unknown:
        return f"unknown key {unknown[0]!r} (known: {', '.join(REQUIREMENTS)}, ordered)"
    if not any(k in table for k in REQUIREMENTS):
        return f"says nothing: give one of {', '.join(REQUIREMENTS)}"
    for key in ("contains", "subset_of", "forbidden"):
        value = table.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"{key}: expected an array of strings"
    number = table.get("at_least", 0)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return "at_least: expected a number"
    if "set" in table and not isinstance(table["set"], bool):
        return "set: expected true or false"
    if "matches" in table:
        return _regex_check(table["matches"])
    return None


def _regex_check(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return "matches: expected a non-empty regular expression"
    try:
        re.compile(value)
    except re.error as exc:
        return f"matches: not a regular expression: {exc}"
    return None


def _build(policy: ControlPolicy, host: Host) -> K3sArgsControl:
    return K3sArgsControl(policy, host)


_ABS = matches(r"/[^\0]*", "an absolute path")

SPEC = ControlSpec(
    name=NAME,
    build=_build,
    options={
        "remediate": Field(
            str,
            one_of("none", "config"),
            default="none",
            doc="config: write missing settings to config.yaml.d",
        ),
        "audit_policy_file": Field(str, _ABS, doc="audit policy file the apiserver reads"),
        "audit_policy_content": Field(
            str, non_empty, doc="built-in file name or absolute path of its content"
        ),
        "admission_config_file": Field(str, _ABS, doc="admission config (Pod Security, EventRateLimit)"),
        "admission_config_content": Field(
            str, non_empty, doc="built-in file name or absolute path of its content"
        ),
        "beyond_benchmark": Field(
            str,
            one_of("report", "enforce"),
            default="report",
            doc="an item stricter than its met `benchmark`: report (ok, noted) or enforce (drift)",
        ),
        "cis_version": Field(
            str, non_empty, doc="the CIS version messages name (default: that of the benchmark in force)"
        ),
    },
    item_fields={
        "value": Field(
            (str, int, bool), doc="the flag's value (bool spellings, durations, comma sets compared)"
        ),
        "contains": Field(list, list_of(str, non_empty), doc="members a comma-list flag must hold"),
        "forbidden": Field(
            list, list_of(str, non_empty), doc='values that must not be set ("*": the flag itself)'
        ),
        "ordered": Field(bool, doc="compare a comma list in order"),
        "subset_of": Field(
            list, list_of(str, non_empty), doc="allowed members: the flag is set and holds only these"
        ),
        "at_least": Field((int, float), doc="a number the flag's value must reach"),
        "unset_ok": Field(
            bool, doc="the flag not passed at all passes, whatever the component's default (as the benchmark)"
        ),
        "matches": Field(str, _regex_check, doc="a regular expression the whole value must match"),
        "manual": Field(bool, doc="a benchmark's manual check: reported (status manual), never required"),
        "when": Field(str, one_of(EMBEDDED_ETCD), doc="embedded-etcd: only where K3s runs embedded etcd"),
        "set": Field(bool, doc="true: the flag must be passed (its default does not count); false: must not"),
        "benchmark": Field(
            dict,
            _benchmark_check,
            doc="the benchmark's own (weaker) requirement, same keys: met = ok, noted; "
            "or one such table per benchmark name (the one in force applies)",
        ),
    },
    item_key=_key_check,
    lint=lint,
    doc="K3s arguments: configured vs running vs policy",
)


def _root_only(what: str, st: os.stat_result) -> list[str]:
    """[] when root owns it and nobody else may write it, else why not (K3s would trust it)."""
    if st.st_uid != 0 or st.st_mode & 0o022:
        return [
            f"{what}: mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}, "
            "want root-owned, not group/other-writable"
        ]
    return []
