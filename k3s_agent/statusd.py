"""The root-only status socket: /run/k3s-agentd/agentd.sock.

A line protocol on a unix stream socket: the client sends `status` (answer:
the node-compliance JSON document) or `wake` (run a cycle now; answer
`ok`). Peers other than root are refused by SO_PEERCRED, and the socket is
0600 in a 0700 runtime directory. No network listener, ever.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from typing import Any, Callable, Optional

SOCKET_NAME = "agentd.sock"
STATUS_NAME = "status.json"
_MAX_REQUEST = 256


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
        self.sock.listen(8)
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._serve, name="status-socket", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        finally:
            if os.path.lexists(self.path):
                os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, self.allowed_uid):
            conn.sendall(b'{"error": "permission denied: root only"}\n')
            return
        request = conn.recv(_MAX_REQUEST).decode("ascii", errors="replace").strip()
        if request == "status":
            conn.sendall(json.dumps(self.document()).encode() + b"\n")
        elif request == "wake":
            self.wake()
            conn.sendall(b'{"ok": true}\n')
        else:
            conn.sendall(json.dumps({"error": f"unknown request {request[:32]!r}"}).encode() + b"\n")


def query(run_dir: str, request: str = "status", timeout: float = 5.0) -> Optional[dict[str, Any]]:
    """Ask the daemon; None when nobody answers."""
    path = os.path.join(run_dir, SOCKET_NAME)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(request.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return None
