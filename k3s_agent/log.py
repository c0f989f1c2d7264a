"""Logging: structlog, to journald with structured fields under systemd, console otherwise.

Every event type has a stable MESSAGE_ID so operators can `journalctl
MESSAGE_ID=...` and alert on it; findings carry CONTROL, ITEM, CIS_ID,
EXPECTED, ACTUAL fields. The MESSAGE text itself says what and why (a plain
`journalctl -u k3s-agentd` is what operators read first): one line, at most
MESSAGE_LIMIT characters, control characters from data escaped (a policy key
or a file name may hold a newline meant to forge a second journal line).
"""

from __future__ import annotations

import logging
import os
import sys
import unicodedata
from typing import Any, Optional

import structlog

from k3s_agent.model import Finding

# Stable ids (never change one; add new ones). Generated once with uuid4().hex.
MESSAGE_IDS = {
    "drift": "a621fcc8c0c1499990ca6b7c9f2ebc33",
    "healed": "2febc62e4805462d837a4b7579ccd0c4",
    "failed": "94fa38a038474f0f819fdff332bff971",
    "contested": "aba473295b4c438a98802e94f04eec25",
    "waived": "42666a95baeb40bba01e3e34c18d1a32",
    "policy_reloaded": "b3854f4c58654743b7c75d2c3124ef81",
    "policy_refused": "3212b0c0325c4bd6b06a02f8b7b37067",
    "pending": "bc4f25cee8ae485b8d796f8b05407b9d",
    "started": "2dd06a02659947b5b027d4c932017ed9",
    "stopping": "536c31acd7e24ef1a76c0a20636fd9a3",
    "cycle": "b6f1e77b4e164077a0d146cd31c7faae",
}

MESSAGE_LIMIT = 1000  # characters of MESSAGE; the structured fields keep everything

_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class JournaldRenderer:
    """Final structlog processor: sends the event to journald, upper-cased fields."""

    def __init__(self, send: Any):
        self.send = send

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> str:
        message = one_line(str(event.pop("event", "")))
        fields = {k.upper(): _text(v) for k, v in event.items() if v is not None}
        fields["PRIORITY"] = str(_PRIORITY.get(method, 6))
        fields.setdefault("SYSLOG_IDENTIFIER", "k3s-agentd")
        self.send(message, **fields)
        raise structlog.DropEvent


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Text made safe for a one-line message: control characters (and line/paragraph
    separators, bidi overrides) escaped, cut at `limit` characters."""
    safe = "".join(_escape(c) for c in text[: limit + 1])  # bounded work on any input
    if len(safe) <= limit:
        return safe
    return f"{safe[:limit]}... [cut, {len(text)} characters in all]"


def _escape(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp"):
        return char
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _clean_event(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console twin of the journald renderer's one-line message."""
    event["event"] = one_line(str(event.get("event", "")))
    return event


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
            _clean_event,
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
        "declined": finding.declined,  # why apply leaves it (a human must act)
    }


def finding_message(event: str, finding: Finding) -> str:
    """The journal line of a finding: what happened to which item, and why."""
    line = f"{finding.control} {finding.key}: {event}"
    if finding.status.value != event:
        line += f" ({finding.status.value})"  # a contested item healed again
    detail = "; ".join(part for part in (finding.message, finding.declined) if part)
    return f"{line}: {detail}" if detail else line


def refusal_message(problems: list[str], keeping: str) -> str:
    """The journal line of a refused policy: every problem (file: key: reason) and what runs instead."""
    count = f"{len(problems)} problems" if len(problems) != 1 else "1 problem"
    return f"policy refused ({count}), {keeping}: " + "; ".join(problems)
