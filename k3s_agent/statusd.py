"""The root-only status socket: /run/k3s-agentd/agentd.sock.

A line protocol on a unix stream socket: the client sends `status` (answer:
the node-compliance JSON document) or `wake` (run a cycle now; answer
`ok`). Peers other than root are refused by SO_PEERCRED, and the socket is
0600 in a 0700 runtime directory. No network listener, ever.

One thread serves every client through a selector, none of them blocking the
others: a client has DEADLINE seconds from connect to the end of our answer
and MAX_REQUEST bytes for its request line, and when MAX_CLIENTS are connected
the oldest one still silent is dropped. So idle or slow clients (ten of them
made `k3s-agentctl status` report the daemon dead when clients were served one
at a time) cost a file descriptor each, never another client's answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable, Optional

SOCKET_NAME = "agentd.sock"
STATUS_NAME = "status.json"
MAX_REQUEST = 256
DEADLINE = 2.0
MAX_CLIENTS = 256
QUERY_TIMEOUT = 5.0


class StatusServer:
    def __init__(
        self,
        run_dir: str,
        document: Callable[[], dict[str, Any]],
        wake: Callable[[], None],
        allowed_uid: int = 0,
    ):
        self.path = os.path.join(run_dir, SOCKET_NAME)
        self.document = document
        self.wake = wake
        self.allowed_uid = allowed_uid
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self._stop = threading.Event()
        # close() wakes the selector through this pair instead of closing a socket under it.
        self._bell, self._bell_rx = socket.socketpair()  # non-inheritable by default (PEP 446)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="status-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._bell.send(b"x")
        if self._thread is not None:
            self._thread.join(2)
        try:
            self.sock.close()
            self._bell.close()
            self._bell_rx.close()
        finally:
            if os.path.lexists(self.path):
                os.unlink(self.path)

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        clients: dict[int, _Client] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._bell_rx, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _events in selector.select(_wait(clients)):
                    if key.fileobj is self.sock:
                        self._accept(selector, clients)
                    elif key.fd in clients:
                        self._step_safely(selector, clients, clients[key.fd])
                now = time.monotonic()
                for client in [c for c in clients.values() if c.deadline < now]:
                    _drop(selector, clients, client)
            for client in list(clients.values()):
                _drop(selector, clients, client)

    def _accept(self, selector: selectors.BaseSelector, clients: dict[int, _Client]) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again at the next wake-up
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            if len(clients) >= MAX_CLIENTS:
                silent = [c for c in clients.values() if not c.out]
                _drop(selector, clients, min(silent or clients.values(), key=lambda c: c.deadline))
            conn.setblocking(False)
            client = _Client(conn, time.monotonic() + DEADLINE)
            clients[conn.fileno()] = client
            if _peer_uid(conn) not in (0, self.allowed_uid):
                client.answer(selector, b'{"error": "permission denied: root only"}\n', registered=False)
            else:
                selector.register(conn, selectors.EVENT_READ)

    def _step_safely(
        self, selector: selectors.BaseSelector, clients: dict[int, _Client], client: _Client
    ) -> None:
        # One bad exchange (a client gone, a document that will not serialize)
        # costs that client, never the status thread.
        try:
            if self._step(selector, client):
                _drop(selector, clients, client)
        except (BlockingIOError, InterruptedError):
            return  # not ready after all: the selector calls again
        except Exception:  # noqa: BLE001
            _drop(selector, clients, client)

    def _step(self, selector: selectors.BaseSelector, client: _Client) -> bool:
        """Move one exchange on by one read or write; True when it is over."""
        if client.out:
            client.sent += client.conn.send(client.out[client.sent :])
            return client.sent >= len(client.out)
        data = client.conn.recv(MAX_REQUEST + 1 - len(client.request))
        if not data and not client.request:
            return True  # connected and left without asking
        client.request += data
        line, newline, _ = bytes(client.request).partition(b"\n")
        if newline or not data:
            client.answer(selector, self._respond(line.decode("ascii", errors="replace").strip()))
        elif len(client.request) > MAX_REQUEST:
            client.answer(selector, _error(f"request longer than {MAX_REQUEST} bytes"))
        return False

    def _respond(self, request: str) -> bytes:
        if request == "status":
            return json.dumps(self.document()).encode() + b"\n"
        if request == "wake":
            self.wake()
            return b'{"ok": true}\n'
        return _error(f"unknown request {request[:32]!r}")


@dataclasses.dataclass
class _Client:
    conn: socket.socket
    deadline: float
    request: bytearray = dataclasses.field(default_factory=bytearray)
    out: bytes = b""
    sent: int = 0

    def answer(self, selector: selectors.BaseSelector, data: bytes, registered: bool = True) -> None:
        self.out = data
        if registered:
            selector.modify(self.conn, selectors.EVENT_WRITE)
        else:
            selector.register(self.conn, selectors.EVENT_WRITE)


def _wait(clients: dict[int, _Client]) -> Optional[float]:
    if not clients:
        return None
    return max(0.0, min(c.deadline for c in clients.values()) - time.monotonic())


def _drop(selector: selectors.BaseSelector, clients: dict[int, _Client], client: _Client) -> None:
    with contextlib.suppress(KeyError, ValueError, OSError):
        selector.unregister(client.conn)
    for fd, known in list(clients.items()):
        if known is client:
            del clients[fd]
    client.conn.close()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


# -- the client side -------------------------------------------------------------------------


class NoAnswer(Exception):
    """The daemon did not answer. `running` tells "busy / timed out" (True) from
    "not running" (False) and "cannot tell" (None, e.g. not root); the message says
    what happened."""

    def __init__(self, reason: str, running: Optional[bool]):
        super().__init__(reason)
        self.running = running


def ask(run_dir: str, request: str = "status", timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
    """The daemon's answer to a request; NoAnswer saying why there is none."""
    path = os.path.join(run_dir, SOCKET_NAME)
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            why = "no socket" if isinstance(exc, FileNotFoundError) else "nobody listens on the socket"
            raise NoAnswer(f"{why} at {path}", running=False) from None
        except (BlockingIOError, socket.timeout):  # unix sockets say EAGAIN when the queue is full
            raise NoAnswer(f"busy: its connection queue at {path} is full", running=True) from None
        except PermissionError:
            raise NoAnswer(f"permission denied on {path} (root only)", running=None) from None
        except OSError as exc:
            raise NoAnswer(f"cannot connect to {path}: {exc.strerror}", running=False) from None
        data = _answer(sock, request, end, timeout)
    try:
        document = json.loads(data)
    except ValueError:
        raise NoAnswer("the daemon's answer is not JSON", running=True) from None
    if not isinstance(document, dict):
        raise NoAnswer("the daemon's answer is not a JSON object", running=True)
    return document


def _answer(sock: socket.socket, request: str, end: float, timeout: float) -> bytes:
    chunks = []
    try:
        sock.sendall(request.encode() + b"\n")
        while True:
            sock.settimeout(max(0.01, end - time.monotonic()))
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        raise NoAnswer(f"busy or stuck: no answer within {timeout:g}s", running=True) from None
    except OSError as exc:
        raise NoAnswer(f"the daemon closed the connection: {exc.strerror}", running=True) from None
    if not chunks:
        raise NoAnswer("the daemon closed the connection without an answer", running=True)
    return b"".join(chunks)


def query(run_dir: str, request: str = "status", timeout: float = QUERY_TIMEOUT) -> Optional[dict[str, Any]]:
    """Ask the daemon; None when nobody answers (ask() says why)."""
    try:
        return ask(run_dir, request, timeout)
    except NoAnswer:
        return None
