"""The status socket under many, idle, slow and hostile clients; the CLI tells busy from down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3s_agent import statusd
from k3s_agent.statusd import SOCKET_NAME, STATUS_NAME, NoAnswer, StatusServer, ask

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = {"schema_version": 1, "summary": {"verdict": "compliant"}, "daemon": {"running": True}}
RUN = "run/k3s-agentd"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[StatusServer]:
    server = StatusServer(str(tmp_path / RUN), lambda: DOCUMENT, lambda: None)
    server.start()
    yield server
    server.close()


def _idle(path: str, count: int) -> list[socket.socket]:
    """Clients that connect and never say a word."""
    clients = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        clients.append(sock)
    return clients


def _cli(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "k3s_agent.cli", "status", "--root", str(root), *args]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    return proc, time.monotonic() - start


def test_100_idle_connections_do_not_delay_status(tmp_path: Path, served: StatusServer) -> None:
    _, baseline = _cli(tmp_path, "--json")
    idle = _idle(served.path, 100)
    try:
        start = time.monotonic()
        assert ask(str(tmp_path / RUN)) == DOCUMENT
        assert time.monotonic() - start < 1.0
        proc, spent = _cli(tmp_path, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout) == DOCUMENT
        assert spent - baseline < 1.0, f"status: {spent:.2f}s with 100 idle clients, {baseline:.2f}s without"
    finally:
        for sock in idle:
            sock.close()


def test_more_idle_clients_than_the_cap_still_leave_room(
    tmp_path: Path, served: StatusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statusd, "MAX_CLIENTS", 8)
    idle = _idle(served.path, 40)
    try:
        assert ask(str(tmp_path / RUN), timeout=1.0) == DOCUMENT
    finally:
        for sock in idle:
            sock.close()


def test_a_silent_client_is_dropped_at_the_deadline(served: StatusServer) -> None:
    (sock,) = _idle(served.path, 1)
    with sock:
        sock.settimeout(statusd.DEADLINE + 2)
        start = time.monotonic()
        assert sock.recv(10) == b""
        assert statusd.DEADLINE - 0.1 < time.monotonic() - start < statusd.DEADLINE + 3  # a busy CI


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        (b"status\n", DOCUMENT),
        (b"status", DOCUMENT),  # then EOF: the request is what came
        (b"wake\n", {"ok": True}),
        (b"x" * 10_000, {"error": "request longer than 256 bytes"}),
        (b"hello\n", {"error": "unknown request 'hello'"}),
        (b"\xff\xfe\n", {"error": "unknown request '\ufffd\ufffd'"}),
    ],
)
def test_requests_are_bounded_and_answered(served: StatusServer, request_bytes: bytes, answer: dict) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(served.path)
        with contextlib.suppress(OSError):  # the server may answer and close before all is sent
            sock.sendall(request_bytes)
            if not request_bytes.endswith(b"\n"):
                sock.shutdown(socket.SHUT_WR)
        data = b""
        # A request too long leaves bytes unread at close: the kernel then ends
        # the stream with ECONNRESET after the answer instead of EOF.
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    assert json.loads(data) == answer


def test_clients_that_vanish_do_not_end_the_server(tmp_path: Path, served: StatusServer) -> None:
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(served.path)
            sock.sendall(b"status\n")  # and leave without reading
    assert ask(str(tmp_path / RUN)) == DOCUMENT


SERVE_FOREVER = """
import sys, time
from k3s_agent.statusd import StatusServer
StatusServer(sys.argv[1], lambda: {}, lambda: None).start()
print("up", flush=True)
time.sleep(600)
"""


def test_killed_daemon_is_not_running(tmp_path: Path) -> None:
    run = tmp_path / RUN
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SERVE_FOREVER, str(run)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / SOCKET_NAME).is_socket()  # left behind, as after a real kill -9
    with pytest.raises(NoAnswer) as caught:
        ask(str(run))
    assert caught.value.running is False
    (run / STATUS_NAME).write_text(json.dumps({**DOCUMENT, "generated_at": "2026-01-01T00:00:00Z"}))
    out, _ = _cli(tmp_path, "--json")
    assert out.returncode == 3
    daemon = json.loads(out.stdout)["daemon"]
    assert (daemon["running"], daemon["answered"]) == (False, False)
    assert daemon["note"].startswith("k3s-agentd is NOT running; last status from")
    assert "nobody listens on the socket" in daemon["reason"]


def test_busy_daemon_is_told_from_a_dead_one(tmp_path: Path) -> None:
    """A daemon that holds its socket but does not answer: 'busy / timed out', still exit 3."""
    run = tmp_path / RUN
    run.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(str(run / SOCKET_NAME))
        stuck.listen(8)  # accepted by the kernel, never answered
        with pytest.raises(NoAnswer) as caught:
            ask(str(run), timeout=0.5)
        assert caught.value.running is True
        out, _ = _cli(tmp_path, "--json")
    assert out.returncode == 3
    document = json.loads(out.stdout)
    assert document["daemon"]["running"] is True and document["daemon"]["answered"] is False
    assert "busy / timed out" in document["error"] and "no answer within 5s" in document["daemon"]["reason"]
