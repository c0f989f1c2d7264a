"""The last policy that validated, kept so a bad edit never leaves a node unguarded.

After every successful load the local policy files are copied (0600, root)
to /var/lib/k3s-agentd/last-good/; when the daemon starts and the policy on
disk is refused, it runs these copies instead and says so.
"""

from __future__ import annotations

import os
from typing import Optional

from k3s_agent.host import Host
from k3s_agent.policy.loader import compose, read_layer
from k3s_agent.policy.model import Policy
from k3s_agent.policy.schema import PolicyError

FOLDER = "last-good"


def _folder(host: Host) -> str:
    return os.path.join(host.state_dir, FOLDER)


def save_last_good(host: Host, policy: Policy) -> None:
    files = [s for s in policy.sources if not s.startswith("profile:")]
    folder = _folder(host)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for stale in os.listdir(folder):
            os.unlink(os.path.join(folder, stale))
        for index, source in enumerate(files):
            with open(source, "rb") as handle:
                data = handle.read()
            name = f"{index:03d}-{os.path.basename(source)}"
            relative = os.path.join(host.state_dir, FOLDER, name)
            host.write_atomic(_unrooted(host, relative), data, mode=0o600, backup=False)
    except OSError:
        pass  # a missing snapshot only matters on the next refused start


def load_last_good(host: Host) -> Optional[Policy]:
    folder = _folder(host)
    if not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if n.endswith(".toml"))
    try:
        return compose(host, [read_layer(os.path.join(folder, n)) for n in names])
    except PolicyError:
        return None


def _unrooted(host: Host, path: str) -> str:
    if host.root == "/":
        return path
    return "/" + os.path.relpath(path, host.root)
