"""What the engine hands a real control's apply(): recorded, the call passed through."""

from __future__ import annotations

from typing import Any

from k3s_agent.model import Finding


def record_apply(control: Any) -> list[list[str]]:
    """Wrap control.apply; the returned list gets the sorted keys of each call's drift."""
    applied: list[list[str]] = []
    real_apply = control.apply

    def apply(drift: list[Finding]) -> list[Finding]:
        applied.append(sorted(f.key for f in drift))
        return real_apply(drift)

    control.apply = apply
    return applied
