"""IP networks as the agent handles them: one type and one canonical order.

Shared by the K3s facts (cluster and service CIDRs) and the firewall (rule
sources, local subnets), so both speak of the same values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def collapse(networks: Iterable[Network]) -> tuple[Network, ...]:
    """Deduplicated, merged, v4 before v6: a stable order for rendering and comparing."""
    v4 = [n for n in networks if n.version == 4]
    v6 = [n for n in networks if n.version == 6]
    return tuple(ipaddress.collapse_addresses(v4)) + tuple(ipaddress.collapse_addresses(v6))
