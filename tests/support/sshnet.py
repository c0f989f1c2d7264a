"""A real sshd in a named network namespace, and a real SSH login to it as a non-root operator.

`OperatorSshd(ns, port)` starts /usr/sbin/sshd inside `ns` (see netns.py), with
key-only login for an operator account `k3sop` (uid 4242, /bin/sh) that
exists only for that sshd: sshd runs in a mount namespace of its own with a
private tmpfs on /run (its privilege-separation directory) and an overlay on
/etc holding copies of passwd, shadow and group with the account added.
Nothing of the host's accounts or /run changes.
`login(client_ns, address)` runs the OpenSSH client in another namespace and
returns what `id -un` printed on the server ("k3sop" when the way in works).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

SSHD = "/usr/sbin/sshd"
OPERATOR = "k3sop"
OPERATOR_UID = 4242
_ACCOUNT_FILES = ("passwd", "shadow", "group")


class OperatorSshd:
    def __init__(self, ns: str, port: int):
        self.ns = ns
        self.port = port
        # World-readable: sshd reads the authorized keys as the operator (OpenSSH
        # drops to the user's uid for it), so no 0700 pytest folder on the way.
        self.dir = tempfile.mkdtemp(prefix="k3sa-sshd-")
        os.chmod(self.dir, 0o755)
        self.key = os.path.join(self.dir, "operator_key")
        self._write_files()
        argv = ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private"]
        argv += [sys.executable, os.path.abspath(__file__), self.dir]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def _write_files(self) -> None:
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", os.path.join(self.dir, "hostkey")], check=True)
        subprocess.run([*keygen, "-f", self.key], check=True)
        os.makedirs(os.path.join(self.dir, "keys"), mode=0o755)
        shutil.copy(self.key + ".pub", os.path.join(self.dir, "keys", OPERATOR))
        os.chmod(os.path.join(self.dir, "keys", OPERATOR), 0o644)
        extra = {
            "passwd": f"{OPERATOR}:x:{OPERATOR_UID}:{OPERATOR_UID}:test operator:{self.dir}:/bin/sh\n",
            "shadow": f"{OPERATOR}:*:19000:0:99999:7:::\n",  # no password, not locked ("!")
            "group": f"{OPERATOR}:x:{OPERATOR_UID}:\n",
        }
        for name in _ACCOUNT_FILES:
            with open(f"/etc/{name}") as src:
                text = src.read()
            with open(os.path.join(self.dir, name), "w") as out:
                out.write(text + ("" if text.endswith("\n") else "\n") + extra[name])
            os.chmod(os.path.join(self.dir, name), 0o644 if name != "shadow" else 0o600)
        config = [
            f"Port {self.port}",
            f"HostKey {self.dir}/hostkey",
            f"PidFile {self.dir}/sshd.pid",
            f"AuthorizedKeysFile {self.dir}/keys/%u",
            "StrictModes no",  # the keys are root's files in a /tmp folder
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            f"AllowUsers {OPERATOR}",
        ]
        with open(os.path.join(self.dir, "sshd_config"), "w") as out:
            out.write("\n".join(config) + "\n")

    def _wait_ready(self) -> None:
        pidfile = os.path.join(self.dir, "sshd.pid")
        for _ in range(200):  # sshd writes its pid file once it listens
            if os.path.exists(pidfile):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd in {self.ns} exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise AssertionError(f"sshd in {self.ns} did not start within 10 s")

    def login(self, client_ns: str, address: str, timeout: float = 8.0) -> str:
        """What `id -un` printed over a new SSH session from client_ns ("" when the login failed)."""
        argv = [
            "ip",
            "netns",
            "exec",
            client_ns,
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            self.key,
            "-p",
            str(self.port),
            "-l",
            OPERATOR,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=3",
            address,
            "id",
            "-un",
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return ""
        self.last_error = done.stderr
        return done.stdout.strip() if done.returncode == 0 else ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> OperatorSshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(folder: str) -> None:
    """In the fresh mount namespace: /run and the account files swapped in, then exec sshd.

    /etc gets an overlay whose upper layer holds our copies: a bind mount on
    /etc/passwd itself would vanish as soon as anything on the host replaces
    the file (useradd renames a new one in; the kernel detaches mounts on a
    dentry that is renamed over, since Linux 3.18), and the operator with it.
    """
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    for part in ("upper", "work"):
        os.makedirs(f"/run/etc-overlay/{part}")
    layers = "lowerdir=/etc,upperdir=/run/etc-overlay/upper,workdir=/run/etc-overlay/work"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", layers, "/etc"], check=True)
    for name in _ACCOUNT_FILES:
        shutil.copy2(os.path.join(folder, name), f"/etc/{name}")
    os.mkdir("/run/sshd", 0o755)
    os.execv(SSHD, [SSHD, "-D", "-e", "-f", os.path.join(folder, "sshd_config")])


if __name__ == "__main__":
    _serve(sys.argv[1])
