"""Host reads are capped; writes leave no temp file behind, even after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from k3s_agent.host import (
    READ_LIMIT,
    Host,
    HostError,
    TooLarge,
    read_capped,
    sweep_stale_temps,
    write_private,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("size", "limit", "refused"),
    [
        (0, READ_LIMIT, False),
        (READ_LIMIT, READ_LIMIT, False),
        (READ_LIMIT + 1, READ_LIMIT, True),
        (196 << 20, READ_LIMIT, True),
        (10, 10, False),
        (11, 10, True),
    ],
)
def test_reads_stop_at_the_cap(tmp_path: Path, size: int, limit: int, refused: bool) -> None:
    (tmp_path / "etc").mkdir()
    with open(tmp_path / "etc/big", "wb") as handle:
        handle.truncate(size)  # sparse: a size, no disk
    host = Host(root=str(tmp_path))
    if not refused:
        assert len(host.read_bytes("/etc/big", limit=limit) or b"") == size
        return
    with pytest.raises(TooLarge) as caught:
        host.read_text("/etc/big", limit=limit)
    assert isinstance(caught.value, HostError)
    assert str(caught.value).startswith("/etc/big: larger than the ")
    assert "read cap" in str(caught.value) and caught.value.limit == limit


def test_a_file_that_says_size_0_is_still_capped_by_what_it_gives() -> None:
    """/proc files report st_size 0: the read itself must stop at the cap."""
    with pytest.raises(TooLarge, match="/proc/self/maps: larger than the 16 bytes read cap"):
        read_capped("/proc/self/maps", limit=16)
    assert read_capped("/proc/self/comm").strip()


def test_follow_reads_through_a_link_and_is_capped_too(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/real").write_bytes(b"x" * 100)
    os.symlink("real", tmp_path / "etc/link")
    host = Host(root=str(tmp_path))
    with pytest.raises(HostError, match="is a symlink"):
        host.read_bytes("/etc/link")
    assert host.read_bytes("/etc/link", follow=True) == b"x" * 100
    with pytest.raises(TooLarge):
        host.read_bytes("/etc/link", limit=99, follow=True)


# -- temp files -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from k3s_agent.host import Host
    host = Host(root=sys.argv[1])
    data = b"x" * (32 << 20)
    print("ready", flush=True)
    while True:
        host.write_atomic("/etc/sysctl.d/90-k3s-agentd.conf", data, backup=False)
    """
)


def _temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_kill_9_during_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    """50 kills at random points of a 32 MiB write: never a torn file, and no temp
    left once the next write ran (a kill in the microseconds between link and
    rename can leave a named temp; the next write sweeps it)."""
    folder = tmp_path / "etc/sysctl.d"
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    leftovers = []
    for attempt in range(50):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.01 + (attempt % 10) * 0.013)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        target = folder / "90-k3s-agentd.conf"
        assert not target.exists() or target.stat().st_size == 32 << 20
        Host(root=str(tmp_path)).write_atomic("/etc/sysctl.d/other.conf", b"", backup=False)
        leftovers += _temps(folder)
    assert leftovers == []


def test_stale_temps_of_ours_are_swept_and_nobody_elses(tmp_path: Path) -> None:
    folder = tmp_path / "etc/ssh/sshd_config.d"
    folder.mkdir(parents=True)
    gone_pid = _exited_pid()
    names = {
        f".01-k3s-agentd.conf.k3s-agentd.{gone_pid}.tmp": False,  # ours, writer dead: removed
        f".other.conf.k3s-agentd.{gone_pid}.tmp": False,  # ours for another target: removed
        f".other.conf.k3s-agentd.{os.getpid()}.tmp": True,  # a live writer's: kept
        ".01-k3s-agentd.conf.k3s-agentd.1.tmp": True,  # pid 1 lives: kept
        ".01-k3s-agentd.conf.tmp": True,  # not our pattern
        f"01-k3s-agentd.conf.k3s-agentd.{gone_pid}.tmp": True,  # no leading dot: not ours
        f".x.k3s-agentd.{gone_pid}.tmp.bak": True,
        ".sshd_config.swp": True,
        "50-local.conf.tmp": True,
    }
    for name in names:
        (folder / name).write_text("x")
    os.mkdir(folder / f".dir.k3s-agentd.{gone_pid}.tmp")  # our pattern but a directory: kept
    Host(root=str(tmp_path)).write_atomic(
        "/etc/ssh/sshd_config.d/01-k3s-agentd.conf", b"PermitRootLogin no\n"
    )
    for name, kept in names.items():
        assert (folder / name).exists() is kept, name
    assert (folder / f".dir.k3s-agentd.{gone_pid}.tmp").is_dir()
    assert (folder / "01-k3s-agentd.conf").read_bytes() == b"PermitRootLogin no\n"


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_write_private_replaces_its_old_temp_name_and_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    (tmp_path / "status.json.tmp").write_text("left by an older agent killed mid-write")
    write_private(str(target), b"{}\n")
    assert target.read_bytes() == b"{}\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert os.listdir(tmp_path) == ["status.json"]


