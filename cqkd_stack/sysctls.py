"""Host kernel settings a thousand containers on one bridge need.

On one node every task of an overlay network hangs off the same Linux bridge.
An ARP request (a broadcast) is copied to every port of it at once, and each
copy is queued on the sending CPU's backlog, which holds
``net.core.netdev_max_backlog`` packets (1000 by default). With 1003 tasks a
single broadcast overflows it: measured during 1000-worker probe rounds, the
kernel dropped 300,000-476,000 packets a second (``/proc/net/softnet_stat``),
ARP requests went unanswered, and each retry cost a second. A backlog larger
than the biggest bridge keeps every copy.

Settings are only ever raised (an operator's larger value is kept), written
through ``/proc/sys`` now and to ``/etc/sysctl.d`` so they survive a reboot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# A /20 overlay holds 4094 tasks; room for four of its broadcasts at once.
MINIMUMS: dict[str, int] = {"net.core.netdev_max_backlog": 16384}
PROC_SYS = Path("/proc/sys")
SYSCTL_D = Path("/etc/sysctl.d/90-cqkd-stack.conf")


@dataclass
class SysctlReport:
    changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _path(proc_sys: Path, key: str) -> Path:
    return proc_sys.joinpath(*key.split("."))


def current(key: str, proc_sys: Path = PROC_SYS) -> int | None:
    """The kernel's value now, or None where it cannot be read (not Linux, no such key)."""
    try:
        return int(_path(proc_sys, key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_minimums(
    minimums: dict[str, int] | None = None,
    proc_sys: Path = PROC_SYS,
    conf: Path = SYSCTL_D,
) -> SysctlReport:
    """Raise each setting below its minimum; a setting that cannot be written is a warning.

    It is a warning, not an error: a host that forbids it (a container, a
    locked-down kernel) still runs stacks, only large ones lose packets.
    """
    report = SysctlReport()
    wanted = MINIMUMS if minimums is None else minimums
    persist: dict[str, int] = {}
    for key, minimum in wanted.items():
        value = current(key, proc_sys)
        if value is None:
            report.warnings.append(f"cannot read {key}; large stacks may lose packets")
            continue
        if value >= minimum:
            persist[key] = value
            continue
        try:
            _path(proc_sys, key).write_text(f"{minimum}\n")
        except OSError as exc:
            report.warnings.append(
                f"cannot raise {key} from {value} to {minimum} ({exc.strerror or exc}); "
                "stacks of more than ~1000 tasks per node will lose ARP packets"
            )
            continue
        persist[key] = minimum
        report.changed.append(f"raised {key} from {value} to {minimum}")
    if persist and report.changed:
        _write_conf(conf, persist, report)
    return report


def _write_conf(conf: Path, values: dict[str, int], report: SysctlReport) -> None:
    """Persist what was set, atomically, so a reboot does not undo it."""
    text = "# Written by cqkd-stack setup: see cqkd_stack/sysctls.py for why.\n" + "".join(
        f"{key} = {value}\n" for key, value in sorted(values.items())
    )
    tmp = conf.with_name(conf.name + ".tmp")
    try:
        conf.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(conf)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        report.warnings.append(f"cannot write {conf} ({exc.strerror or exc}); lost on reboot")
