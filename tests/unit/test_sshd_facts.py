"""sshd facts: the `sshd -T` answer cache each caller owns (keyed, bounded), asked of the real sshd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from k3s_agent.host import Host
from k3s_agent.sshd import facts
from k3s_agent.sshd.config import parse_effective

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is not installed")


@pytest.fixture
def host(root: Path) -> Host:
    key = root / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    write_config(root, 2200)
    return Host(root=str(root))


def write_config(root: Path, port: int) -> None:
    config = root / facts.MAIN_CONFIG.lstrip("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"Port {port}\nHostKey {root}/hostkey\n")


def ask(answers: facts.Answers, host: Host, *extra: str) -> subprocess.CompletedProcess:
    answer = answers.get(SSHD, ["-T", "-f", host.path(facts.MAIN_CONFIG), *extra])
    assert answer is not None and answer.returncode == 0, answer
    return answer


def test_an_answer_is_kept_until_a_config_file_changes(host: Host, root: Path) -> None:
    answers = facts.Answers(host)
    first = ask(answers, host)
    assert ask(answers, host) is first  # kept: sshd was not asked again
    assert parse_effective(first.stdout)["port"] == ["2200"]
    write_config(root, 22222)  # another size too: mtime may not move within a tick
    changed = ask(answers, host)
    assert changed is not first and parse_effective(changed.stdout)["port"] == ["22222"]
    (root / facts.CONFIG_DIR.lstrip("/")).mkdir()
    (root / facts.CONFIG_DIR.lstrip("/") / "10-x.conf").write_text("")  # a new drop-in: asked again
    assert ask(answers, host) is not changed


def test_each_caller_has_its_own_answers(host: Host) -> None:
    mine, theirs = facts.Answers(host), facts.Answers(host)
    kept = ask(mine, host)
    assert len(theirs) == 0
    other = ask(theirs, host)
    assert other is not kept and other.stdout == kept.stdout
    assert ask(mine, host) is kept


def test_answers_are_bounded_least_recently_used_first_out(host: Host) -> None:
    answers = facts.Answers(host, limit=2)
    a = ask(answers, host, "-C", "user=a")
    b = ask(answers, host, "-C", "user=b")
    assert ask(answers, host, "-C", "user=a") is a  # a is now the most recent
    ask(answers, host, "-C", "user=c")
    assert len(answers) == 2
    assert ask(answers, host, "-C", "user=a") is a
    assert ask(answers, host, "-C", "user=b") is not b  # dropped, asked again


def test_no_answer_when_sshd_cannot_run(host: Host, root: Path) -> None:
    assert facts.Answers(host).get(str(root / "no-such-sshd"), ["-T"]) is None


def test_config_ports_read_port_and_listen_address(host: Host, root: Path) -> None:
    config = root / facts.MAIN_CONFIG.lstrip("/")
    config.write_text(config.read_text() + "ListenAddress 127.0.0.1:2300\n")
    assert facts.sshd_config_ports(host, facts.Answers(host)) == [2200, 2300]