def test_write_private_replaces_a_link_at_the_name_never_writes_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not ours")
    (tmp_path / "run").mkdir()
    os.symlink(elsewhere, tmp_path / "run/status.json")
    write_private(str(tmp_path / "run/status.json"), b"{}\n")
    assert elsewhere.read_text() == "not ours"
    assert not (tmp_path / "run/status.json").is_symlink()
    assert (tmp_path / "run/status.json").read_bytes() == b"{}\n"


def test_write_private_refuses_a_linked_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "run")
    with pytest.raises(OSError):  # ELOOP/ENOTDIR from O_NOFOLLOW on the folder
        write_private(str(tmp_path / "run/status.json"), b"{}\n")
    assert os.listdir(tmp_path / "real") == []


def test_backup_of_a_huge_file_is_streamed(tmp_path: Path) -> None:
    """The previous copy of a 196 MB (sparse) file is kept without reading it into memory."""
    script = textwrap.dedent(
        """
        import resource, sys
        from k3s_agent.host import Host
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        saved = Host(root=sys.argv[1]).write_atomic("/etc/sysctl.d/90-k3s-agentd.conf", b"ok\\n")
        print(saved, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    folder = tmp_path / "etc/sysctl.d"
    folder.mkdir(parents=True)
    with open(folder / "90-k3s-agentd.conf", "wb") as handle:
        handle.truncate(196 << 20)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    saved, grown_kib = out.stdout.split()
    assert os.path.getsize(saved) == 196 << 20
    assert int(grown_kib) < 20 << 10, f"RSS grew {grown_kib} KiB"
    assert (folder / "90-k3s-agentd.conf").read_bytes() == b"ok\n"


def test_start_sweep_takes_files_and_folders_and_survives_missing_ones(tmp_path: Path) -> None:
    folder = tmp_path / "etc/ssh"
    folder.mkdir(parents=True)
    stale = folder / f".sshd_config.k3s-agentd.{_exited_pid()}.tmp"
    stale.write_text("x")
    (folder / "sshd_config").write_text("")
    sweep_stale_temps([str(folder / "sshd_config"), str(tmp_path / "no/such/dir"), str(tmp_path / "missing")])
    assert os.listdir(folder) == ["sshd_config"]


def test_without_o_tmpfile_the_named_temp_is_used_and_gone_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filesystems (or kernels) without O_TMPFILE: same result, via our named temp."""
    monkeypatch.delattr(os, "O_TMPFILE")
    host = Host(root=str(tmp_path))
    host.write_atomic("/etc/sysctl.d/90-k3s-agentd.conf", b"kernel.panic = 10\n", mode=0o640)
    saved = host.write_atomic("/etc/sysctl.d/90-k3s-agentd.conf", b"kernel.panic = 11\n", mode=0o640)
    folder = tmp_path / "etc/sysctl.d"
    assert os.listdir(folder) == ["90-k3s-agentd.conf"]
    assert (folder / "90-k3s-agentd.conf").read_bytes() == b"kernel.panic = 11\n"
    assert oct((folder / "90-k3s-agentd.conf").stat().st_mode & 0o777) == "0o640"
    assert saved is not None and Path(saved).read_bytes() == b"kernel.panic = 10\n"
