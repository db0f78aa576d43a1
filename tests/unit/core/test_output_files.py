"""Files the tool writes keep what is there: links, devices, FIFOs, modes, owners.

Seen on f6d6f43: ``render --output`` renamed a temporary file over whatever
the name was. A link became a regular file (its target left stale),
``/dev/full`` became a regular file and the command exited 0, and every
file written was mode 0600 whatever the umask or the old file's mode.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from cqkd_stack.core import files
from cqkd_stack.core.files import write_atomically


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_link_is_followed_and_its_target_replaced_in_its_own_directory(
    cli, tmp_path: Path
) -> None:
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yml").write_text("old: true\n")
    link = tmp_path / "cqkd.yml"
    link.symlink_to("envs/prod.yml")
    done = cli("render", "--replicas", "7", "--output", str(link))
    assert done.code == 0, done.err
    assert link.is_symlink() and os.readlink(link) == "envs/prod.yml"
    assert "replicas: 7" in (envs / "prod.yml").read_text()
    assert _files(tmp_path) == ["cqkd.yml", "envs"] and _files(envs) == ["prod.yml"]


def test_a_link_to_a_file_not_yet_there_creates_the_target(cli, tmp_path: Path) -> None:
    (tmp_path / "envs").mkdir()
    link = tmp_path / "cqkd.yml"
    link.symlink_to("envs/new.yml")
    assert cli("render", "-r", "3", "-o", str(link)).code == 0
    assert link.is_symlink() and "replicas: 3" in (tmp_path / "envs" / "new.yml").read_text()


@pytest.fixture
def full_device(tmp_path: Path) -> Path:
    """A node of the "full" device (1, 7) of our own, so that code which replaces
    devices (f6d6f43 did) replaces this one, never the machine's /dev/full."""
    path = tmp_path / "full"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    return path


def test_a_full_device_is_an_error_naming_it_and_stays_a_device(cli, full_device: Path) -> None:
    done = cli("render", "--output", str(full_device))
    assert done.code == 2, (done.code, done.err)
    assert f"{full_device}: cannot write: No space left on device" in done.err
    assert stat.S_ISCHR(os.stat(full_device).st_mode)
    assert _files(full_device.parent) == ["full"]


def test_a_fifo_is_written_into(cli, tmp_path: Path) -> None:
    fifo = tmp_path / "stack.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    done = cli("render", "-r", "4", "-o", str(fifo))
    reader.join(timeout=30)
    assert done.code == 0, done.err
    assert got and "replicas: 4" in got[0]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert _files(tmp_path) == ["stack.fifo"]


def test_dash_is_standard_output(cli, tmp_path: Path) -> None:
    done = cli("render", "-r", "2", "-o", "-", cwd=tmp_path)
    assert done.code == 0, done.err
    assert "replicas: 2" in done.out
    assert _files(tmp_path) == []


def test_an_existing_file_keeps_its_mode(cli, tmp_path: Path) -> None:
    target = tmp_path / "stack.yml"
    target.write_text("old\n")
    target.chmod(0o640)
    assert cli("render", "-o", str(target)).code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert "services:" in target.read_text()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_a_new_file_gets_the_umasks_mode(cli, tmp_path: Path, umask: int) -> None:
    target = tmp_path / "stack.yml"
    old = os.umask(umask)
    try:
        assert cli("render", "-o", str(target)).code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_an_existing_file_keeps_its_owner(tmp_path: Path) -> None:
    target = tmp_path / "stack.yml"
    target.write_text("old\n")
    os.chown(target, 4321, 4321)
    write_atomically(target, "new\n")
    assert (target.stat().st_uid, target.stat().st_gid) == (4321, 4321)
    assert target.read_text() == "new\n"


def test_a_loop_of_links_is_an_error_and_both_links_stay(cli, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    done = cli("render", "-o", str(tmp_path / "a"))
    assert done.code == 2 and "Too many levels of symbolic links" in done.err
    assert os.readlink(tmp_path / "a") == "b" and os.readlink(tmp_path / "b") == "a"


def test_the_directory_is_synced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order on disk: the file's bytes, the rename, then the directory's entry."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "stack.yml"
    write_atomically(target, "x: 1\n")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".stack.yml."))
    assert events[1:] == [("replace", str(target)), ("fsync", str(tmp_path))]


def test_a_system_file_written_through_a_link_stays_a_link(tmp_path: Path) -> None:
    """setup's drop-in and sysctl file are written the same way as --output."""
    from cqkd_stack.host import engine

    real = tmp_path / "managed" / "cqkd-stack.conf"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "docker.service.d" / "cqkd-stack.conf"
    link.parent.mkdir()
    link.symlink_to(real)
    assert engine.write_dropin(link) is True
    assert link.is_symlink() and real.read_text() == engine.dropin_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
