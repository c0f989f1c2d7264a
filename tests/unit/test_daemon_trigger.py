"""Which cycles are sweeps: the daemon's sleep decides, the engine heals contested items only then."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import structlog

from k3s_agent import daemon as daemon_module
from k3s_agent.daemon import Daemon
from k3s_agent.host import Host

pytestmark = pytest.mark.root  # policy files must be root-owned

INTERVAL = 1.0

# (wake-ups during the sleep, seconds since the last sweep when it starts, trigger of the next cycle)
CASES = [
    ("interval elapsed, nothing woke us", [], 0.0, "sweep"),
    ("a watched path changed", ["watch"], 0.0, "event"),
    ("k3s-agentctl wake", [""], 0.0, "sweep"),
    ("a watch and a manual wake together", ["watch", ""], 0.0, "sweep"),
    ("a watch when the sweep is already due", ["watch"], 5.0, "sweep"),
]


@pytest.mark.parametrize(("wakes", "since", "trigger"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sleep_sets_the_trigger(
    root: Path, monkeypatch: pytest.MonkeyPatch, wakes: list[str], since: float, trigger: str
) -> None:
    monkeypatch.setattr(daemon_module, "WAKE_DEBOUNCE", 0.0)
    monkeypatch.setattr(daemon_module, "MIN_EVENT_GAP", 0.0)
    (root / "etc/k3s-agentd/policy.toml").write_text('extends = "none"\n')
    daemon = Daemon(Host(root=str(root)), None, structlog.get_logger())
    daemon.policy = dataclasses.replace(daemon.policy, interval=INTERVAL)
    daemon.last_sweep = daemon.last_cycle = time.monotonic() - since
    waker: Optional[threading.Timer] = None
    if wakes:
        waker = threading.Timer(0.1, lambda: [daemon.wake(why) for why in wakes])
        waker.start()
    started = time.monotonic()
    daemon._sleep()
    if waker is not None:
        waker.join()
    assert daemon.trigger == trigger
    assert time.monotonic() - started < INTERVAL + 0.5
    daemon.cycle()
    assert daemon.trigger == "sweep"  # one event cycle at a time
    assert (daemon.last_sweep == daemon.last_cycle) is (trigger == "sweep")


def test_a_reload_keeps_who_is_contested(root: Path) -> None:
    """SIGHUP builds a new engine; the fights of the old one carry over (a reload
    must not forgive an item someone keeps undoing)."""
    policy = root / "etc/k3s-agentd/policy.toml"
    policy.write_text('extends = "none"\n')
    daemon = Daemon(Host(root=str(root)), None, structlog.get_logger())
    item = ("sysctl", "net.ipv4.ip_forward")
    tracker = daemon.engine.contest
    for _ in range(tracker.settings.threshold):
        tracker.settled(item, "1", 0)
        tracker.drifted(item, "1", 0)
    assert tracker.contest(item) is not None
    policy.write_text('extends = "none"\ninterval = 30\n')
    old_engine = daemon.engine
    daemon.reload()
    assert daemon.engine is not old_engine and daemon.policy.interval == 30
    assert daemon.engine.contest.contest(item) is not None
