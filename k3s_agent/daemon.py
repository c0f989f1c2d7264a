"""k3s-agentd: the engine on a timer, under systemd.

Wakes on the interval (a sweep of every control), on SIGHUP (reload the policy;
a bad one is refused and the old one stays), on `k3s-agentctl` asking, and for a
targeted cycle of the controls whose watch fired or whose fingerprint moved
(scheduler.py decides which and when).
SIGTERM finishes the current control and exits 0. Readiness, watchdog and a
STATUS= line go to systemd through sd_notify.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Optional

from k3s_agent import __version__
from k3s_agent.confirm import Gate, Ledger, control_restorer
from k3s_agent.controls import RegistryError, default_registry
from k3s_agent.engine import CycleReport, Engine, merge_reports
from k3s_agent.host import Host, HostError, sweep_stale_temps, write_private
from k3s_agent.log import MESSAGE_IDS, configure, finding_fields, finding_message, refusal_message
from k3s_agent.metrics import HealTally, textfile_path
from k3s_agent.model import Finding, Mode, Status
from k3s_agent.policy.loader import Registry, load_policy
from k3s_agent.policy.model import Policy
from k3s_agent.policy.schema import PolicyError
from k3s_agent.policy.snapshot import fallback_policy, save_last_good
from k3s_agent.report import build_document, render_prometheus, to_json
from k3s_agent.scheduler import Scheduler
from k3s_agent.statusd import STATUS_NAME, StatusServer
from k3s_agent.watch import NetlinkWatcher, PathWatcher, netlink_kind

METRICS_NAME = "metrics.prom"


def sd_notify(message: str) -> None:
    """sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Non-blocking: a notify socket nobody drains must never stall the loop.
    # (Two with statements: parenthesized context managers are Python 3.10 grammar.)
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, kind) as sock:
        sock.sendto(message.encode(), address)


