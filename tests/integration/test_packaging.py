"""The packages as built by `make packages`: lint-clean, one version, the install decisions.

Needs the tools in scripts/apt-packaging.txt (CI installs them). The purge
script is run for real against a temporary root.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from k3s_agent import __version__

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "dist" / f"k3s-hardening-agent_{__version__}_all.deb"
RPM = REPO / "dist" / f"k3s-hardening-agent-{__version__}-1.el9.noarch.rpm"
PURGE = REPO / "packaging" / "purge-managed.sh"
PROM = tuple(
    f"/usr/share/k3s-hardening-agent/prometheus/k3s-agentd.{name}" for name in ("rules.yml", "dashboard.json")
)


@pytest.fixture(scope="module")
def built() -> None:
    # lint-packages builds both and fails on any lintian/rpmlint finding not overridden.
    done = subprocess.run(["make", "-C", str(REPO), "lint-packages"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _out(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_deb_version_conffile_and_no_start(built: None) -> None:
    assert _out("dpkg-deb", "-f", str(DEB), "Version").strip() == __version__
    assert _out("dpkg-deb", "-I", str(DEB), "conffiles").split() == ["/etc/k3s-agentd/policy.toml"]
    depends = _out("dpkg-deb", "-f", str(DEB), "Depends")
    for pkg in (
        "python3-psutil",
        "python3-iptables",
        "python3-pyroute2",
        "python3-systemd",
        "python3-structlog",
    ):
        assert pkg in depends
    postinst = _out("dpkg-deb", "-I", str(DEB), "postinst")
    assert "deb-systemd-helper enable 'k3s-agentd.service'" in postinst
    # Never started at install: only a try-restart of an already running daemon on upgrade.
    assert not re.search(r"deb-systemd-invoke (start|restart)", postinst), postinst
    # No stop in preinst on upgrade (dh_installsystemd --no-start alone adds one): postinst try-restarts.
    info = _out("dpkg-deb", "-I", str(DEB))
    if " preinst " in info:
        assert "stop" not in _out("dpkg-deb", "-I", str(DEB), "preinst")
    assert "try-restart k3s-agentd.service" in postinst
    listing = _out("dpkg-deb", "-c", str(DEB))
    for path in (
        "/lib/systemd/system/k3s-agentd.service",
        "/usr/bin/k3s-agentd",
        "/usr/bin/k3s-agentctl",
        *PROM,
    ):
        assert "." + path in listing
    assert "k3s_agentd.prom" in _out("dpkg-deb", "-I", str(DEB), "postrm")


def test_tmpfiles_make_what_the_sandbox_binds(built: None, tmp_path: Path) -> None:
    """The shipped tmpfiles.d entry, applied by the real systemd-tmpfiles to an empty
    root: /etc/rancher exists before the agent starts (ReadWritePaths= would drop
    it otherwise), root-owned 0755, and the xtables lock 0600."""
    _out("dpkg-deb", "-x", str(DEB), str(tmp_path / "pkg"))
    conf = tmp_path / "pkg/usr/lib/tmpfiles.d/k3s-agentd.conf"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    _out("systemd-tmpfiles", f"--root={root}", "--create", str(conf))
    rancher = (root / "etc/rancher").stat()
    assert (oct(rancher.st_mode & 0o7777), rancher.st_uid, rancher.st_gid) == ("0o755", 0, 0)
    assert oct((root / "run/xtables.lock").stat().st_mode & 0o7777) == "0o600"
    unit = (tmp_path / "pkg/lib/systemd/system/k3s-agentd.service").read_text()
    assert "ReadWritePaths=-/etc/rancher" in unit


def test_shipped_policy_is_audit_and_valid(built: None, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(DEB), str(tmp_path)], check=True)
    policy = (tmp_path / "etc/k3s-agentd/policy.toml").read_text()
    assert re.search(r'^mode = "audit"$', policy, re.M)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "usr/lib/python3/dist-packages")}
    done = subprocess.run(
        ["/usr/bin/python3", "-m", "k3s_agent.cli", "validate", str(tmp_path / "etc/k3s-agentd/policy.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rpm_version_config_noreplace_and_requires(built: None) -> None:
    assert _out("rpm", "-qp", "--qf", "%{VERSION}", str(RPM)) == __version__
    flags = _out("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(RPM))
    assert re.search(r"^/etc/k3s-agentd/policy.toml cn$", flags, re.M), flags
    requires = _out("rpm", "-qpR", str(RPM))
    for pkg in ("python3-pyyaml", "python3-iptables", "(python3-tomli >= 2.0 if python3 < 3.11)"):
        assert pkg in requires
    files = _out("rpm", "-qpl", str(RPM)).split()
    assert "/usr/lib/python3.9/site-packages/k3s_agent/daemon.py" in files  # EL9's python3
    assert "/usr/lib/systemd/system-preset/80-k3s-agentd.preset" in files
    assert set(PROM) <= set(files)
    scripts = _out("rpm", "-qp", "--scripts", str(RPM))
    assert "preset k3s-agentd.service" in scripts
    assert not re.search(r"systemctl (--\S+ )*(start|restart|enable --now)", scripts), scripts


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_purge_managed_removes_ours_only(tmp_path: Path) -> None:
    ours = ["etc/sysctl.d/90-k3s-agentd.conf", "etc/ssh/sshd_config.d/01-k3s-agentd.conf"]
    kept = [
        "etc/sysctl.d/90-kubelet.conf",
        "etc/ssh/sshd_config",
        "var/lib/rancher/k3s/server/token",
        "etc/rancher/k3s/config.yaml",
        "etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml",
    ]
    _tree(tmp_path, {rel: "x\n" for rel in ours + kept})
    done = subprocess.run(
        ["sh", str(PURGE)],
        capture_output=True,
        text=True,
        env={**os.environ, "K3S_AGENTD_ROOT": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    for rel in ours:
        assert not (tmp_path / rel).exists(), rel
    for rel in kept:
        assert (tmp_path / rel).exists(), rel
    assert "left /etc/rancher/k3s/config.yaml.d/90-k3s-agentd.yaml" in done.stdout


def test_rpm_payload_runs(built: None, tmp_path: Path) -> None:
    """The rpm's launchers and package work from its own tree (EL9 paths, any python3 >= 3.9)."""
    cpio = subprocess.run(["rpm2cpio", str(RPM)], check=True, capture_output=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=tmp_path, check=True)
    launcher = (tmp_path / "usr/bin/k3s-agentctl").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -s\n"), launcher
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "usr/lib/python3.9/site-packages")}
    done = subprocess.run(
        ["/usr/bin/python3", str(tmp_path / "usr/bin/k3s-agentctl"), "--version"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0 and done.stdout.strip() == __version__, done.stdout + done.stderr
    unit = (tmp_path / "usr/lib/systemd/system/k3s-agentd.service").read_text()
    assert (REPO / "systemd/k3s-agentd.service").read_text() == unit
