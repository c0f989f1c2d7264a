"""Logging: structlog, to journald with structured fields under systemd, console otherwise.

Every event type has a stable MESSAGE_ID so operators can `journalctl
MESSAGE_ID=...` and alert on it; findings carry CONTROL, ITEM, CIS_ID,
EXPECTED, ACTUAL fields.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

import structlog

from k3s_agent.model import Finding

# Stable ids (never change one; add new ones). Generated once with uuid4().hex.
MESSAGE_IDS = {
    "drift": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b601",
    "healed": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b602",
    "failed": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b603",
    "contested": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b604",
    "waived": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b605",
    "policy_reloaded": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b606",
    "policy_refused": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b607",
    "pending": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b608",
    "started": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b609",
    "stopping": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b60a",
    "cycle": "7b1c7e2a9f6d4c55a1a0f3c1d2e4b60b",
}

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class JournaldRenderer:
    """Final structlog processor: sends the event to journald, upper-cased fields."""

    def __init__(self, send: Any):
        self.send = send

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> str:
        message = str(event.pop("event", ""))
        fields = {k.upper(): _text(v) for k, v in event.items() if v is not None}
        fields["PRIORITY"] = str(_PRIORITY.get(method, 6))
        fields.setdefault("SYSLOG_IDENTIFIER", "k3s-agentd")
        self.send(message, **fields)
        raise structlog.DropEvent


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def configure(journal: Optional[bool] = None, verbose: bool = False) -> structlog.BoundLogger:
    use_journal = under_systemd() if journal is None else journal
    send = None
    if use_journal:
        try:
            from systemd import journal as sd_journal

            send = sd_journal.send
        except ImportError:
            send = None
    processors: list[Any] = [structlog.processors.add_log_level]
    if send is not None:
        processors.append(JournaldRenderer(send))
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("k3s-agentd")


def finding_fields(finding: Finding) -> dict[str, Any]:
    return {
        "message_id": MESSAGE_IDS.get(finding.status.value),
        "control": finding.control,
        "item": finding.key,
        "cis_id": finding.cis,
        "expected": None if finding.desired is None else str(finding.desired),
        "actual": None if finding.observed is None else str(finding.observed),
        "detail": finding.message or None,
    }
