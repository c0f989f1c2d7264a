"""The node-compliance document as Prometheus metrics (text exposition format 0.0.4).

Written for node_exporter's textfile collector and by `k3s-agentctl status
--prometheus`. Every metric is documented in docs/metrics.md; the shipped
alert rules and dashboard (packaging/prometheus/) use only these names.

Conventions (https://prometheus.io/docs/practices/naming/): units in the
name (`_seconds`), `_total` for counters, `_info` as a 1-valued label carrier,
labels bounded by the policy (controls, items, the ten statuses), never by
time or free text. No prometheus_client: rendering one document is a few
dozen lines, and the escaping is proven by `promtool check metrics` in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any, Optional

from k3s_agent.model import Status

PREFIX = "k3s_agentd_"
# What node_exporter's textfile collector reads, by distribution: Debian's
# prometheus-node-exporter (--collector.textfile.directory in
# /etc/default/prometheus-node-exporter) and the EL/Fedora golang-github-
# prometheus-node-exporter / node_exporter packages.
TEXTFILE_DIRS = ("/var/lib/prometheus/node-exporter", "/var/lib/node_exporter/textfile_collector")
TEXTFILE_NAME = "k3s_agentd.prom"
AUTO = "auto"
WAIVER_SOON_DAYS = 14
VERDICT_VALUE = {"compliant": 0, "drift": 1, "failed": 2}


def textfile_path(setting: Optional[str], is_dir: Any) -> Optional[str]:
    """Where to write the textfile: the policy's path, or with "auto" the first
    node_exporter textfile folder that exists (None: no node_exporter here).

    Resolved on every write, so a node_exporter installed after the agent is
    picked up; we never create its folder (`is_dir` answers for the host).
    """
    if setting != AUTO:
        return setting or None
    for folder in TEXTFILE_DIRS:
        if is_dir(folder):
            return f"{folder}/{TEXTFILE_NAME}"
    return None


class HealTally:
    """Heals per control and the last heal's time, counted from the published
    documents (a contested item's heal reads `contested`, "healed (...)")."""

    def __init__(self) -> None:
        self.by_control: Counter[str] = Counter()
        self.last_heal: Optional[float] = None

    def record(self, document: dict[str, Any]) -> dict[str, Any]:
        """Count this document's heals; the `daemon` facts to add to it."""
        for control in document.get("controls", []):
            # += 0 too: a zero sample before the first heal, so increase() sees the first one
            healed = sum(1 for f in control["findings"] if _was_healed(f))
            self.by_control[control["name"]] += healed
            if healed:
                self.last_heal = _epoch(document["generated_at"])
        return {"heals_by_control": dict(self.by_control), "last_heal_at": self.last_heal}


def _was_healed(finding: dict[str, Any]) -> bool:
    if finding["status"] == Status.HEALED.value:
        return True
    return finding["status"] == Status.CONTESTED.value and str(finding.get("message", "")).startswith(
        "healed ("
    )


class _Exposition:
    """Families in order, each with its HELP and TYPE once, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {_esc_help(help_text)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        # A file name that is not UTF-8 (a lone surrogate) as a visible escape:
        # the daemon's metrics endpoint and the textfile encode this text.
        return ("\n".join(self.lines) + "\n").encode("utf-8", "backslashreplace").decode("utf-8")


def render_prometheus(document: dict[str, Any], today: Optional[datetime.date] = None) -> str:
    """The whole document as metrics. Families without data (no daemon facts in a
    one-shot `check`) are left out rather than reported as zero."""
    out = _Exposition()
    controls = document.get("controls", [])
    out.family(
        "info",
        "gauge",
        "Agent version, policy profile, benchmark, mode and firewall backend.",
        [(_info(document), 1)],
    )
    _items(out, controls)
    _cycle(out, document)
    _daemon(out, document.get("daemon") or {})
    _waivers(out, document.get("waivers") or [], today or datetime.date.today())
    _confirmation(out, document.get("confirmation") or {})
    return out.text()


def _info(document: dict[str, Any]) -> dict[str, str]:
    policy = document.get("policy", {})
    backend = next(
        (c.get("facts", {}).get("backend") for c in document.get("controls", []) if c["name"] == "firewall"),
        None,
    )
    return {
        "version": str(document.get("agent_version", "")),
        "profile": str(policy.get("profile", "")),
        "benchmark": str(policy.get("benchmark", "")),
        "mode": str(policy.get("mode", "")),
        "firewall_backend": str(backend or "none"),
    }


def _items(out: _Exposition, controls: list[dict[str, Any]]) -> None:
    # One series per (control, item): a duplicate label set would make node_exporter
    # drop the whole file, so a control reporting a key twice keeps its first finding.
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for f in (f for c in controls for f in c["findings"]):
        labels = {"control": f["control"], "item": f["key"], "cis": f.get("cis") or "", "status": f["status"]}
        seen.setdefault((f["control"], f["key"]), labels)
    per_item = [(labels, 1) for labels in seen.values()]
    out.family("item_status", "gauge", "1 for each policy item, labelled with its current status.", per_item)
    counts = [
        ({"control": c["name"], "status": s.value}, c["summary"]["by_status"].get(s.value, 0))
        for c in controls
        for s in Status
    ]
    out.family("findings", "gauge", "Policy items by control and status (every status, zeros too).", counts)
    total = Counter(f["status"] for c in controls for f in c["findings"])
    out.family(
        "contested_items",
        "gauge",
        "Items someone else keeps undoing (status contested).",
        [({}, total["contested"])],
    )
    out.family(
        "k3s_restart_pending_items",
        "gauge",
        "Items written that take effect at the next K3s restart (status pending).",
        [({}, total["pending"])],
    )
    errors = [({"control": c["name"]}, int(bool(c.get("error")))) for c in controls]
    out.family("control_error", "gauge", "1 when the control's last run raised or timed out.", errors)


def _cycle(out: _Exposition, document: dict[str, Any]) -> None:
    verdict = document.get("summary", {}).get("verdict")
    out.family(
        "verdict",
        "gauge",
        "Node verdict: 0 compliant, 1 drift, 2 failed, 3 unknown.",
        [({}, VERDICT_VALUE.get(verdict, 3))],
    )
    if document.get("generated_at"):
        out.family(
            "last_cycle_timestamp_seconds",
            "gauge",
            "Unix time the last check cycle ended.",
            [({}, _epoch(document["generated_at"]))],
        )
    cycle = document.get("cycle") or {}
    if "duration_seconds" in cycle:
        out.family(
            "cycle_duration_seconds",
            "gauge",
            "Wall time of the last check cycle.",
            [({}, cycle["duration_seconds"])],
        )
    interval = (document.get("policy") or {}).get("interval_seconds")
    if interval is not None:
        out.family(
            "interval_seconds", "gauge", "Seconds between sweeps (the policy's interval).", [({}, interval)]
        )


_COUNTERS = (
    ("heal_failures_total", "Heals that failed since the daemon started."),
    ("policy_reload_failures_total", "Refused policies (at start or reload) since the daemon started."),
)


def _daemon(out: _Exposition, daemon: dict[str, Any]) -> None:
    if "policy_error" in daemon:
        refused = int(bool(daemon["policy_error"]))
        out.family(
            "policy_refused",
            "gauge",
            "1 while the policy on disk is refused (an older one runs).",
            [({}, refused)],
        )
    by_control = daemon.get("heals_by_control")
    if isinstance(by_control, dict):
        heals = [({"control": name}, n) for name, n in sorted(by_control.items())]
        out.family("heals_total", "counter", "Items healed since the daemon started, by control.", heals)
    elif "heals_total" in daemon:  # a status file of an agent that did not count per control
        out.family(
            "heals_total", "counter", "Items healed since the daemon started.", [({}, daemon["heals_total"])]
        )
    if daemon.get("last_heal_at") is not None:
        out.family(
            "last_heal_timestamp_seconds",
            "gauge",
            "Unix time of the last cycle that healed an item.",
            [({}, daemon["last_heal_at"])],
        )
    for name, help_text in _COUNTERS:
        if name in daemon:
            out.family(name, "counter", help_text, [({}, daemon[name])])


def _waivers(out: _Exposition, waivers: list[dict[str, Any]], today: datetime.date) -> None:
    if not waivers:
        out.family(
            "waivers_expiring",
            "gauge",
            f"Active waivers that expire within {WAIVER_SOON_DAYS} days.",
            [({}, 0)],
        )
        return
    expiry = []
    soon = 0
    for waiver in waivers:
        day = datetime.date.fromisoformat(waiver["expires"])
        soon += int(0 <= (day - today).days <= WAIVER_SOON_DAYS)
        # a waiver covers its whole last day: it lapses at the next midnight, UTC
        end = datetime.datetime.combine(
            day + datetime.timedelta(days=1), datetime.time(), datetime.timezone.utc
        )
        expiry.append(({"control": waiver["control"], "item": waiver["key"]}, end.timestamp()))
    out.family(
        "waivers_expiring",
        "gauge",
        f"Active waivers that expire within {WAIVER_SOON_DAYS} days.",
        [({}, soon)],
    )
    out.family("waiver_expiry_timestamp_seconds", "gauge", "Unix time an active waiver lapses.", expiry)


def _confirmation(out: _Exposition, confirmation: dict[str, Any]) -> None:
    states = confirmation.get("controls") or {}
    samples = [
        ({"control": name, "state": str(state.get("state", "")).replace(" ", "_")}, 1)
        for name, state in sorted(states.items())
    ]
    out.family(
        "confirmation_state",
        "gauge",
        "1 per control awaiting `k3s-agentctl confirm` (awaiting_confirmation) or held after a rollback "
        "(rolled_back).",
        samples,
    )
    deadlines = [
        ({"control": name}, _epoch(state["rollback_at"]))
        for name, state in sorted(states.items())
        if state.get("rollback_at")
    ]
    if deadlines:
        out.family(
            "confirmation_deadline_timestamp_seconds",
            "gauge",
            "Unix time an unconfirmed change is rolled back.",
            deadlines,
        )


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc_label(str(v))}"' for k, v in labels.items()) + "}"


def _esc_label(value: str) -> str:
    """Label values: backslash, double quote and line feed are the format's escapes;
    anything else (non-ASCII, tabs) is UTF-8 as is."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _esc_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()
