"""Raising host kernel settings: only ever up, persisted, and never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from cqkd_stack.host import sysctls

KEY = "net.core.netdev_max_backlog"


def _proc(tmp_path: Path, value: str | None) -> Path:
    root = tmp_path / "proc_sys"
    target = root / "net" / "core" / "netdev_max_backlog"
    target.parent.mkdir(parents=True)
    if value is not None:
        target.write_text(value)
    return root


def test_a_low_value_is_raised_and_persisted(tmp_path: Path) -> None:
    proc, conf = _proc(tmp_path, "1000\n"), tmp_path / "sysctl.d" / "90-cqkd.conf"
    report = sysctls.ensure_minimums({KEY: 16384}, proc, conf)
    assert sysctls.current(KEY, proc) == 16384
    assert report.changed == [
        f"raised {KEY} from 1000 to 16384",
        f"wrote {conf} (kept across reboots)",
    ]
    assert f"{KEY} = 16384" in conf.read_text().splitlines()
    assert not report.warnings
    again = sysctls.ensure_minimums({KEY: 16384}, proc, conf)
    assert again.changed == [] and again.warnings == []


def test_a_larger_operator_value_is_kept_also_after_a_reboot(tmp_path: Path) -> None:
    proc, conf = _proc(tmp_path, "50000\n"), tmp_path / "90-cqkd.conf"
    report = sysctls.ensure_minimums({KEY: 16384}, proc, conf)
    assert sysctls.current(KEY, proc) == 50000
    assert f"{KEY} = 50000" in conf.read_text().splitlines()
    assert report.changed == [f"wrote {conf} (kept across reboots)"]


def test_an_unreadable_setting_is_a_warning(tmp_path: Path) -> None:
    proc = _proc(tmp_path, None)
    report = sysctls.ensure_minimums({KEY: 16384}, proc, tmp_path / "c.conf")
    assert report.changed == []
    assert "cannot read" in report.warnings[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="not Linux")
def test_a_setting_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    proc = _proc(tmp_path, None)
    # Reads as a number (its first field is a PID); the kernel refuses writes, even root's.
    (proc / "net" / "core" / "netdev_max_backlog").symlink_to("/proc/self/stat")
    conf = tmp_path / "c.conf"
    report = sysctls.ensure_minimums({KEY: 10**9}, proc, conf)
    assert report.changed == [] and not conf.exists()
    assert "cannot raise" in report.warnings[0]


@pytest.mark.skipif(not Path("/proc/sys/net/core/netdev_max_backlog").exists(), reason="not Linux")
def test_the_real_kernel_value_is_readable() -> None:
    assert (sysctls.current(KEY) or 0) > 0