class Daemon:
    def __init__(self, host: Host, policy_path: Optional[str], log: Any, registry: Optional[Registry] = None):
        self.host = host
        # The controls of this build, for every load, engine and rollback; built
        # here, so a broken build fails at start (RegistryError), not mid-run.
        self.registry = default_registry() if registry is None else registry
        self.policy_path = policy_path
        self.log = log
        self.wake_event = threading.Event()
        self.stopping = False
        self.reload_requested = False
        self.heartbeat = time.monotonic()
        self.counters = {"heals_total": 0, "heal_failures_total": 0, "policy_reload_failures_total": 0}
        self.heal_tally = HealTally()  # heals per control, last heal (metrics)
        self.policy_error: Optional[str] = None
        self.policy_fallback: Optional[str] = None  # what runs instead of a refused policy at start
        self.last_logged: dict[tuple[str, str], Status] = {}
        self.ledger = Ledger(host, log=log)
        self.policy = self._initial_policy()
        self.engine = self._engine(self.policy)
        self.scheduler = Scheduler()
        self.scheduler.reset(self.engine.controls)
        self.last: Optional[CycleReport] = None
        self.document: dict[str, Any] = {}
        self.watchers: list[Any] = []
        self.last_cycle = 0.0
        self.last_sweep = 0.0
        self.trigger = "sweep"  # why the next cycle runs: "sweep" or "event" (a watch fired)
        self.only: Optional[list[str]] = None  # the controls an event cycle checks
        self.wake_reasons: set[str] = set()

    # -- policy ---------------------------------------------------------------------

    def _load(self) -> Policy:
        """load_policy in a worker thread: a 1 MiB policy can take a second or two
        to parse, and SIGTERM must not wait for it (_Abandoned: we are stopping)."""
        result: list[Any] = []

        def work() -> None:
            try:
                result.append(
                    load_policy(self.host, path=self.policy_path, dropins=None, registry=self.registry)
                )
            except Exception as exc:  # noqa: BLE001 - handed to the main thread below
                result.append(exc)

        worker = threading.Thread(target=work, name="policy-load", daemon=True)
        worker.start()
        while worker.is_alive() and not self.stopping:
            worker.join(0.1)  # short: a signal delivered to another thread runs only here
        if not result:
            raise _Abandoned()
        if isinstance(result[0], Policy):
            return result[0]
        if not isinstance(result[0], PolicyError):  # a loader bug must not stop the daemon either
            self.log.error("policy loader failed", error=repr(result[0]))
            raise PolicyError([f"policy: loader failed: {type(result[0]).__name__}: {result[0]}"])
        raise result[0]

    def _initial_policy(self) -> Policy:
        try:
            policy = self._load()
        except PolicyError as exc:
            # Start with the last policy that was good, so a bad edit followed by a
            # reboot does not leave the node unguarded (policy/snapshot.py says why
            # the built-in profile in audit mode, not exit, when there is none).
            policy, self.policy_fallback = fallback_policy(self.host, self.registry)
            self._refused(exc, f"starting with {self.policy_fallback}")
            return policy
        save_last_good(self.host, policy, self.registry)
        return policy

    def reload(self) -> None:
        try:
            policy = self._load()
        except PolicyError as exc:
            self._refused(exc, "keeping the one in force")
            return
        except _Abandoned:
            return  # SIGTERM during the reload: the old policy runs until we exit
        save_last_good(self.host, policy, self.registry)
        self.policy, self.policy_error, self.policy_fallback = policy, None, None
        engine = self._engine(policy)
        engine.contest.adopt(self.engine.contest)
        self.engine = engine
        self.scheduler.reset(self.engine.controls)
        self.trigger, self.only = "sweep", None  # a new policy: check everything
        self._restart_watcher()
        released = self.ledger.release_held()
        if released:
            self.log.warning(
                f"policy reloaded: {', '.join(released)} had been rolled back and may be healed again "
                f"(the next change awaits confirmation when confirm_timeout is set)"
            )
        self.log.info(
            "policy reloaded",
            message_id=MESSAGE_IDS["policy_reloaded"],
            profile=policy.profile,
            sources=",".join(policy.sources),
        )

    def _refused(self, exc: PolicyError, keeping: str) -> None:
        self.policy_error = str(exc)
        self.counters["policy_reload_failures_total"] += 1
        self.log.error(
            refusal_message(exc.problems, keeping),
            message_id=MESSAGE_IDS["policy_refused"],
            problems=str(exc),
        )

    def _engine(self, policy: Policy) -> Engine:
        gate = Gate(self.ledger, policy.confirm_timeout, by="k3s-agentd")
        return Engine(
            policy,
            self.host,
            on_event=self._on_event,
            on_progress=self._beat,
            gate=gate,
            registry=self.registry,
        )

    def _rollback_due(self) -> None:
        """Restore every change whose confirmation deadline passed (also one left
        pending by a crashed daemon, a reboot, or `k3s-agentctl apply --confirm`)."""
        try:
            self.ledger.rollback(control_restorer(self.host, self.engine.controls, self.registry))
        except Exception as exc:  # noqa: BLE001 - logged; the record stays and is retried
            self.log.error(f"rollback of unconfirmed changes failed: {exc}; will retry")

    def _beat(self, _control: str = "") -> None:
        self.heartbeat = time.monotonic()

    # -- events --------------------------------------------------------------------

    def _on_event(self, event: str, finding: Finding) -> None:
        self.heartbeat = time.monotonic()
        healed = event == Status.HEALED.value  # a contested item's heal too
        if healed:
            self.counters["heals_total"] += 1
        elif finding.status is Status.FAILED:
            self.counters["heal_failures_total"] += 1
        if finding.status in (Status.ABSENT, Status.UNSUPPORTED):
            return
        # Every heal is an event; other states are logged when they change, so an
        # audit-mode node does not repeat the same drift every interval.
        item = (finding.control, finding.key)
        if not healed and self.last_logged.get(item) == finding.status:
            return
        self.last_logged[item] = finding.status
        level = "warning" if finding.status in (Status.FAILED, Status.CONTESTED) else "info"
        getattr(self.log, level)(finding_message(event, finding), **finding_fields(finding))

    def wake(self, why: str = "") -> None:
        """Run a sweep now (`k3s-agentctl wake`)."""
        self.wake_reasons.add(why)
        self.wake_event.set()

    def _fired(self, controls: set[str]) -> None:
        """A watch of these controls fired (watcher threads): look again if one became due."""
        if self.scheduler.fired(controls):
            self.wake_event.set()

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        # Before anything else: a change nobody confirmed before a crash or a
        # reboot must come back first, and must not be healed over.
        self._rollback_due()
        server = StatusServer(self.host.run_dir, lambda: self.document, self.wake)
        server.start()
        self._install_signals()
        self._restart_watcher()
        self._start_watchdog()
        sd_notify(f"READY=1\nSTATUS=first check cycle\nMAINPID={os.getpid()}")
        self.log.info(
            "started",
            message_id=MESSAGE_IDS["started"],
            version=__version__,
            profile=self.policy.profile,
            interval=self.policy.interval,
        )
        try:
            while not self.stopping:
                self.heartbeat = time.monotonic()
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                self.cycle()
                self._sleep()
        finally:
            sd_notify("STOPPING=1")
            self.log.info("stopping", message_id=MESSAGE_IDS["stopping"])
            server.close()
            for watcher in self.watchers:
                watcher.stop()  # all threads wind down at once, not one join after another
            for watcher in self.watchers:
                watcher.close()
        return 0

    def cycle(self) -> None:
        """A sweep of every control, or an event cycle of self.only; the status
        document stays the latest full view (a targeted report is merged in)."""
        self.last_cycle = time.monotonic()
        self._rollback_due()
        idle = [n for n, c in self.policy.controls.items() if not (c.enabled and c.mode is Mode.ENFORCE)]
        self.ledger.forget_established(idle)
        trigger, self.trigger = self.trigger, "sweep"
        only, self.only = self.only, None
        if trigger == "sweep" or not only:
            self.last_sweep, only = self.last_cycle, None
        before = self.scheduler.before(only or list(self.engine.guards))
        cpu = time.process_time()
        report = self.engine.run_cycle(enforce=True, only=only, trigger=trigger)
        self.last = merge_reports(self.last, report) if only else report
        self.heartbeat = time.monotonic()
        self.document = build_document(self.last, self.policy, self._daemon_facts())
        self.document["confirmation"] = self.ledger.summary()
        self._publish()
        # Publishing is part of what an event costs: charged to the controls checked.
        self.scheduler.record(report, before, time.process_time() - cpu, targeted=only is not None)

    def _sleep(self) -> None:
        """Wait for the next sweep (one interval after the last sweep, however many
        event cycles ran since), a manual wake, or controls the scheduler says are
        due; sets self.trigger and self.only."""
        deadline = self.last_sweep + self.policy.interval
        while not self.stopping and not self.reload_requested:
            self.heartbeat = now = time.monotonic()
            if now >= deadline or self.wake_reasons:
                self.wake_reasons = set()
                return  # a sweep: the interval is up, or `k3s-agentctl wake`
            # Every slice: `k3s-agentctl apply --confirm` may have armed one (an unchanged
            # record costs one lstat: the ledger parses the file only when it changed).
            rollback_in = self.ledger.next_due_in()
            if rollback_in is not None and rollback_in <= 0:
                return  # a sweep, which rolls back first
            due = self.scheduler.due()
            if due:
                self.trigger, self.only = "event", due
                return
            # Short waits: a signal that the kernel hands to another thread runs its
            # Python handler only when this thread wakes (SIGTERM within 2 s).
            until = min(deadline, self.scheduler.next_wake(), now + 0.5)
            if rollback_in is not None:
                until = min(until, now + rollback_in)
            if self.wake_event.wait(max(until - now, 0.0)):
                self.wake_event.clear()

    def _daemon_facts(self) -> dict[str, Any]:
        return {
            "running": True,
            "pid": os.getpid(),
            "policy_error": self.policy_error,
            "policy_fallback": self.policy_fallback,
            "watching": [w for watcher in self.watchers for w in watcher.watching],
            "events": self.scheduler.stats(),
            **self.counters,
        }

    def _publish(self) -> None:
        summary = self.document["summary"]
        counts = summary["by_status"]
        line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        confirmation = self.document.get("confirmation") or {}
        prefix = f"{confirmation['message']}; " if confirmation.get("message") else ""
        sd_notify(f"STATUS={prefix}{summary['verdict']}: {line}")
        self.document["daemon"].update(self.heal_tally.record(self.document))
        metrics = render_prometheus(self.document).encode()
        # "auto" (the default): node_exporter's textfile folder when it is installed
        textfile = textfile_path(self.policy.metrics_textfile, self.host.is_dir)
        try:
            write_private(os.path.join(self.host.run_dir, STATUS_NAME), to_json(self.document).encode())
            write_private(os.path.join(self.host.run_dir, METRICS_NAME), metrics)
            if textfile:
                self.host.write_atomic(textfile, metrics, mode=0o644, backup=False)
        except (OSError, HostError) as exc:
            self.log.warning("cannot publish status", error=str(exc))

    def _install_signals(self) -> None:
        def on_term(signum: int, _frame: Any) -> None:
            self.stopping = True
            self.wake_event.set()

        def on_hup(_signum: int, _frame: Any) -> None:
            self.reload_requested = True
            self.wake_event.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _restart_watcher(self) -> None:
        for watcher in self.watchers:
            watcher.close()
        # Which controls each watch belongs to: an event checks only those.
        paths: dict[str, set[str]] = {}
        kinds: dict[str, set[str]] = {}
        netlink = []
        for name, control in self.engine.controls.items():
            for w in _safe_watches(control):
                if w.kind == "path":
                    paths.setdefault(self.host.path(w.target), set()).add(name)
                elif w.kind == "netlink":
                    netlink.append(w.target)
                    kinds.setdefault(netlink_kind(w.target), set()).add(name)
        sweep_stale_temps(list(paths))  # temps of an agent killed mid-write, in the folders we manage
        self.watchers = [
            PathWatcher(list(paths), lambda path: self._fired(paths.get(path, set()))),
            NetlinkWatcher(netlink, lambda kind: self._fired(kinds.get(kind, set()))),
        ]
        for watcher in self.watchers:
            watcher.start()

    def _start_watchdog(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec <= 0:
            return
        period = usec / 1e6

        def ping() -> None:
            # Ping only while the main loop makes progress: a hung loop must
            # let the watchdog fire and systemd restart us.
            while not self.stopping:
                if time.monotonic() - self.heartbeat < period:
                    sd_notify("WATCHDOG=1")
                time.sleep(period / 3)

        threading.Thread(target=ping, name="watchdog", daemon=True).start()


class _Abandoned(Exception):
    """A policy load left unfinished because the daemon is stopping."""


def _safe_watches(control: Any) -> list[Any]:
    try:
        return list(control.watches())
    except Exception:  # noqa: BLE001 - a broken watch list only costs early wake-ups
        return []


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="k3s-agentd", description="K3s node hardening agent")
    parser.add_argument("--root", default=os.environ.get("K3S_AGENTD_ROOT", "/"))
    parser.add_argument("--proc", default=os.environ.get("K3S_AGENTD_PROC", "/proc"))
    parser.add_argument("--policy", help="policy file (default: /etc/k3s-agentd/policy.toml + policy.d)")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    log = configure(verbose=args.verbose)
    host = Host(root=args.root, proc=args.proc)
    try:
        daemon = Daemon(host, args.policy, log)
    except PolicyError as exc:
        print(f"k3s-agentd: policy refused and no last good policy to fall back to:\n{exc}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd shows it, Restart=on-failure will retry
    except RegistryError as exc:
        # A control module that fails to import, a duplicate or a missing one: a
        # broken build, never a node checked with a control silently missing.
        print(f"k3s-agentd: cannot start, the controls of this build are broken: {exc}", file=sys.stderr)
        return 70  # EX_SOFTWARE
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
