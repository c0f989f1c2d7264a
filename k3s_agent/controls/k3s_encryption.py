"""Secrets encryption at rest on K3s servers: verify-only.

Facts (k3s-io/k3s pkg/secretsencrypt/config.go):
- <data-dir>/server/cred/encryption-config.json is written by K3s as compact
  JSON (json.Marshal of an apiserver.config.k8s.io/v1 EncryptionConfiguration),
  mode 0600; resources ["secrets"]; encryption on = aescbc (or secretbox with
  --secrets-encryption-provider) first and identity last; identity first = off.
  K3s's key tooling (GetEncryptionKeys) refuses aesgcm, kms and more than two
  providers, so such a config cannot be rotated with `k3s secrets-encrypt`.
- <data-dir>/server/cred/encryption-state.json is plain text, not JSON:
  "<stage>-<sha256 hex of the config file's raw bytes>" (WriteEncryptionHashAnnotation
  writes the same string to the node annotation k3s.io/encryption-config-hash).
  A hash that does not match means the config was edited outside K3s.
- `k3s secrets-encrypt status -o json` prints the server's EncryptionState
  (pkg/server/secrets-encrypt.go): stage, activekey, enable, hashmatch,
  hasherror, inactivekeys, all but stage/activekey `omitempty` (a false
  hashmatch is simply absent). hashmatch compares the annotation across all
  control-plane nodes: the agent's only cross-server witness.
- kube-apiserver runs with --encryption-provider-config=<that file>.

The witness call talks to the apiserver, so its answer is cached (see WitnessCache):
targeted event checks must not turn into a K3s CLI call each.

The agent never writes keys or this config: every finding stays drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import stat
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from k3s_agent.controls.base import ControlSpec, Lint, Watch
from k3s_agent.host import Host, HostError
from k3s_agent.k3s.node import K3sNode, Observer
from k3s_agent.model import Finding, Status
from k3s_agent.policy.model import ControlPolicy, Policy
from k3s_agent.policy.schema import Field, list_of, one_of

NAME = "k3s_encryption"
CONFIG = "server/cred/encryption-config.json"
STATE = "server/cred/encryption-state.json"
SETTLED = ("start", "reencrypt_finished")
IN_PROGRESS = ("prepare", "rotate", "rotate_keys", "reencrypt_request", "reencrypt_active")
CIPHERS = ("aescbc", "secretbox", "aesgcm", "kms")
CHECKS = ("encryption-config", "encryption-state", "apiserver-flag", "cluster-hashes")
VERIFY_ONLY = "verify-only: never writes keys or config"
_STATE = re.compile(r"([a-z_]+)-([0-9a-f]{64})")

StatusRunner = Callable[[Host, str], Any]  # (host, binary) -> CompletedProcess-like
MAX_AGE = 60.0  # = the default sweep interval: one witness call per sweep at most
RETRY = 10.0  # a failed call (apiserver starting, timeout) is asked again sooner


def run_status(host: Host, binary: str) -> Any:
    return host.run([binary, "secrets-encrypt", "status", "-o", "json"], timeout=20)


@dataclasses.dataclass(frozen=True)
class ConfigView:
    raw: Optional[bytes]
    problem: str  # why the file itself is not acceptable ("" = fine)
    providers: tuple[str, ...]
    key_count: int


@dataclasses.dataclass(frozen=True)
class WitnessAnswer:
    key: tuple[object, ...]  # what the answer depends on locally (see witness_key)
    at: float  # monotonic time of the call
    finding: Finding
    data: Optional[dict[str, Any]]  # the parsed status; None = the call failed


def witness_fresh(age: float, failed: bool, max_age: float, retry: float) -> bool:
    """May an answer this old be reused? Failures live `retry`, answers `max_age`;
    a negative age (clock trouble) never counts as fresh."""
    return 0 <= age < (min(retry, max_age) if failed else max_age)


def witness_key(host: Host, node: K3sNode, paths: Sequence[str]) -> tuple[object, ...]:
    """The local inputs of the witness answer: the K3s run (binary, invocation, start)
    and the identity of the config and state files. A change of any means ask again."""
    service = node.service
    files = (_stat_key(host, path) for path in paths)
    return (service.binary, service.invocation_id, service.started_at, *files)


def _stat_key(host: Host, path: str) -> Optional[tuple[int, int, int, int]]:
    try:
        st = host.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class K3sEncryptionControl:
    name = NAME

    def __init__(
        self,
        policy: ControlPolicy,
        host: Host,
        observer: Optional[Observer] = None,
        status_runner: StatusRunner = run_status,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.host = host
        self.items = {key: dict(item) for key, item in policy.items.items()}
        self.allowed = tuple(SPEC.option(policy, "providers"))
        self.stuck_after = float(SPEC.option(policy, "stuck_after"))
        self.observer = observer or Observer(host)
        self.status_runner = status_runner
        self.clock = clock
        self.monotonic = monotonic
        self.witness_max_age = float(SPEC.option(policy, "witness_max_age"))
        self.witness_retry = float(SPEC.option(policy, "witness_retry"))
        self.witness: Optional[WitnessAnswer] = None
        self.facts: dict[str, object] = {}

    # -- observe ------------------------------------------------------------------------

    def check(self) -> list[Finding]:
        node = self.observer.observe()
        service = node.service
        if not service.installed:
            return [self._f(key, Status.ABSENT, message="K3s is not installed") for key in self.items]
        if service.role != "server":
            return [self._f(key, Status.ABSENT, message="not a K3s server") for key in self.items]
        config_path = f"{node.data_dir}/{CONFIG}"
        state_path = f"{node.data_dir}/{STATE}"
        view = self._read_config(config_path)
        checks = {
            "encryption-config": lambda: self._check_config(config_path, view, node),
            "encryption-state": lambda: self._check_state(state_path, view),
            "apiserver-flag": lambda: self._check_flag(node, config_path),
            "cluster-hashes": lambda: self._check_witness(node, (config_path, state_path)),
        }
        self.facts = {"config": config_path, "providers": list(view.providers), "keys": view.key_count}
        return [checks[key]() for key in self.items if key in checks]

    def _f(self, key: str, status: Status, **kw: Any) -> Finding:
        return Finding(NAME, key, status, cis=self.items.get(key, {}).get("cis"), **kw)

    def _read_config(self, path: str) -> ConfigView:
        problem = _file_problem(self.host, path)
        if problem == "missing":
            return ConfigView(None, "missing", (), 0)
        try:
            raw = self.host.read_bytes(path)
        except (HostError, OSError) as exc:
            return ConfigView(None, str(exc), (), 0)
        providers, keys, why = parse_config(raw or b"")
        return ConfigView(raw, problem or why, providers, keys)

    def _check_config(self, path: str, view: ConfigView, node: K3sNode) -> Finding:
        desired = f"{path}: 0600 root, secrets first encrypted with {'/'.join(self.allowed)}"
        observed = ",".join(view.providers) or None
        if view.problem:
            if view.problem == "missing":
                off = node.configured is None or node.configured.value("secrets-encryption") is None
                why = "missing" + (": secrets-encryption is not enabled" if off else "")
                return self._f(
                    "encryption-config", Status.DRIFT, desired=desired, observed="missing", message=why
                )
            return self._f(
                "encryption-config", Status.DRIFT, desired=desired, observed=observed, message=view.problem
            )
        first = view.providers[0]
        if first == "identity":
            return self._f(
                "encryption-config",
                Status.DRIFT,
                desired=desired,
                observed=observed,
                message="identity is the first provider: new secrets are stored unencrypted",
            )
        if first not in self.allowed:
            why = f"first provider {first} is not one of {', '.join(self.allowed)}"
            if first in ("aesgcm", "kms"):
                why += f" (Kubernetes accepts {first}, but `k3s secrets-encrypt` refuses to rotate it)"
            return self._f("encryption-config", Status.DRIFT, desired=desired, observed=observed, message=why)
        return self._f("encryption-config", Status.OK, desired=desired, observed=observed)

    def _check_state(self, path: str, view: ConfigView) -> Finding:
        desired = "<stage>-sha256(encryption-config.json), stage settled"
        problem = _file_problem(self.host, path)
        if problem:
            return self._f(
                "encryption-state",
                Status.DRIFT,
                desired=desired,
                observed=problem,
                message=f"{path}: {problem}",
            )
        try:
            text = (self.host.read_text(path) or "").strip()
        except (HostError, OSError) as exc:
            return self._f("encryption-state", Status.DRIFT, desired=desired, message=str(exc))
        match = _STATE.fullmatch(text)
        if not match:
            return self._f(
                "encryption-state",
                Status.DRIFT,
                desired=desired,
                observed=text[:80],
                message="not <stage>-<sha256 hex>",
            )
        stage, recorded = match.groups()
        self.facts["stage"] = stage
        if view.raw is not None:
            actual = hashlib.sha256(view.raw).hexdigest()
            if actual != recorded:
                return self._f(
                    "encryption-state",
                    Status.DRIFT,
                    desired=desired,
                    observed=f"{stage}-{recorded[:12]}…",
                    message=f"hash mismatch: encryption-config.json (sha256 {actual[:12]}…) was changed "
                    "outside `k3s secrets-encrypt`",
                )
        if stage in SETTLED:
            return self._f("encryption-state", Status.OK, desired=desired, observed=stage)
        if stage not in IN_PROGRESS:
            return self._f(
                "encryption-state",
                Status.DRIFT,
                desired=desired,
                observed=stage,
                message=f"unknown stage {stage!r}",
            )
        age = self.clock() - self.host.lstat(path).st_mtime
        if age > self.stuck_after:
            return self._f(
                "encryption-state",
                Status.DRIFT,
                desired=desired,
                observed=stage,
                message=f"key rotation stuck in stage {stage} for {age / 3600:.1f}h "
                f"(limit {self.stuck_after / 3600:g}h)",
            )
        return self._f(
            "encryption-state",
            Status.OK,
            desired=desired,
            observed=stage,
            message=f"key rotation in progress ({stage})",
        )

    def _check_flag(self, node: K3sNode, path: str) -> Finding:
        desired = f"--encryption-provider-config={path}"
        args = node.running_args("kube-apiserver")
        if args is None:
            why = (
                "K3s is not running"
                if not node.service.running
                else "no Running kube-apiserver line since the start"
            )
            configured = node.configured_args("kube-apiserver") or {}
            seen = (configured.get("encryption-provider-config") or [None])[-1]
            status = Status.OK if seen == path else Status.DRIFT
            return self._f(
                "apiserver-flag", status, desired=desired, observed=seen, message=f"configured only ({why})"
            )
        seen = (args.get("encryption-provider-config") or [None])[-1]
        if seen != path:
            what = "not set" if seen is None else f"points at {seen}"
            return self._f(
                "apiserver-flag",
                Status.DRIFT,
                desired=desired,
                observed=seen,
                message=f"running kube-apiserver: {what}",
            )
        return self._f("apiserver-flag", Status.OK, desired=desired, observed=seen)

    def _check_witness(self, node: K3sNode, paths: Sequence[str]) -> Finding:
        desired = "hashmatch across control-plane nodes"
        binary = node.service.binary
        if binary is None:
            return self._f(
                "cluster-hashes", Status.ABSENT, desired=desired, message="no k3s binary: no second witness"
            )
        if not node.service.running:
            return self._f(
                "cluster-hashes",
                Status.ABSENT,
                desired=desired,
                message="K3s is not running: no second witness",
            )
        key = witness_key(self.host, node, paths)
        now = self.monotonic()
        cached = self.witness
        if cached is not None and cached.key == key:
            age = now - cached.at
            if witness_fresh(age, cached.data is None, self.witness_max_age, self.witness_retry):
                return self._cached(cached, age)
        finding, data = self._ask_witness(binary, desired)
        self.witness = WitnessAnswer(key, now, finding, data)
        return finding

    def _cached(self, answer: WitnessAnswer, age: float) -> Finding:
        """The cached finding, saying so and how old it is."""
        if answer.data is not None:
            self.facts["witness"] = answer.data
        self.facts["witness_age"] = round(age, 1)
        note = f"cached `k3s secrets-encrypt status` answer, {age:.0f} s old"
        message = f"{answer.finding.message}; {note}" if answer.finding.message else note
        return dataclasses.replace(answer.finding, message=message)

    def _ask_witness(self, binary: str, desired: str) -> tuple[Finding, Optional[dict[str, Any]]]:
        """Run `k3s secrets-encrypt status -o json`: (finding, parsed answer or None on failure)."""

        def failed(why: str) -> tuple[Finding, None]:
            return self._f("cluster-hashes", Status.DRIFT, desired=desired, message=why), None

        try:
            done = self.status_runner(self.host, self.host.path(binary))
        except HostError as exc:
            return failed(f"k3s secrets-encrypt status: {exc}")
        if done.returncode != 0:
            err = (done.stderr or done.stdout or "").strip().splitlines()
            why = err[-1] if err else f"exit {done.returncode}"
            return failed(f"k3s secrets-encrypt status failed: {why}")
        try:
            data = json.loads(done.stdout)
        except ValueError:
            return failed("k3s secrets-encrypt status: not JSON")
        if not isinstance(data, dict):
            return failed("k3s secrets-encrypt status: not a JSON object")
        self.facts["witness"] = data
        return self._judge_witness(data, desired), data

    def _judge_witness(self, data: dict[str, Any], desired: str) -> Finding:
        match = bool(data.get("hashmatch", False))  # omitempty: absent = false
        if not match:
            why = data.get("hasherror") or "hashes differ between servers"
            return self._f("cluster-hashes", Status.DRIFT, desired=desired, observed="mismatch", message=why)
        if data.get("enable") is False:
            return self._f(
                "cluster-hashes",
                Status.DRIFT,
                desired=desired,
                observed="disabled",
                message="K3s reports encryption disabled",
            )
        return self._f(
            "cluster-hashes", Status.OK, desired=desired, observed=f"match (stage {data.get('stage', '?')})"
        )

    # -- verify-only -----------------------------------------------------------------------

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        return [f.with_status(Status.DRIFT, f"{f.message}; {VERIFY_ONLY}") for f in drift]

    def watches(self) -> list[Watch]:
        return [Watch("path", "/var/lib/rancher/k3s/server/cred")]

    def describe(self) -> dict[str, object]:
        return dict(self.facts, verify_only=True)


def parse_config(raw: bytes) -> tuple[tuple[str, ...], int, str]:
    """(provider names in order, keys of the first provider, problem) of an EncryptionConfiguration."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return (), 0, f"not valid JSON: {exc}"
    if not isinstance(data, dict) or data.get("kind") != "EncryptionConfiguration":
        return (), 0, "not an EncryptionConfiguration"
    if data.get("apiVersion") not in ("apiserver.config.k8s.io/v1", "apiserver.config.k8s.io/v1beta1"):
        return (), 0, f"unexpected apiVersion {data.get('apiVersion')!r}"
    for entry in data.get("resources") or []:
        if not isinstance(entry, dict):
            continue
        if "secrets" in (entry.get("resources") or []) or "*.*" in (entry.get("resources") or []):
            providers = [p for p in entry.get("providers") or [] if isinstance(p, dict)]
            names = tuple(next(iter(p), "?") for p in providers)
            if not names:
                return (), 0, "secrets have no providers"
            first = providers[0].get(names[0]) or {}
            keys = len(first.get("keys") or []) if isinstance(first, dict) else 0
            if names[0] in ("aescbc", "secretbox", "aesgcm") and keys == 0:
                return names, 0, f"first provider {names[0]} has no keys"
            return names, keys, ""
    return (), 0, "secrets are not covered by any resources entry"


