"""Host kernel settings a thousand containers on one bridge need.

On one node every task of an overlay network hangs off the same Linux bridge.
An ARP request (a broadcast) is copied to every port of it at once, and each
copy is queued on the sending CPU's backlog, which holds
``net.core.netdev_max_backlog`` packets (1000 by default). With 1003 tasks a
single broadcast overflows it: measured during 1000-worker probe rounds, the
kernel dropped 300,000-476,000 packets a second (``/proc/net/softnet_stat``),
ARP requests went unanswered, and each retry cost a second. A backlog larger
than the biggest bridge keeps every copy.

Fewer broadcasts matter as much. The kernel's neighbour (ARP) table is one
table for every network namespace, and once it holds more than
``gc_thresh1`` entries the kernel forgets entries unused for a minute. 1003
tasks that each know a hundred peers hold ~40,000 entries, over this
machine's 8192 (the kernel's own default is 128), so every node's periodic
ping to a peer it had not spoken to for a minute was a fresh broadcast:
measured with the stack idle, 733,000 drops in 8 s and a third of both
cores in the kernel. With the thresholds above the table's size the drops
stopped at once. An entry costs a few hundred bytes of kernel memory.

Settings are only ever raised (an operator's larger value is kept), written
through ``/proc/sys`` now and to ``/etc/sysctl.d`` so they survive a reboot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import CqkdError
from ..core.files import write_atomically

MINIMUMS: dict[str, int] = {
    # A /20 overlay holds 4094 tasks; room for four of its broadcasts at once.
    "net.core.netdev_max_backlog": 16384,
    # Hard limit first, so the table is never asked to be larger than it.
    "net.ipv4.neigh.default.gc_thresh3": 524288,
    "net.ipv4.neigh.default.gc_thresh2": 262144,
    "net.ipv4.neigh.default.gc_thresh1": 131072,
}
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


def write(key: str, value: int, proc_sys: Path = PROC_SYS) -> None:
    """Set a kernel setting now (not persisted); OSError where the host forbids it."""
    _path(proc_sys, key).write_text(f"{value}\n")


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
            write(key, minimum, proc_sys)
        except OSError as exc:
            report.warnings.append(
                f"cannot raise {key} from {value} to {minimum} ({exc.strerror or exc}); "
                "stacks of more than ~1000 tasks per node will lose ARP packets"
            )
            continue
        persist[key] = minimum
        report.changed.append(f"raised {key} from {value} to {minimum}")
    if persist:
        _write_conf(conf, persist, report)
    return report


def _write_conf(conf: Path, values: dict[str, int], report: SysctlReport) -> None:
    """Persist the values in force, atomically, so a reboot does not undo them.

    Written only when its content would change, so a second run changes nothing.
    """
    text = "# Written by cqkd-stack setup: see cqkd_stack/sysctls.py for why.\n" + "".join(
        f"{key} = {value}\n" for key, value in sorted(values.items())
    )
    try:
        if conf.read_text() == text:
            return
    except OSError:
        pass  # missing or unreadable: write it
    try:
        conf.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(conf, text, new_mode=0o644)
    except OSError as exc:
        report.warnings.append(f"cannot write {conf} ({exc.strerror or exc}); lost on reboot")
        return
    except CqkdError as exc:
        report.warnings.append(f"{exc.message}; lost on reboot")
        return
    report.changed.append(f"wrote {conf} (kept across reboots)")
