"""A temporary host root for the real sshd: rooted sshd_config, a throwaway host key, own accounts.

The sshd_config names rooted paths (Include, HostKey, PidFile), so the real
sshd (-t, -T, -T -C) reads only the test's files. Accounts live in the root's
own etc/passwd, etc/group and etc/shadow, which the lock-out guard reads
through the Host: nothing is added to the machine's accounts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin") or "/usr/sbin/sshd"
MAIN = "etc/ssh/sshd_config"
# A public key line of each type (the guard checks a key's blob the way sshd loads it).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"
RSA = (
    "ssh-rsa "
    "AAAAB3NzaC1yc2EAAAADAQABAAABAQDqnWUy5F/0FvWSngq9PdlRMwRgZ6U4OsPJld5qFC68cgwLpZ+h"
    "BdJ4vrVtdt1HqLEOvy0nqdUxlFJFxsOUyLTcXaDT/Dlko47LbbQDIR52Ddoh/4/Ok6BOeHX0qaPQy50d"
    "5sRgzDoJFrWy8PtIeaTHvUDMy/bzNBqRubsmAAV/7XStcD2VbG7Y7uMIfoStdpNE8h9dhy7ToDSNpmn0"
    "FkCLX1SefXijb0bgIanV8m14V2HrUvBsJassaHBGqw/FuquP5p7fssCkbzj7CiCjerq1SRaX9cm02pbj"
    "3ALw5UT+5ybaW5SuL6Ga99MLZSLYjv99f0qofnAX5KbnBerZ8i+x"
    " test"
)  # a real 2048-bit key: the guard reads a key blob as sshd loads it
HASH = "$y$j9T$abcdefghijklmnopqrstu.$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def host_key(folder: Path) -> Path:
    key = folder / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def install_sshd(root: Path, key: Path) -> Path:
    """A Debian 12 style /etc/ssh under root (host key copied in); returns root."""
    ssh = root / "etc/ssh"
    (ssh / "sshd_config.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(key, ssh / "ssh_host_ed25519_key")
    shutil.copy(f"{key}.pub", ssh / "ssh_host_ed25519_key.pub")  # the guard reads host key types here
    os.chmod(ssh / "ssh_host_ed25519_key", 0o600)
    # sshd refuses -t/-T without its privilege separation dir (Debian's unit
    # creates it at start); an empty root-owned dir in /run, harmless here.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    write_main(root, "")
    for shell in ("bin/bash", "bin/sh", "usr/sbin/nologin", "bin/false"):
        path = root / shell
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        os.chmod(path, 0o755)
    return root


def write_main(root: Path, before_include: str, after: str = "") -> Path:
    main = root / MAIN
    main.write_text(
        f"{before_include}"
        f"Include {root}/etc/ssh/sshd_config.d/*.conf\n"
        f"HostKey {root}/etc/ssh/ssh_host_ed25519_key\n"
        f"PidFile {root}/run/sshd.pid\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM yes\n"
        "X11Forwarding yes\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        f"{after}"
    )
    os.chmod(main, 0o644)
    return main


def add_account(
    root: Path,
    name: str,
    uid: int,
    keys: tuple[str, ...] = (),
    shell: str = "/bin/bash",
    password: str = "!",
    groups: tuple[str, ...] = (),
    home: Optional[str] = None,
) -> Path:
    """A passwd/shadow/group entry under root, and ~/.ssh/authorized_keys with keys (if any)."""
    home = home or ("/root" if uid == 0 else f"/home/{name}")
    _append(root / "etc/passwd", f"{name}:x:{uid}:{uid}::{home}:{shell}\n", 0o644)
    _append(root / "etc/shadow", f"{name}:{password}:19000:0:99999:7:::\n", 0o640)
    _append(root / "etc/group", f"{name}:x:{uid}:\n", 0o644)
    for group in groups:
        _append(root / "etc/group", f"{group}:x:{5000 + len(group)}:{name}\n", 0o644)
    folder = root / home.lstrip("/")
    (folder / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (folder, folder / ".ssh"):
        os.chown(path, uid, uid)
        os.chmod(path, 0o700 if path.name == ".ssh" else 0o755)
    if keys:
        keyfile = folder / ".ssh/authorized_keys"
        keyfile.write_text("".join(f"{k}\n" for k in keys))
        os.chown(keyfile, uid, uid)
        os.chmod(keyfile, 0o600)
    return folder


def _append(path: Path, line: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(line)
    os.chmod(path, mode)
