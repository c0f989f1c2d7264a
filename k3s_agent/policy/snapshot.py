"""The last policy that validated, kept so a bad edit never leaves a node unguarded.

After every successful load the local policy files are copied (0600, root)
to /var/lib/k3s-agentd/last-good/; when the daemon starts and the policy on
disk is refused, it runs these copies instead and says so.

The copy is made whole or not at all: the files are re-read with the
loader's own checks (no symlinks, root-owned, not group/other-writable) and
must still compose to the policy in force, else the previous snapshot stays
(a drop-in that vanished, or a file edited since it was loaded, would
otherwise leave a snapshot of a policy that never ran). The new copy is built
in a side folder and renamed into place; a crash between the two renames
leaves the previous one under last-good.old, which load_last_good reads.
"""

from __future__ import annotations

import os
from typing import Optional

from k3s_agent.host import STATE_DIR, Host, HostError
from k3s_agent.model import Mode
from k3s_agent.policy.loader import Layer, Registry, compose, read_layer
from k3s_agent.policy.model import Policy
from k3s_agent.policy.schema import PolicyError

FOLDER = "last-good"


def _folder(suffix: str = "") -> str:
    """A host path in the agent's state dir."""
    return f"{STATE_DIR}/{FOLDER}{suffix}"


def save_last_good(host: Host, policy: Policy, registry: Optional[Registry] = None) -> bool:
    """Snapshot the policy's local files; False (old snapshot kept) when they no longer give it.

    registry: the controls policy was loaded with (default_registry() when None).
    """
    files = [s for s in policy.sources if not s.startswith("profile:")]
    try:
        layers = [read_layer(source) for source in files]
        if compose(host, layers, registry=registry) != policy:
            return False  # edited since it was loaded: not the policy in force
        fresh, current, old = _folder(".new"), _folder(), _folder(".old")
        host.remove_tree(fresh)
        host.ensure_dir(fresh, 0o700, uid=os.geteuid(), gid=os.getegid())
        for index, (source, layer) in enumerate(zip(files, layers)):
            name = f"{index:03d}-{os.path.basename(source)}"
            host.write_atomic(f"{fresh}/{name}", layer.raw, mode=0o600, backup=False)
        if host.exists(current):
            host.remove_tree(old)
            host.rename(current, old)
        host.rename(fresh, current)
        host.remove_tree(old)
    except (OSError, HostError, PolicyError):
        return False  # a missing snapshot only matters on the next refused start
    return True


def load_last_good(host: Host, registry: Optional[Registry] = None) -> Optional[Policy]:
    for folder in (_folder(), _folder(".old")):
        if host.is_dir(folder):  # a real folder, not a link to one
            break
    else:
        return None
    try:
        names = [n for n in host.listdir(folder) if n.endswith(".toml")]
        return compose(host, [read_layer(host.path(f"{folder}/{n}")) for n in names], registry=registry)
    except (OSError, PolicyError):
        return None


LAST_GOOD = "the last good policy"
BUILTIN_AUDIT = "the built-in profile in audit mode"


def fallback_policy(host: Host, registry: Optional[Registry] = None) -> tuple[Policy, str]:
    """What to run when the policy on disk is refused at start, and its name for status.

    The last good snapshot when there is one. Else the built-in profile in
    audit mode: exiting would put the daemon in a restart loop with no status
    and no report at all, and enforcing the profile could undo exactly what the
    refused local policy turned off (a firewall port, an sshd setting), so it
    observes and reports, changing nothing, until a good policy is loaded
    (SIGHUP or restart).
    """
    policy = load_last_good(host, registry)
    if policy is not None:
        return policy, LAST_GOOD
    try:
        builtin = compose(host, [], registry=registry)
    except PolicyError:
        # A built-in profile this host's lints refuse: nothing but the report.
        builtin = compose(host, [Layer("profile:none", {"extends": "none"})], registry=registry)
    return builtin.with_mode(Mode.AUDIT), BUILTIN_AUDIT