def _file_problem(host: Host, path: str) -> str:
    """ "" when path is a regular file, mode 0600 (or stricter), owned by root:root."""
    try:
        st = host.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink (not followed)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o177:
        return f"mode {mode:04o}, want 0600"
    if (st.st_uid, st.st_gid) != (0, 0):
        return f"owner {st.st_uid}:{st.st_gid}, want root:root"
    return ""


def lint(control: ControlPolicy, policy: Policy, host: Host) -> list[Lint]:
    problems = []
    if "identity" in SPEC.option(control, "providers"):
        problems.append(Lint("", "providers: identity is no encryption"))
    return problems


def _key_check(key: str) -> Optional[str]:
    return None if key in CHECKS else f"{key!r} is not one of {', '.join(CHECKS)}"


def _build(policy: ControlPolicy, host: Host) -> K3sEncryptionControl:
    return K3sEncryptionControl(policy, host)


SPEC = ControlSpec(
    name=NAME,
    build=_build,
    options={
        "providers": Field(
            list,
            list_of(str, one_of(*CIPHERS)),
            default=("aescbc", "secretbox"),
            doc="acceptable first providers",
        ),
        "stuck_after": Field(float, min=60, default=3600.0, doc="seconds a rotation stage may last"),
        "witness_max_age": Field(
            float,
            min=0,
            default=MAX_AGE,
            doc="seconds a `secrets-encrypt status` answer is reused (0 = every check)",
        ),
        "witness_retry": Field(
            float, min=0, default=RETRY, doc="seconds a failed `secrets-encrypt status` is reused"
        ),
    },
    item_fields={},
    item_key=_key_check,
    lint=lint,
    verify_only=True,
    doc="secrets encryption config, its hash, the apiserver flag, cross-server hashes (verify-only)",
)
