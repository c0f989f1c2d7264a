"""The vocabulary every part shares: statuses, findings, modes."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional


class Status(str, enum.Enum):
    OK = "ok"
    DRIFT = "drift"  # seen, not healed (audit mode, verify-only item, backoff)
    HEALED = "healed"  # was drift, apply fixed it, re-check confirmed
    FAILED = "failed"  # tried and could not, or the control itself broke
    UNSUPPORTED = "unsupported"  # cannot be enforced on this host (read-only /proc/sys, ...)
    ABSENT = "absent"  # optional item (or whole subsystem) not present on this host
    WAIVED = "waived"  # a current waiver covers it: never counted as ok
    CONTESTED = "contested"  # healed again and again: something on the host fights us
    PENDING = "pending"  # remediation written, waits for an outside action (K3s restart)
    MANUAL = "manual"  # a benchmark's manual check: reported for review, never required or remediated

    def __str__(self) -> str:
        return self.value


# How a status counts towards the node's verdict (and the CLI exit code).
COMPLIANT = frozenset({Status.OK, Status.HEALED, Status.ABSENT, Status.UNSUPPORTED, Status.MANUAL})
NONCOMPLIANT = frozenset({Status.DRIFT, Status.CONTESTED, Status.PENDING, Status.WAIVED})
BROKEN = frozenset({Status.FAILED})


class Mode(str, enum.Enum):
    ENFORCE = "enforce"
    AUDIT = "audit"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Finding:
    """One policy item as observed on this node."""

    control: str
    key: str
    status: Status
    desired: Any = None
    observed: Any = None
    message: str = ""
    cis: Optional[str] = None
    # Why apply will not act on this drift (not ours to edit, needs an operator,
    # verify-only ...); None: apply heals it. Set by check(), so `diff` can say
    # what apply would change and what needs a human; the engine never passes a
    # declined finding to apply. The item still counts as drift.
    declined: Optional[str] = None

    def with_status(self, status: Status, message: Optional[str] = None) -> Finding:
        return dataclasses.replace(self, status=status, message=self.message if message is None else message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "key": self.key,
            "status": self.status.value,
            "desired": _jsonable(self.desired),
            "observed": _jsonable(self.observed),
            "message": self.message,
            "cis": self.cis,
            "declined": self.declined,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            control=data["control"],
            key=data["key"],
            status=Status(data["status"]),
            desired=data.get("desired"),
            observed=data.get("observed"),
            message=data.get("message", ""),
            cis=data.get("cis"),
            declined=data.get("declined"),
        )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
