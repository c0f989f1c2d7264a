"""backend = "auto": pick the ruleset K3s itself writes to.

K3s bundles iptables and chooses legacy vs nft with k3s-root's
iptables-detect.sh (k3s-io/k3s-root, iptables-detect/iptables-detect.sh):
1. count rule lines ("-A ...") in iptables-legacy-save + ip6tables-legacy-save:
   10 or more -> legacy; else count iptables-nft-save + ip6tables-nft-save
   (we count the same rules over netlink, nftgen.xtables_rules):
   more legacy than nft -> legacy, no nft rules -> undecided, else nft;
2. undecided: /etc/alternatives/iptables pointing at an nft binary -> nft,
   at anything else -> legacy;
3. else a guess by OS release (Debian >= 10, RHEL >= 8: nft).
We follow steps 1 and 2 (with `iptables --version`, which prints
"(nf_tables)" or "(legacy)", as the alternatives evidence where there is no
alternatives link, e.g. RHEL), and otherwise use nftables: legacy is on its way
out, and a host with no rules and no legacy iptables has nothing to agree with.
Rules we wrote ourselves (our chain, our jump) are not counted, so our own
earlier choice cannot vote for itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import stat
from typing import Optional

from k3s_agent.controls.firewall.model import IPT_CHAIN
from k3s_agent.controls.firewall.nftgen import xtables_rules
from k3s_agent.host import Host, HostError

LEGACY_THRESHOLD = 10


@dataclasses.dataclass(frozen=True)
class Choice:
    backend: str  # "nftables" | "iptables"
    reason: str


def count_rules(host: Host, binaries: tuple[str, ...]) -> int:
    total = 0
    for name in binaries:
        path = host.which(name)
        if path is None:
            continue
        try:
            result = host.run([path], timeout=5)
        except HostError:
            continue
        if result.returncode != 0:
            continue
        total += sum(
            1 for line in result.stdout.splitlines() if line.startswith("-") and IPT_CHAIN not in line
        )
    return total


def iptables_variant(host: Host) -> Optional[str]:
    """ "nft" or "legacy" from /etc/alternatives/iptables, then `iptables --version`."""
    link = "/etc/alternatives/iptables"
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(host.lstat(link).st_mode):
            return "nft" if "nft" in host.readlink(link) else "legacy"
    binary = host.which("iptables")
    if binary is None:
        return None
    try:
        result = host.run([binary, "--version"], timeout=5)
    except HostError:
        return None
    match = re.search(r"\((nf_tables|legacy)\)", result.stdout)
    if match:
        return "nft" if match.group(1) == "nf_tables" else "legacy"
    return None


def choose(host: Host, configured: str) -> Choice:
    if configured != "auto":
        return Choice(configured, "set in the policy")
    legacy = count_rules(host, ("iptables-legacy-save", "ip6tables-legacy-save"))
    if legacy >= LEGACY_THRESHOLD:
        return Choice(
            "iptables", f"{legacy} rules in the legacy iptables tables (K3s's iptables-detect picks legacy)"
        )
    # Counting on stops at LEGACY_THRESHOLD: legacy is below it here, so "more
    # legacy than nft" and "any nft" come out the same, at a tenth of the cost
    # of iptables-nft-save with 10,000 rules (docs/performance.md).
    nft = xtables_rules(LEGACY_THRESHOLD)
    if legacy > nft:
        return Choice("iptables", f"more legacy iptables rules ({legacy}) than iptables-nft rules ({nft})")
    if nft > 0:
        many = f"{nft} or more" if nft >= LEGACY_THRESHOLD else str(nft)
        return Choice(
            "nftables", f"{many} iptables-nft rules, {legacy} legacy (K3s's iptables-detect picks nft)"
        )
    variant = iptables_variant(host)
    if variant == "legacy":
        return Choice("iptables", "no rules yet; the system iptables is the legacy variant")
    if variant == "nft":
        return Choice("nftables", "no rules yet; the system iptables is the nf_tables variant")
    return Choice("nftables", "no rules and no iptables variant found: nftables is the default")
