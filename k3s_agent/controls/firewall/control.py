"""The firewall Control: choose a backend, build the ruleset, compare, heal atomically."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional, Union

from k3s_agent.controls.base import Watch
from k3s_agent.controls.firewall import cni, desired, guard, hostnet, iptinfo
from k3s_agent.controls.firewall.compare import NAME, findings
from k3s_agent.controls.firewall.detect import Choice, choose
from k3s_agent.controls.firewall.ipt import IptablesBackend, IptError, legacy_filter_loaded
from k3s_agent.controls.firewall.model import TABLE, Rule, Ruleset
from k3s_agent.controls.firewall.nft import NftBackend, NftError
from k3s_agent.controls.firewall.options import OPTIONS
from k3s_agent.host import Host, in_initial_netns
from k3s_agent.k3s import facts as k3s
from k3s_agent.model import Finding, Status
from k3s_agent.policy.model import ControlPolicy
from k3s_agent.policy.schema import setting
from k3s_agent.sshd import facts as sshd

Backend = Union[NftBackend, IptablesBackend]
ROOTED_IN_HOST_NETNS = (
    "refusing to change the firewall: this run has a --root other than / but shares the "
    "host's network namespace, so it would rewrite the real host's netfilter rules"
)
NOT_CONFIGURED = "no firewall policy (no default_input, no items): nothing enforced, nothing touched"


class FirewallControl:
    name = NAME

    def __init__(self, policy: ControlPolicy, host: Host, inputs: Optional[desired.Inputs] = None):
        self.policy = policy
        self.host = host
        self._fixed_inputs = inputs  # tests pin these; otherwise read fresh every check
        self.choice: Optional[Choice] = None
        self.backend: Optional[Backend] = None
        self.unavailable = ""
        self.ssh_how = ""
        self.sshd_answers = sshd.Answers(host)  # this control's own `sshd -T` cache
        self.inputs: Optional[desired.Inputs] = None

    def _option(self, key: str) -> Any:
        return setting(self.policy.options, OPTIONS, key)

    # -- setup ------------------------------------------------------------------------

    def _backend(self) -> Optional[Backend]:
        if self.backend is None and not self.unavailable:
            self.choice = choose(self.host, self._option("backend"))
            try:
                if self.choice.backend == "iptables":
                    self.backend = IptablesBackend()
                else:
                    nft = NftBackend(self.host)
                    why = nft.runner.available()
                    if why:
                        raise NftError(why)
                    self.backend = nft
            except (ImportError, NftError, IptError, OSError) as exc:
                self.unavailable = f"{self.choice.backend} unusable here: {exc}"
            except Exception as exc:  # noqa: BLE001 - libiptc reports a missing kernel table this way
                self.unavailable = f"{self.choice.backend} unusable here: {type(exc).__name__}: {exc}"
        return self.backend

    def _read_inputs(self) -> desired.Inputs:
        fixed = self._fixed_inputs
        if fixed is not None:
            if fixed.cni is not None:
                return fixed
            return dataclasses.replace(fixed, cni=self._cni(fixed.k3s))
        ports, self.ssh_how = hostnet.ssh_ports(self.host, list(self._option("ssh_ports")), self.sshd_answers)
        facts = k3s.read_facts(self.host)
        return desired.Inputs(
            k3s=facts,
            ssh_ports=tuple(ports),
            local_subnets=hostnet.local_subnets(),
            cni=self._cni(facts),
        )

    def _cni(self, facts: k3s.K3sFacts) -> cni.Cni:
        return cni.detect(self.host, facts.flannel_backend, self._option("cni"))

    def cni_refusal(self, ruleset: Ruleset) -> str:
        """Why the drop must not be enforced: a CNI we cannot name would lose its pod traffic."""
        assert self.inputs is not None
        return self.inputs.network().refusal(ruleset.default_input)

    def ruleset(self) -> Ruleset:
        self.inputs = self._read_inputs()
        ruleset = desired.build(self.policy, self.inputs)
        if self.backend is not None and self.backend.name == "iptables" and ruleset.default_input == "drop":
            final = Rule("default-drop", action="drop", comment="default_input = drop")
            ruleset = Ruleset((*ruleset.rules, final), ruleset.default_input, ruleset.jump_position)
        return ruleset

    def leftover(self) -> Optional[Backend]:
        """The other backend, when a ruleset of ours is still loaded there.

        Switching backends (policy change, or auto seeing K3s switch) must not
        leave our old table/chain filtering behind, e.g. an nft table with
        policy drop next to fresh iptables rules.
        """
        other: Optional[Backend] = None
        try:
            if isinstance(self.backend, NftBackend):
                if legacy_filter_loaded(self.host.proc):
                    other = IptablesBackend()
            else:
                other = NftBackend(self.host)  # present() is False where nft cannot answer
            return other if other is not None and other.present() else None
        except Exception:  # noqa: BLE001 - the other backend may not work here at all: then nothing is left
            return None

    def guard_problems(self, ruleset: Ruleset) -> list[str]:
        if self._option("allow_lockout"):
            return []
        assert self.inputs is not None
        management = desired.symbols(self.policy, self.inputs)["@management"]
        # The interfaces are read afresh every time, in this thread's network
        # namespace: a NIC renamed or added since the last heal is walked too.
        interfaces = self.host.net_interfaces()
        return guard.lockout_problems(ruleset, self.inputs.ssh_ports, management, interfaces)

    # -- the contract ---------------------------------------------------------------------

    def check(self) -> list[Finding]:
        if not desired.configured(self.policy):
            return [Finding(NAME, "firewall", Status.ABSENT, None, None, NOT_CONFIGURED)]
        backend = self._backend()
        if backend is None:
            return [
                Finding(
                    NAME,
                    "backend",
                    Status.UNSUPPORTED,
                    self._option("backend"),
                    None,
                    self.unavailable,
                )
            ]
        ruleset = self.ruleset()
        try:
            observed = backend.observe(ruleset)
        except (NftError, IptError, OSError) as exc:
            return [Finding(NAME, "backend", Status.FAILED, backend.name, None, f"cannot read rules: {exc}")]
        result = findings(ruleset, backend.render(ruleset), observed)
        other = self.leftover()
        result.append(
            Finding(NAME, "leftovers", Status.OK, "none", None)
            if other is None
            else Finding(
                NAME,
                "leftovers",
                Status.DRIFT,
                "none",
                other.name,
                f"our {other.name} ruleset from an earlier backend is still loaded and still filters",
            )
        )
        problems = guard.refusal(self.guard_problems(ruleset))
        if problems:
            # Still report drift, but say up front that apply will refuse.
            result.insert(0, Finding(NAME, "lockout-guard", Status.DRIFT, "ssh reachable", None, problems))
        unknown = self.cni_refusal(ruleset)
        if unknown:
            result.insert(0, Finding(NAME, "cni", Status.DRIFT, "a known CNI", "unknown", unknown))
        return result

    def apply(self, drift: Sequence[Finding]) -> list[Finding]:
        if not desired.configured(self.policy):
            return [f.with_status(Status.ABSENT, NOT_CONFIGURED) for f in drift]
        if getattr(self.host, "read_only", False):
            return [f.with_status(Status.DRIFT, f"{f.message}; not changed: read-only run") for f in drift]
        if self.host.root != "/" and in_initial_netns(self.host.proc):
            return [f.with_status(Status.UNSUPPORTED, ROOTED_IN_HOST_NETNS) for f in drift]
        backend = self._backend()
        if backend is None:
            return [f.with_status(Status.UNSUPPORTED, self.unavailable) for f in drift]
        ruleset = self.ruleset()
        refusal = self.cni_refusal(ruleset) or guard.refusal(self.guard_problems(ruleset))
        if refusal:
            return [f.with_status(Status.FAILED, refusal) for f in drift]
        try:
            other = self.leftover()
            if other is not None:
                other.remove()
            foreign = backend.commit(ruleset)
        except (NftError, IptError, OSError) as exc:
            return [f.with_status(Status.FAILED, f"{backend.name} commit failed: {exc}") for f in drift]
        except Exception as exc:  # noqa: BLE001 - libiptc raises IPTCError with the kernel's reason
            return [
                f.with_status(Status.FAILED, f"{backend.name} commit failed: {type(exc).__name__}: {exc}")
                for f in drift
            ]
        if foreign.ours:
            loud = (
                "FOREIGN FIREWALL STATE CHANGED during our heal (kube-proxy/flannel/"
                "network-policy rules must never be touched by us): " + "; ".join(foreign.ours)
            )
            return [f.with_status(Status.FAILED, loud) for f in drift]
        healed = f"{backend.name}: rewrote our ruleset atomically"
        if foreign.others:
            healed += (
                "; other tables changed meanwhile in other tools' transactions (not ours): "
                + "; ".join(foreign.others)
            )
        return [f.with_status(Status.HEALED, healed) for f in drift]

    # -- commit-confirmed (k3s_agent/confirm.py) ---------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Our ruleset, and nothing foreign, in every backend that can hold it here:
        a heal may also remove our leftovers in the other backend."""
        taken: dict[str, Any] = {}
        nft = NftBackend(self.host)
        if nft.runner.available() is None:
            taken["nftables"] = nft.snapshot_ours()
        if isinstance(self.backend, IptablesBackend) or legacy_filter_loaded(self.host.proc):
            taken["iptables"] = IptablesBackend().snapshot_ours()
        return taken

    def restore(self, taken: dict[str, Any]) -> str:
        """Put our ruleset back as snapshot() saw it; the engine verifies nothing here:
        the caller (a rollback) reports what was restored."""
        if self.host.root != "/" and in_initial_netns(self.host.proc):
            raise NftError(ROOTED_IN_HOST_NETNS)
        done = []
        if "nftables" in taken:
            done.append("nftables: " + NftBackend(self.host).restore_ours(taken["nftables"]))
        if "iptables" in taken:
            done.append(IptablesBackend().restore_ours(taken["iptables"]))
        return "; ".join(done) or "nothing (no firewall backend was usable when the change was made)"

    def watches(self) -> list[Watch]:
        if not desired.configured(self.policy):
            return []
        # Only our own nft table: kube-proxy/flannel rewriting theirs must not
        # wake us (legacy iptables sends no notifications: see fingerprint()).
        found = [Watch("netlink", f"nftables:{TABLE}")]
        if not self._option("node_cidrs"):
            # @nodes comes from this node's own subnets: an address change matters.
            found += [Watch("netlink", "ipv4_addr"), Watch("netlink", "ipv6_addr")]
        return [
            *found,
            Watch("path", k3s.CONFIG),
            Watch("path", k3s.CONFIG_DIR),
            Watch("path", sshd.MAIN_CONFIG),
            *(Watch("path", folder) for folder in cni.CONF_DIRS),
        ]

    def fingerprint(self) -> Optional[tuple[bytes, ...]]:
        """Legacy iptables sends no event: the filter tables' size, rule count and
        chain offsets (one getsockopt each, see iptinfo). nftables needs none: a
        change of our table comes over netlink."""
        if not isinstance(self.backend, IptablesBackend):
            return None
        return tuple(iptinfo.filter_info(family) for family in self.backend.families)

    def describe(self) -> dict[str, Any]:
        if not desired.configured(self.policy):
            return {"configured": False}
        self._backend()
        facts: dict[str, Any] = {
            "backend": self.backend.name if self.backend else None,
            "backend_reason": self.choice.reason if self.choice else None,
            "unavailable": self.unavailable or None,
        }
        if isinstance(self.backend, NftBackend):
            facts["nftables_via"] = self.backend.runner.via
        if self.inputs is not None:
            facts["ssh_ports"] = list(self.inputs.ssh_ports)
            facts["ssh_ports_found_by"] = self.ssh_how or "fixed"
            facts["lockout_guard_interfaces"] = list(guard.probe_interfaces(self.host.net_interfaces()))
            facts["k3s_config"] = list(self.inputs.k3s.sources)
            facts["k3s_conditions"] = sorted(self.inputs.conditions())
            network = self.inputs.network()
            facts["cni"] = network.name
            facts["cni_mode"] = network.mode or None
            facts["cni_evidence"] = list(network.evidence)
            facts["nodes"] = [str(n) for n in desired.symbols(self.policy, self.inputs)["@nodes"]]
        return facts
