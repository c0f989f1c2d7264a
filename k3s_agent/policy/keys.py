"""Every policy key outside the controls' own: type, bounds, default and meaning.

The one place these live. The loader validates with these Fields and takes
its defaults from them, policy/model.py's dataclass defaults are read from
them, and docs/policy.md's reference tables are generated from them
(`python -m k3s_agent.policy.schema_doc`). A control declares its own keys in
its ControlSpec (options, item_fields) the same way.

Standard library and schema.py only: `k3s-agentctl status` imports this
through policy/model.py.
"""

from __future__ import annotations

import datetime

from k3s_agent.model import Mode
from k3s_agent.policy import benchmark as bench
from k3s_agent.policy.schema import Field, list_of, matches, non_empty, one_of

AUTO = "auto"
# The built-in profiles (k3s_agent/policy/profiles/<name>/).
PROFILES = ("k3s-cis-server", "k3s-cis-agent")
_MODES = one_of(*(m.value for m in Mode))
_DAY = 86400.0

TOP_FIELDS: dict[str, Field] = {
    "version": Field(int, one_of(1), default=1, doc="policy format version"),
    "extends": Field(
        str,
        one_of(AUTO, "none", *PROFILES),
        default=AUTO,
        doc="the built-in profile to start from; `auto`: server when a `k3s.service` unit exists, "
        "agent for `k3s-agent.service`, else server; server items under the server profile on an "
        "agent-only node are `absent` (see [k3s.md](k3s.md))",
    ),
    "mode": Field(
        str, _MODES, default=Mode.ENFORCE.value, doc="`enforce` heals, `audit` only reports; per control too"
    ),
    "benchmark": Field(
        str,
        one_of(bench.AUTO, *bench.BENCHMARKS),
        default=bench.AUTO,
        doc="the K3s CIS benchmark in force; `auto`: by the running K3s's version (see "
        "[k3s.md](k3s.md#which-benchmark-benchmark)). Findings carry its check ids; "
        "status and reports name it",
    ),
    # Upper bounds too: a day between cycles is already no longer "continuous", and
    # a huge timeout overflows Thread.join.
    "interval": Field(float, min=1, max=_DAY, default=60.0, doc="seconds between full check cycles (sweeps)"),
    "control_timeout": Field(float, min=1, max=3600, default=30.0, doc="seconds one control call may take"),
    "confirm_timeout": Field(
        float,
        min=0,
        max=_DAY,
        default=300.0,
        doc="the first enforcing firewall/sshd change is rolled back unless `k3s-agentctl confirm` runs "
        "within this many seconds; 0 = off ([confirm.md](confirm.md))",
    ),
    "contest": Field(dict, doc="`[contest]`: when an item someone keeps undoing is `contested` (below)"),
    "metrics": Field(dict, doc="`[metrics]`: the Prometheus textfile (below)"),
    "waiver": Field(list, doc="`[[waiver]]`: accepted exceptions (below)"),
    "controls": Field(dict, doc="`[controls.<name>]`: one table per control (below)"),
}
CONTEST_FIELDS: dict[str, Field] = {
    "threshold": Field(
        int, min=2, default=3, doc="undos by someone else within `window` that make an item `contested`"
    ),
    "window": Field(
        float,
        min=1,
        max=7 * _DAY,
        default=600.0,
        doc="seconds; an item stays `contested` until a whole window passes without an undo",
    ),
    "backoff_max": Field(
        float,
        min=1,
        max=7 * _DAY,
        default=3600.0,
        doc="accepted and unused (a contested item is still healed every sweep)",
    ),
}
METRICS_FIELDS: dict[str, Field] = {
    "textfile": Field(
        str,
        matches(
            r"(/(?!\.\.?/)[^/\0]+)+\.prom|auto|",
            'an absolute *.prom path without . or .. in it, "auto" or "" (off)',
        ),
        default=AUTO,
        doc="Prometheus textfile for node_exporter; `auto`: in node_exporter's textfile folder when "
        "Debian's or EL's is present, `\"\"`: off ([metrics.md](metrics.md))",
    )
}
WAIVER_FIELDS: dict[str, Field] = {
    "control": Field(str, non_empty, required=True, doc="the control's name"),
    "key": Field(str, non_empty, required=True, doc="an item key, or an fnmatch pattern of keys"),
    "reason": Field(str, non_empty, required=True, doc="why the item is waived"),
    "owner": Field(str, non_empty, required=True, doc="who answers for it"),
    "expires": Field(datetime.date, required=True, doc="after this day the item is checked and healed again"),
}
SECTION_FIELDS: dict[str, Field] = {
    "mode": Field(str, _MODES, doc="`enforce` / `audit` for this control (default: the top-level `mode`)"),
    "enabled": Field(bool, default=True, doc="`false` turns the control off"),
    "disable": Field(
        list, list_of(str), default=(), doc="item keys to drop (accumulates across layers; any spelling)"
    ),
    "items": Field(dict, doc="one table per item; its keys depend on the control"),
}
ITEM_FIELDS: dict[str, Field] = {
    "cis": Field(
        (str, dict),
        bench.check_cis_value,
        doc='CIS id(s) ("1.2.6/1.2.7"), or a table {benchmark = id} for a check not in every benchmark',
    ),
    "accept_risk": Field(str, non_empty, doc="why a setting the K3s safety lints refuse is wanted anyway"),
    "description": Field(str, doc="free text, shown in reports"),
}
