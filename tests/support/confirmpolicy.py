"""Policy text for the commit-confirmed tests (tests/integration/test_confirm_rollback.py,
tests/e2e/confirm_steps.py): only the controls a test names, in enforce mode with a
short confirm_timeout, the firewall on nftables. LOCK_SSH drops tcp/22: the
lock-out on purpose that nobody confirms, so it must be rolled back."""

from __future__ import annotations

LOCK_SSH = """[controls.firewall.items.lock]
action = "drop"
proto = "tcp"
ports = [22]
order = 1
"""


def confirm_policy(
    interval: float, confirm_timeout: float, default_input: str, rest: str, comment: str = ""
) -> str:
    """The policy text: the header, [controls.firewall] up to default_input, then `rest`
    (more firewall options, items, other controls' sections) as given."""
    head = f"# {comment}\n" if comment else ""
    return f"""{head}version = 1
extends = "none"
mode = "enforce"
interval = {interval}
confirm_timeout = {confirm_timeout}
[controls.firewall]
backend = "nftables"
default_input = "{default_input}"
{rest}"""
