"""k3s-agentctl: status, check, diff, apply, validate, confirm, rollback.

Exit codes (stable, scripts depend on them): 0 compliant, 1 drift present,
2 failures (or a refused policy), 3 daemon not running / busy / status unknown
(the reason is printed: "not running" or "busy / timed out"). `diff` exits
with the verdict too: 1 while any drift is left, also when all of it needs
you (apply would change nothing, the node is still not compliant).

`status` is what monitoring polls, often: it imports only what reading the
daemon's socket needs. The engine, the policy loader and structlog (~3/4 of
the start-up time) are imported by the commands that run a cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

from k3s_agent import __version__
from k3s_agent.host import RUN_DIR, Host, HostError, journald_listening, systemd_booted
from k3s_agent.model import Mode
from k3s_agent.policy.model import PROFILES, Policy
from k3s_agent.policy.schema import PolicyError
from k3s_agent.report import (
    EXIT_FAILED,
    EXIT_UNKNOWN,
    FORMATS,
    build_document,
    exit_code,
    render,
)
from k3s_agent.statusd import STATUS_NAME, NoAnswer, ask, query


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="k3s-agentctl", description="K3s node hardening agent")
    parser.add_argument("--version", action="version", version=__version__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=os.environ.get("K3S_AGENTD_ROOT", "/"), help="host root (tests)")
    common.add_argument("--proc", default=os.environ.get("K3S_AGENTD_PROC", "/proc"), help="proc mount")
    common.add_argument("--json", action="store_true", help="the node-compliance JSON document")
    common.add_argument("--verbose", "-v", action="store_true", help="show ok items too")
    # the report formats (docs/reports.md); `--json` stays the same as `--format json`
    formats = argparse.ArgumentParser(add_help=False)
    formats.add_argument("--format", choices=FORMATS, help="output format (default: table)")
    with_policy = argparse.ArgumentParser(add_help=False)
    source = with_policy.add_mutually_exclusive_group()
    source.add_argument("--policy", help="policy file (default: the installed policy + policy.d)")
    source.add_argument("--profile", choices=PROFILES, help="a built-in profile, ignoring local policy")
    with_policy.add_argument("--control", action="append", help="only this control (repeatable)")

    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", parents=[common, formats], help="what the daemon sees now")
    status.add_argument("--prometheus", action="store_true", help="same as --format prometheus")
    check_help = "one read-only check, no daemon needed"
    sub.add_parser("check", parents=[common, formats, with_policy], help=check_help)
    sub.add_parser("diff", parents=[common, formats, with_policy], help="what apply would change")
    apply = sub.add_parser("apply", parents=[common, formats, with_policy], help="one enforcing cycle")
    apply.add_argument("--all", action="store_true", help="also enforce controls the policy has in audit")
    apply.add_argument(
        "--confirm",
        type=_confirm_seconds,
        metavar="SECONDS",
        help="roll firewall/sshd changes back after SECONDS unless `k3s-agentctl confirm` runs",
    )
    confirm = sub.add_parser(
        "confirm", parents=[common], help="keep changes awaiting confirmation (run from a NEW ssh session)"
    )
    confirm.add_argument("--force", action="store_true", help="confirm outside an ssh session (console)")
    rollback = sub.add_parser(
        "rollback", parents=[common], help="roll back changes awaiting confirmation now"
    )
    rollback.add_argument("--due", action="store_true", help="only those whose deadline passed")
    rollback.add_argument("--wait", action="store_true", help="wait for the next deadline first (timers)")
    validate = sub.add_parser("validate", parents=[common], help="check a policy file, touch nothing")
    validate.add_argument("file", nargs="?", help="policy file (default: the installed policy + policy.d)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if "format" in args:
        args.format = _output_format(parser, args)
    read_only = args.command in ("check", "diff", "validate", "status")
    host = Host(root=args.root, proc=args.proc, read_only=read_only)
    handler = {
        "status": cmd_status,
        "check": cmd_check,
        "diff": cmd_diff,
        "apply": cmd_apply,
        "confirm": cmd_confirm,
        "rollback": cmd_rollback,
    }
    if args.command == "validate":
        return cmd_validate(args, host)
    return handler[args.command](args, host)


def _load(host: Host, path: Optional[str], profile: Optional[str] = None, preflight: bool = True) -> Policy:
    """The policy, with logging set up first: loading may warn (an expired waiver),
    and the engine logs; both go to stderr, never into --json output.
    preflight=False for the read-only reports (check, diff): see Policy.preflight."""
    from k3s_agent.log import configure
    from k3s_agent.policy.loader import load_policy

    configure(journal=False, verbose=False)
    return load_policy(host, path=path, profile=profile, preflight=preflight, registry=_registry())


def _registry() -> Any:
    """The controls of this build (imported on first use: `status` needs none)."""
    from k3s_agent.controls import default_registry

    return default_registry()


def _policy(args: argparse.Namespace, host: Host) -> Policy:
    return _load(host, args.policy, args.profile, preflight=args.command not in ("check", "diff"))


def _refused(exc: PolicyError) -> int:
    print("policy refused:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_FAILED


def _output_format(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """--format, or its older spellings --json / --prometheus; two different ones are an error."""
    asked = {args.format} - {None}
    if args.json:
        asked.add("json")
    if getattr(args, "prometheus", False):
        asked.add("prometheus")
    if len(asked) > 1:
        parser.error(f"choose one output format, not {' and '.join(sorted(asked))}")
    return asked.pop() if asked else "table"


def _emit(args: argparse.Namespace, document: dict[str, Any]) -> int:
    sys.stdout.write(render(document, args.format, args.verbose))
    return exit_code(document)


def _one_cycle(
    args: argparse.Namespace, host: Host, enforce: bool, gate: Any = None, policy: Optional[Policy] = None
) -> tuple[Policy, dict[str, Any]]:
    """Load the policy (PolicyError propagates) and run one cycle of it."""
    from k3s_agent.engine import Engine

    policy = policy or _policy(args, host)
    if enforce and getattr(args, "all", False):
        policy = policy.with_mode(Mode.ENFORCE)
    engine = Engine(policy, host, gate=gate, registry=_registry())
    cycle = engine.run_cycle(enforce=enforce, only=args.control)
    note = "one-shot apply" if enforce else "one-shot check: nothing changed"
    return policy, build_document(cycle, policy, {"running": None, "note": note})


def _confirm_seconds(text: str) -> float:
    from k3s_agent.confirm import MAX_TIMEOUT

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text}: between 1 and {MAX_TIMEOUT:g} seconds")
    return value


def _journal() -> Any:
    """Confirmations and rollbacks go to the journal, whoever runs them (stderr
    where no journald listens, e.g. in a container without systemd)."""
    from k3s_agent.log import configure

    return configure(journal=journald_listening(), verbose=False)


def cmd_check(args: argparse.Namespace, host: Host) -> int:
    try:
        _, document = _one_cycle(args, host, enforce=False)
    except PolicyError as exc:
        return _refused(exc)
    return _emit(args, document)


def cmd_apply(args: argparse.Namespace, host: Host) -> int:
    """One enforcing cycle. Controls rolled back and not confirmed stay held; with
    --confirm, every firewall/sshd change is armed for rollback."""
    from k3s_agent.confirm import Gate, Ledger, ssh_session

    try:
        policy = _policy(args, host)
    except PolicyError as exc:
        return _refused(exc)
    timeout = args.confirm or 0.0
    ledger = Ledger(host, log=_journal() if timeout else None)
    by = "k3s-agentctl apply --confirm" if timeout else "k3s-agentctl apply"
    gate = Gate(ledger, timeout, by=by, every_change=True, session=ssh_session(os.environ, host.proc))
    _, document = _one_cycle(args, host, enforce=True, gate=gate, policy=policy)
    document["confirmation"] = ledger.summary()
    if timeout:
        _announce(host, ledger, gate.armed_now, timeout)
    return _emit(args, document)


def _announce(host: Host, ledger: Any, armed: list[str], timeout: float) -> None:
    from k3s_agent.confirm import arrange_rollback, stamp

    if not armed:
        print("nothing changed that needs confirmation", file=sys.stderr)
        return
    pending = ledger.read().pending()
    deadline = min(pending[n].deadline for n in armed if n in pending)
    how = arrange_rollback(host, timeout)
    query(host.run_dir, "wake")  # a running daemon re-reads the record and watches it too
    print(
        f"{', '.join(armed)}: changed. ROLLED BACK at {stamp(deadline)} unless you run "
        f"`k3s-agentctl confirm` from a NEW ssh session before then (watching: {how}"
        f"{' and k3s-agentd' if query(host.run_dir, 'status') else ''})",
        file=sys.stderr,
    )


def cmd_confirm(args: argparse.Namespace, host: Host) -> int:
    """Keep what awaits confirmation, when run from a new SSH session (or --force)."""
    from k3s_agent.confirm import Ledger, ssh_session, stamp

    session = ssh_session(os.environ, host.proc)
    if not session and not args.force:
        print(
            "refused: not in an SSH session (SSH_CONNECTION is not set here or in a parent). "
            "Confirm from a NEW ssh login, which proves the node is still reachable; "
            "on a console use --force.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    ledger = Ledger(host, log=_journal())
    pending = ledger.read().pending()
    if not pending:
        held = ledger.summary()
        print("nothing awaits confirmation" + (f" ({held['message']})" if held else ""))
        return 0
    same = sorted(n for n, e in pending.items() if session and e.session == session)
    if same and not args.force:
        print(
            f"refused: this is the SSH session that applied {', '.join(same)} ({session}); "
            "open a NEW ssh session and confirm there (that proves a new login still works)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    who = f"ssh session {session}" if session else "the console (--force)"
    done = ledger.confirm(session or "console (--force)")
    for name in done:
        entry = pending[name]
        ledger.log.info(
            f"{name}: confirmed from {who}: keeping the change {entry.by} applied at {stamp(entry.at)} "
            f"(rollback was due at {stamp(entry.deadline)})",
            control=name,
        )
    _stop_timers(host)
    query(host.run_dir, "wake")
    print(f"confirmed: {', '.join(done)}")
    return 0


def _stop_timers(host: Host) -> None:
    """The transient rollback timers are moot now; one left would find nothing due anyway."""
    from k3s_agent.confirm import TIMER_PREFIX

    systemctl = host.which("systemctl")
    if host.root == "/" and systemctl and systemd_booted():
        host.run([systemctl, "stop", f"{TIMER_PREFIX}*.timer"])


def cmd_rollback(args: argparse.Namespace, host: Host) -> int:
    """Roll back what awaits confirmation: all of it now, or (--due) what is due,
    after waiting for the next deadline (--wait; what the rollback timer runs)."""
    import time

    from k3s_agent.confirm import Ledger, control_restorer

    ledger = Ledger(host, log=_journal())
    while args.wait:
        left = ledger.next_due_in()
        if left is None or left <= 0:
            break
        time.sleep(min(left, 5.0))
    why = "on request (k3s-agentctl rollback)"
    lines = ledger.rollback(control_restorer(host, registry=_registry()), only_due=args.due, why=why)
    for line in lines:
        print(line)
    if not lines:
        print("nothing to roll back")
    query(host.run_dir, "wake")
    return EXIT_FAILED if any("ROLLBACK FAILED" in line for line in lines) else 0


def cmd_diff(args: argparse.Namespace, host: Host) -> int:
    try:
        _, document = _one_cycle(args, host, enforce=False)
    except PolicyError as exc:
        return _refused(exc)
    if args.format != "table":
        return _emit(args, document)
    changes, declined = 0, []
    for control in document["controls"]:
        note = "" if control["mode"] == Mode.ENFORCE.value else "   (audit mode: apply leaves it)"
        for f in control["findings"]:
            if f["status"] not in ("drift", "contested"):
                continue
            if f.get("declined"):  # apply will not act on it: not a change, a job for a human
                declined.append(f"needs you: {control['name']} {f['key']}: {f['message']}; {f['declined']}")
                continue
            changes += 1
            print(f"{control['name']} {f['key']}{note}")
            print(f"  - {f['observed']}")
            print(f"  + {f['desired']}")
    for line in declined:
        print(line)
    if not declined:
        print(f"{changes} item(s) would change" if changes else "nothing to change")
    else:
        would = f"{changes} item(s) would change" if changes else "nothing apply would change"
        print(f"{would}; {len(declined)} item(s) need you (apply leaves them)")
    return exit_code(document)


def cmd_validate(args: argparse.Namespace, host: Host) -> int:
    try:
        policy = _load(host, args.file)
    except PolicyError as exc:
        return _refused(exc)
    items = sum(len(c.items) for c in policy.controls.values() if c.enabled)
    enabled = [n for n, c in policy.controls.items() if c.enabled]
    if args.json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "profile": policy.profile,
                    "benchmark": policy.benchmark.to_dict(),
                    "items": items,
                    "sources": list(policy.sources),
                }
            )
        )
    else:
        print(
            f"policy ok: profile {policy.profile}, mode {policy.mode}, "
            f"{items} items in {len(enabled)} controls"
        )
        print(f"  benchmark {policy.benchmark.name} ({policy.benchmark.reason})")
        for source in policy.sources:
            print(f"  {source}")
    return 0


# Our own status file: large with many files items, still never read without a cap.
STATUS_LIMIT = 64 << 20


def cmd_status(args: argparse.Namespace, host: Host) -> int:
    try:
        document = ask(host.run_dir, "status")
    except NoAnswer as exc:
        return _status_offline(args, host, exc)
    return _emit(args, document)


def _status_offline(args: argparse.Namespace, host: Host, why: NoAnswer) -> int:
    """No answer: say which kind (not running / busy) and why, then the last status file."""
    state = {True: "busy / timed out", False: "NOT running", None: "unreachable"}[why.running]
    path = f"{RUN_DIR}/{STATUS_NAME}"
    try:
        document = json.loads(host.read_bytes(path, limit=STATUS_LIMIT) or b"")
        if not isinstance(document, dict):
            raise ValueError("not an object")
    except (OSError, HostError, ValueError):
        message = f"k3s-agentd is {state.replace('NOT', 'not')} and has recorded no status ({why})"
        daemon = {"running": why.running, "answered": False, "reason": str(why)}
        if args.format == "json":
            print(json.dumps({"daemon": daemon, "error": message}))
        else:
            # table: the reader; machine formats: stdout stays empty, not a broken report
            print(message, file=sys.stdout if args.format == "table" else sys.stderr)
        return EXIT_UNKNOWN
    if not isinstance(document.get("daemon"), dict):
        document["daemon"] = {}
    daemon = document["daemon"]
    daemon.update(running=why.running, answered=False, reason=str(why))
    daemon["note"] = (
        f"k3s-agentd is {state}; last status from {host.path(path)} ({document.get('generated_at')}); {why}"
    )
    if args.format not in ("table", "json"):
        print(daemon["note"], file=sys.stderr)  # these formats have no place for it
    sys.stdout.write(render(document, args.format, args.verbose))
    return EXIT_UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
