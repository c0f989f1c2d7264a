"""Which cycles are sweeps, which are targeted: the daemon's sleep decides, the scheduler says what is due."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import structlog

from k3s_agent.daemon import Daemon
from k3s_agent.host import Host

pytestmark = pytest.mark.root  # policy files must be root-owned

INTERVAL = 1.0


def quiet_log() -> structlog.BoundLogger:
    """A logger of our own: structlog's global one may still point at a stream an
    earlier test's configure() bound (pytest closes captured streams)."""
    return structlog.wrap_logger(
        structlog.ReturnLogger(), processors=[structlog.processors.KeyValueRenderer()]
    )


POLICY = """
extends = "none"
[controls.sysctl]
persist = false
[controls.sysctl.items."kernel.panic"]
value = 10
"""


def watch(daemon: Daemon) -> None:
    daemon._fired({"sysctl"})  # what the inotify thread calls for a sysctl.d change


def manual(daemon: Daemon) -> None:
    daemon.wake()  # `k3s-agentctl wake`


def both(daemon: Daemon) -> None:
    watch(daemon)
    manual(daemon)


# (what wakes us during the sleep, seconds since the last sweep when it starts, trigger, controls checked)
CASES = [
    ("interval elapsed, nothing woke us", None, 0.0, "sweep", None),
    ("a watched path changed", watch, 0.0, "event", ["sysctl"]),
    ("k3s-agentctl wake", manual, 0.0, "sweep", None),
    ("a watch and a manual wake together", both, 0.0, "sweep", None),
    ("a watch when the sweep is already due", watch, 5.0, "sweep", None),
]


@pytest.mark.parametrize(
    ("waker", "since", "trigger", "only"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_sleep_sets_the_trigger(
    root: Path,
    fake_proc: Path,
    waker: Optional[Callable[[Daemon], None]],
    since: float,
    trigger: str,
    only: Optional[list[str]],
) -> None:
    (root / "etc/k3s-agentd/policy.toml").write_text(POLICY)
    daemon = Daemon(Host(root=str(root), proc=str(fake_proc)), None, quiet_log())
    daemon.policy = dataclasses.replace(daemon.policy, interval=INTERVAL)
    daemon.cycle()  # the first sweep heals kernel.panic ...
    time.sleep(daemon.scheduler.settle)  # ... and the echoes of that write are over
    daemon.last_sweep = daemon.last_cycle = time.monotonic() - since
    timer: Optional[threading.Timer] = None
    if waker is not None:
        timer = threading.Timer(0.1, waker, args=(daemon,))
        timer.start()
    started = time.monotonic()
    daemon._sleep()
    if timer is not None:
        timer.join()
    assert (daemon.trigger, daemon.only) == (trigger, only)
    assert time.monotonic() - started < INTERVAL + 0.5
    daemon.cycle()
    assert (daemon.trigger, daemon.only) == ("sweep", None)  # one event cycle at a time
    assert (daemon.last_sweep == daemon.last_cycle) is (trigger == "sweep")


def test_a_reload_keeps_who_is_contested(root: Path) -> None:
    """SIGHUP builds a new engine; the fights of the old one carry over (a reload
    must not forgive an item someone keeps undoing)."""
    policy = root / "etc/k3s-agentd/policy.toml"
    policy.write_text('extends = "none"\n')
    daemon = Daemon(Host(root=str(root)), None, quiet_log())
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


def test_a_runtime_write_is_healed_by_a_targeted_cycle(root: Path, fake_proc: Path) -> None:
    """No event comes for `sysctl -w`: the fingerprint sample finds it, well before the interval."""
    (root / "etc/k3s-agentd/policy.toml").write_text(POLICY)
    daemon = Daemon(Host(root=str(root), proc=str(fake_proc)), None, quiet_log())
    daemon.policy = dataclasses.replace(daemon.policy, interval=60)
    daemon.cycle()
    panic = fake_proc / "sys/kernel/panic"
    assert panic.read_text() == "10"
    panic.write_text("0\n")
    started = time.monotonic()
    daemon._sleep()
    assert (daemon.trigger, daemon.only) == ("event", ["sysctl"])
    daemon.cycle()
    assert panic.read_text() == "10"
    assert time.monotonic() - started < 1.5
    # the status document is still the full view: every control, sysctl's report the new one
    doc = daemon.document
    assert doc["cycle"]["number"] == 2
    assert len(doc["controls"]) == len(daemon.engine.guards) > 1
    sysctl = next(c for c in doc["controls"] if c["name"] == "sysctl")
    assert [f["status"] for f in sysctl["findings"]] == ["healed"]
