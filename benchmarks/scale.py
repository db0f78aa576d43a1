"""Does this project's deploy beat what a user does without it? One engine, one run.

Three stages on the same engine, one after the other, each torn down and
waited for before the next starts:

0. floor: Swarm's own task-start rate. N ``sleep infinity`` tasks in the
   project's base image, overlay /20, dnsrr, ``init: true``, plain
   ``docker stack deploy``. Nothing running Kademlia can start faster here.
1. bare: the naive Kademlia node of ``benchmarks/naive/`` (what an operator
   writes in 30 lines) with a plain ``docker stack deploy``: seconds to all
   running, seconds to all joined (the project's own readiness probe, so
   "joined" means the same as for the project), memory, probe, teardown
   with a plain ``docker stack rm``.
2. project: ``python -m cqkd_stack deploy`` exactly as an operator runs it,
   then ``probe``, ``dht-check``, ``ports`` and ``teardown``.

Host memory is ``free -b`` "used" (median of 3 readings a few seconds apart)
before the deploy and at each moment below, divided by the tasks running
then: it includes the containers' shims, network namespaces and the engine's
own growth, not just the node processes.

Figures (memory, and for the DHT stages probe, ports, dht-check) are taken at
every moment a stage reaches: all running (floor, bare), all joined (bare,
project), and the timeout when a stack never got all running or all joined.
A baseline that never fully joins is so still measured, at all-running and
at the timeout; the table says which moment each stage's figures are from.
Every stage removes its stack however it ends (its own teardown, then up to
three more tries at the end of the run), never raising out of the run; a
Ctrl-C or SIGTERM waits for a removal under way, then the run cleans up and
prints what it has. ``--bare-lonely N`` makes N of the bare workers unable to
join, so a small run takes the never-joined path for real.

Each stage also keeps a timeline: tasks running and tasks joined against
seconds since its deploy command, sampled (at most every 2 s, and at each
milestone) from the counts its waits read anyway, so it costs the engine
nothing. ``--workers 100,300,1000`` runs the three stages at each size and
adds a growth table (each figure, and per task, at each size, with the
ratios project/floor and project/bare); ``--plot PNG`` draws the timelines,
one panel a size. ``--from-json FILE...`` (or ``benchmarks/plot_scale.py``)
rebuilds both from saved runs, so sizes run separately can be shown together.

Progress goes to stderr, the table to stdout, the figures to ``--json FILE``.

    python benchmarks/scale.py --workers 1000 --json scale.json
    python benchmarks/scale.py --workers 100,300 --json s.json --plot docs/scale-timeline.png
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

import docker
import yaml

from cqkd_stack.core.files import write_atomically
from cqkd_stack.host import sysctls
from cqkd_stack.host.images import host_base_image
from cqkd_stack.live.inspection import STACK_LABEL, stack_filter, stack_leftovers
from cqkd_stack.live.readiness import remove_probes
from cqkd_stack.live.teardown import stack_rm
from cqkd_stack.live.waits import NotReady, wait_until_ready

NAIVE_DIR = Path(__file__).resolve().parent / "naive"
NAIVE_IMAGE = "cqkd-naive-node:bench"
RECIPE_LABEL = "cqkd.bench.recipe"
RECIPE_FILES = ("Dockerfile", "naive_node.py", "requirements.txt")
# --bare-lonely workers: their "bootstrap" is an address where nothing answers
# (TEST-NET-1, RFC 5737), and their ports a range of their own.
NOWHERE = "192.0.2.1"
LONELY_BASE_PORT = 9000
# Overlay subnets of the floor and bare stacks; the project picks its own
# from 10.213.0.0/16, so they never collide with it.
SUBNET_POOL = ipaddress.IPv4Network("10.232.0.0/16")
POLL_SECONDS = 1.0
PROGRESS_EVERY = 10.0
# A stage's timeline keeps at most one sample this often, from the counts its
# waits read anyway (no call to the engine of its own).
TIMELINE_EVERY = 2.0
MEMORY_READINGS = 3
MEMORY_GAP = 3.0
REPEAT = 5
# Stacks.clean's tries at a stack a stage's own teardown left behind.
CLEAN_ATTEMPTS = 3
# --timeout is a deploy's budget; a teardown gets at least this (a plain
# `docker stack rm` of 1000 tasks took ~3 minutes), so a short deploy
# timeout never leaves a stack behind.
TEARDOWN_MIN_SECONDS = 600.0
MIB = 1024 * 1024
GWBRIDGE_PORTS = Path("/sys/class/net/docker_gwbridge/brif")
BRIDGE_MAX_PORTS = 1024  # BR_MAX_PORTS in the Linux bridge driver

# The kernel settings this machine kind boots with (read on 2026-11-27 before
# `setup` ran), which is what a user without cqkd-stack deploys on. `setup`
# raises them (cqkd_stack/sysctls.py); the bare stage puts them back for its
# run unless --bare-sysctls tuned, and restores the tuned ones afterwards.
UNTUNED = {
    "net.core.netdev_max_backlog": 1000,
    "net.ipv4.neigh.default.gc_thresh1": 8192,
    "net.ipv4.neigh.default.gc_thresh2": 49152,
    "net.ipv4.neigh.default.gc_thresh3": 65536,
}

FLOOR_STACK = Template(
    """\
version: "3.8"
services:
  task:
    image: ${IMAGE}
    command: ["sleep", "infinity"]
    init: true
    networks: [net]
    deploy:
      replicas: ${WORKERS}
      endpoint_mode: dnsrr
networks:
  net:
    driver: overlay
    # As the project's DHT network: no docker_gwbridge port per task.
    internal: true
    ipam:
      config:
        - subnet: ${SUBNET}
"""
)

# Targets of issue 8: (key, description).
TARGETS = {
    "joined_vs_bare_running": "project all-joined <= bare all-running",
    "joined_vs_bare_running_stretch": "stretch: project all-joined <= 0.9 x bare all-running",
    "memory": "project memory <= 12 MiB per worker",
    "teardown": "project teardown <= 60 s",
    "probe": "probe of all workers < 3 s",
    "dht_check": "dht-check < 1 s",
}


# --- output ---------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Throttled:
    """A progress callback that logs at most every PROGRESS_EVERY seconds."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, note: str) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            log(f"  {self.what}: {note or f'{done}/{total}'} ({now - self.start:.0f} s)")


# --- timeline -------------------------------------------------------------------


class Timeline:
    """Tasks running and joined against seconds since a stage's deploy command.

    Fed only with counts the stage reads anyway (its waits' task lists, the
    probe rounds of its figures, the deploy command's own progress), so it
    costs the engine nothing. A sample is kept if ``every`` seconds passed
    since the last one kept; one that is not is held as pending, and a
    milestone (``keep``, or ``flush``) keeps it, so a stage's all-running or
    all-joined moment is never thinned away.
    """

    def __init__(self, start: float, every: float = TIMELINE_EVERY) -> None:
        self.start, self.every = start, every
        self.samples: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None

    def add(
        self, now: float, running: int | None, joined: int | None = None, keep: bool = False
    ) -> None:
        sample = {"seconds": round(now - self.start, 2), "running": running, "joined": joined}
        last = self.samples[-1]["seconds"] if self.samples else None
        if keep or last is None or sample["seconds"] - last >= self.every:
            self.samples.append(sample)
            self.pending = None
        else:
            self.pending = sample

    def flush(self) -> None:
        if self.pending is not None:
            self.samples.append(self.pending)
            self.pending = None

    def as_dict(self) -> dict[str, Any]:
        self.flush()
        return {"every_seconds": self.every, "samples": self.samples}


# "12/303 tasks running" (wait_until_running), "300/303 running, 40/303 joined"
# (wait_until_ready): what the project's waits report, to the CLI's progress bar too.
COUNTS = re.compile(r"(\d+)/\d+ (?:tasks )?running(?:, (\d+)/\d+ joined)?")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def progress_counts(text: str) -> tuple[int, int | None] | None:
    """(running, joined or None) from the last progress report in ``text``, if it has one."""
    found = COUNTS.findall(ANSI.sub("", text))
    if not found:
        return None
    running, joined = found[-1]
    return int(running), int(joined) if joined else None


def timeline_progress(
    timeline: Timeline, progress: Callable[[int, int, str], None]
) -> Callable[[int, int, str], None]:
    """A wait's progress callback that also feeds the timeline from the same report."""

    def report(done: int, total: int, note: str) -> None:
        progress(done, total, note)
        counts = progress_counts(note)
        if counts is not None:
            timeline.add(time.monotonic(), *counts)

    return report


# --- host measurements ----------------------------------------------------------


def used_bytes() -> int:
    """``free -b`` "used" (what the issue's memory figure is defined by)."""
    out = subprocess.run(["free", "-b"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Mem:"):
            return int(line.split()[2])
    raise RuntimeError(f"unexpected output of free -b:\n{out}")


def engine_rss() -> int:
    """Resident memory of dockerd and containerd (not the shims), for the record."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() not in ("dockerd", "containerd"):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def memory() -> dict[str, int]:
    """Median of a few ``free`` readings (the machine is noisy), and the engine's RSS."""
    readings = []
    for i in range(MEMORY_READINGS):
        if i:
            time.sleep(MEMORY_GAP)
        readings.append(used_bytes())
    return {"used": int(statistics.median(readings)), "engine_rss": engine_rss()}


def memory_figures(before: dict[str, int], after: dict[str, int], tasks: int) -> dict[str, Any]:
    grown = after["used"] - before["used"]
    return {
        "used_before_bytes": before["used"],
        "used_after_bytes": after["used"],
        "used_growth_bytes": grown,
        "tasks_divided_by": tasks,
        "mib_per_task": grown / tasks / MIB,
        # Already inside used_growth: how much of it is dockerd + containerd.
        "engine_rss_growth_bytes": after["engine_rss"] - before["engine_rss"],
    }


# --- engine helpers ---------------------------------------------------------------


def free_subnet(client: docker.DockerClient, tasks: int) -> str:
    """A /20 (or larger if needed) in SUBNET_POOL that no existing network uses."""
    need = tasks + max(16, tasks // 10)
    prefix = next((p for p in range(20, 15, -1) if 2 ** (32 - p) - 3 >= need), 16)
    taken = []
    for network in client.api.networks():
        for config in (network.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                subnet = ipaddress.ip_network(config["Subnet"], strict=False)
                if subnet.version == 4:
                    taken.append(subnet)
    for candidate in SUBNET_POOL.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise RuntimeError(f"no free /{prefix} left in {SUBNET_POOL}")


def docker_stack_deploy(text: str, stack: str) -> None:
    """A plain ``docker stack deploy`` (offline: no registry to resolve images from)."""
    with tempfile.TemporaryDirectory(prefix="cqkd-scale-") as tmp:
        path = Path(tmp) / "stack.yml"
        path.write_text(text)
        done = subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"docker stack deploy {stack} failed:\n{done.stderr.strip()}")


def wait_running(
    client: docker.DockerClient,
    stack: str,
    total: int,
    deadline: float,
    what: str,
    timeline: Timeline | None = None,
) -> None:
    """Until ``total`` slots of the stack run: one task list call per poll round."""
    flt = {**stack_filter(stack), "desired-state": "running"}
    progress = Throttled(what)
    while True:
        running = running_slots(client.api.tasks(filters=flt))
        progress(running, total, f"{running}/{total} running")
        if timeline is not None:
            timeline.add(time.monotonic(), running, keep=running >= total)
        if running >= total:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{stack}: {running}/{total} tasks running at the deadline")
        time.sleep(POLL_SECONDS)


def user_stack_rm(stack: str, env: dict[str, str] | None = None) -> None:
    """One ``docker stack rm``, in a session of its own: a Ctrl-C meant for the
    benchmark must not cut short the removal it is waiting for. ``env``: the
    docker CLI's environment (``DOCKER_HOST`` for a cluster's manager)."""
    subprocess.run(
        ["docker", "stack", "rm", stack],
        capture_output=True,
        text=True,
        start_new_session=True,
        env=env,
    )


def user_teardown(
    client: docker.DockerClient, stack: str, timeout: float, env: dict[str, str] | None = None
) -> float:
    """``docker stack rm`` as a user runs it, until containers and network are gone.

    The network's removal fails while tasks still hold it; a user runs
    ``docker stack rm`` again once the containers are gone, and so do we.
    A probe container that an interrupted ``probe`` left would hold the
    network too: it goes first.
    """
    start = time.monotonic()
    remove_probes(client, stack)
    user_stack_rm(stack, env)
    last_rm = time.monotonic()
    progress = Throttled(f"docker stack rm {stack}")
    while True:
        left = stack_leftovers(client, stack)
        if not any(left.values()):
            return time.monotonic() - start
        progress(0, 0, f"{len(left['containers'])} containers, {len(left['networks'])} networks")
        if not left["containers"] and time.monotonic() - last_rm >= 2 * POLL_SECONDS:
            user_stack_rm(stack, env)
            last_rm = time.monotonic()
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{leftovers_text(left)} left after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def check_room(client: docker.DockerClient, tasks: int) -> list[str]:
    """Refuse a stage the engine cannot hold; name other stacks that skew the figures.

    Every container on an overlay network also takes a port on the
    docker_gwbridge bridge, and a Linux bridge holds at most 1024 ports: past
    that, tasks fail with "exchange full". The probe needs one more.
    """
    ports = len(list(GWBRIDGE_PORTS.iterdir())) if GWBRIDGE_PORTS.is_dir() else 0
    if ports + tasks + 1 >= BRIDGE_MAX_PORTS:
        raise RuntimeError(
            f"docker_gwbridge has {ports} ports in use; {tasks} more tasks and a probe "
            f"exceed the bridge's {BRIDGE_MAX_PORTS}: remove other stacks first"
        )
    others = sorted(
        {
            s["Spec"].get("Labels", {}).get(STACK_LABEL, "")
            for s in client.api.services()
            if s["Spec"].get("Labels", {}).get(STACK_LABEL)
        }
    )
    if others:
        log(f"warning: other stacks on this engine skew the figures: {', '.join(others)}")
    return others


def engine_alive() -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
        return done.returncode == 0
    return False


@contextlib.contextmanager
def interrupts_held(what: str, reraise: bool = True) -> Any:
    """Ctrl-C and SIGTERM wait until ``what`` is done: a teardown cut in half leaves a stack.

    The interrupt is not lost: with ``reraise`` it is raised once the block
    is over, so the run still stops (and cleans up) as asked.
    """
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        log(f"signal {signum}: {what} first, then the run stops")

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught and reraise:
        raise KeyboardInterrupt(f"signal {caught[0]}")


def teardown_budget(timeout: float) -> float:
    """Seconds a teardown may take: the deploy's timeout, but never less than the minimum."""
    return max(timeout, TEARDOWN_MIN_SECONDS)


def brief(text: str, limit: int = 300) -> str:
    """An error for the table: its first line, and the first line that says "error:" if
    another one does (the CLI's own words, after its progress output); JSON keeps it all."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    said = next((line for line in lines[1:] if "error:" in line), None)
    shown = f"{lines[0]} ... {said}" if said else lines[0]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def leftovers_text(left: dict[str, list[str]]) -> str:
    """What is left of a stack, counted by kind ("3 containers, 1 networks")."""
    return ", ".join(f"{len(names)} {kind}" for kind, names in left.items() if names) or "nothing"


def take_down(
    stacks: Stacks, stack: str, out: dict, what: str, method: Callable[[], float]
) -> None:
    """A stage's teardown by ``method`` (timed by it); no error of it leaves here.

    Whatever it leaves, or whatever goes wrong, is recorded in the stage and
    left in ``stacks`` for ``Stacks.clean`` to remove at the end, so the
    stage's own error (if any) is the one reported and the next stage runs.
    The one thing raised is an interrupt that came meanwhile, once it is done.
    """
    with interrupts_held(f"removing {stack}"):
        try:
            if not any(stack_leftovers(stacks.client, stack).values()):
                stacks.gone(stack)  # never deployed (the deploy itself failed)
                return
            log(f"{what}: removing {stack}")
            out["teardown_seconds"] = method()
            left = stack_leftovers(stacks.client, stack)
            if any(left.values()):
                raise RuntimeError(f"{leftovers_text(left)} still there")
            stacks.gone(stack)
            log(f"{what}: gone after {out['teardown_seconds']:.1f} s")
        except Exception as exc:
            out["teardown_error"] = f"{type(exc).__name__}: {exc}"
            log(f"{what}: teardown failed ({brief(out['teardown_error'])}); tried again at the end")


class Stacks:
    """Every stack this run created; whatever is left is removed in ``finally``."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.run_id = uuid.uuid4().hex[:6]
        self.live: list[str] = []

    def new(self, stage: str) -> str:
        name = f"cqkdscale_{stage}_{self.run_id}"
        self.live.append(name)
        return name

    def gone(self, stack: str) -> None:
        with contextlib.suppress(ValueError):
            self.live.remove(stack)

    def clean(self, timeout: float) -> list[str]:
        """Remove what is left, large stacks in steps (1000 at once can kill containerd).

        Each stack is tried CLEAN_ATTEMPTS times, until its services,
        containers and networks are all gone; nothing raises out of here,
        and an interrupt waits until the removal is over. Returns the stacks
        that could not be removed (each named in the log with what is left).
        """
        failed = []
        with interrupts_held("cleaning up", reraise=False):
            for stack in list(self.live):
                if self._remove(stack, timeout):
                    self.gone(stack)
                else:
                    failed.append(stack)
        return failed

    def _remove(self, stack: str, timeout: float) -> bool:
        left: dict[str, list[str]] | str = "not read"
        # One more look than tries: the last try's removal may finish late.
        for attempt in range(1, CLEAN_ATTEMPTS + 2):
            try:
                left = stack_leftovers(self.client, stack)
                if not any(left.values()):
                    return True
                if attempt > CLEAN_ATTEMPTS:
                    break
                log(f"cleaning up stack {stack} ({leftovers_text(left)}), try {attempt}")
                removed = stack_rm(self.client, stack, timeout, Throttled(f"cleaning {stack}"))
                if removed.complete:
                    return True
                left = removed.left
            except Exception as exc:
                log(f"cleaning up stack {stack}, try {attempt}: {type(exc).__name__}: {exc}")
            time.sleep(POLL_SECONDS * attempt)
        shown = leftovers_text(left) if isinstance(left, dict) else left
        log(f"could not remove stack {stack} ({shown} left): remove it by hand")
        return False


# --- the naive image ----------------------------------------------------------------


def recipe_hash(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for name in RECIPE_FILES:
        digest.update(b"\0" + name.encode() + b"\0" + (NAIVE_DIR / name).read_bytes())
    return digest.hexdigest()


def ensure_naive_image(client: docker.DockerClient) -> str:
    """Build ``cqkd-naive-node:bench`` unless it exists with the current recipe."""
    base = client.images.get(host_base_image())
    wanted = recipe_hash(base.id)
    existing = None
    with contextlib.suppress(docker.errors.ImageNotFound):
        existing = client.images.get(NAIVE_IMAGE)
    if existing is not None and existing.labels.get(RECIPE_LABEL) == wanted:
        return "up to date"
    log(f"building {NAIVE_IMAGE} from {NAIVE_DIR} (wheels built on the host)")
    with tempfile.TemporaryDirectory(prefix="cqkd-naive-") as tmp:
        context = Path(tmp)
        for name in RECIPE_FILES:
            shutil.copy2(NAIVE_DIR / name, context / name)
        wheels = context / "wheels"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
             "-r", str(NAIVE_DIR / "requirements.txt")],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel for the naive image failed:\n{done.stderr[-2000:]}")
        image, _ = client.images.build(
            path=str(context),
            tag=NAIVE_IMAGE,
            labels={RECIPE_LABEL: wanted},
            rm=True,
            forcerm=True,
            pull=False,
        )
    if existing is not None and existing.id != image.id:
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(existing.id)
    return "built"


# --- the project's CLI ------------------------------------------------------------------


def cqkd(
    *args: str, timeout: float = 600, new_session: bool = False
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``python -m cqkd_stack ARGS`` as an operator runs it: wall time and result.

    ``new_session`` keeps a terminal's Ctrl-C from reaching it (for a
    teardown, which must finish once started).
    """
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=new_session,
    )
    return time.perf_counter() - start, done


def cqkd_watched(
    *args: str, timeout: float, on_line: Callable[[str], None]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``cqkd`` with its stderr read as it comes, each line (or redrawn bar) to ``on_line``.

    The CLI draws its progress bar only for a terminal; FORCE_COLOR makes it
    draw as in one (what an operator sees), so the deploy's own wait reports
    its running and joined counts here as it reads them. stderr comes back
    without the terminal's escape codes.
    """
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "250"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cqkd_stack", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    out: list[bytes] = []

    def pump_err(stream: Any) -> None:
        tail = b""
        for chunk in iter(lambda: stream.read1(65536), b""):
            err.append(chunk)
            *lines, tail = re.split(rb"[\r\n]", tail + chunk)
            for line in lines:
                if line:
                    on_line(line.decode(errors="replace"))

    readers = [
        threading.Thread(target=pump_err, args=(proc.stderr,), daemon=True),
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
        proc.stdout.close()
        proc.stderr.close()
    wall = time.perf_counter() - start
    stderr = ANSI.sub("", b"".join(err).decode(errors="replace"))
    return wall, subprocess.CompletedProcess(
        proc.args, proc.returncode, b"".join(out).decode(), stderr
    )


def cqkd_json(
    *args: str,
    timeout: float = 600,
    ok_codes: tuple[int, ...] = (0,),
    on_line: Callable[[str], None] | None = None,
) -> Any:
    if on_line is None:
        wall, done = cqkd(*args, timeout=timeout)
    else:
        wall, done = cqkd_watched(*args, timeout=timeout, on_line=on_line)
    if done.returncode not in ok_codes:
        raise RuntimeError(
            f"cqkd-stack {' '.join(args)} exited {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )
    return wall, json.loads(done.stdout)


def probe_figures(
    stack: str, on_round: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """``probe`` five times: wall time, its own seconds (medians), worst answered and joined.

    Also when (``time.monotonic()``) the first round that found every task
    joined ended, if one did: a bound on when the stack was all joined.
    ``on_round`` sees each round's report (the timeline's joined counts).
    """
    walls, seconds, answered, joined, total = [], [], [], [], 0
    all_joined_at = None
    for _ in range(REPEAT):
        # Exit 1 means some task was silent: a figure, not a failure.
        wall, out = cqkd_json("probe", "--stack", stack, "--format", "json", ok_codes=(0, 1))
        walls.append(wall)
        seconds.append(out["seconds"])
        answered.append(out["answered"])
        joined.append(out["joined"])
        total = out["total"]
        if on_round is not None:
            on_round(out)
        if all_joined_at is None and total and out["joined"] == total:
            all_joined_at = time.monotonic()
    return {
        "probe_wall_seconds": statistics.median(walls),
        "probe_seconds": statistics.median(seconds),
        "probe_answered_min": min(answered),
        "probe_joined_min": min(joined),
        "probe_total": total,
        "probe_all_joined_at": all_joined_at,
    }


def ports_seconds(stack: str) -> float:
    walls = []
    for _ in range(REPEAT):
        wall, _ = cqkd_json("ports", "--stack", stack, "--format", "json", ok_codes=(0, 1))
        walls.append(wall)
    return statistics.median(walls)


def dht_check_figures(stack: str) -> dict[str, float]:
    """``dht-check`` five times: its own round trip and the wall time (medians)."""
    trips, walls = [], []
    for _ in range(REPEAT):
        wall, check = cqkd_json("dht-check", "--stack", stack, "--format", "json")
        walls.append(wall)
        trips.append(check["round_trip_seconds"])
    return {
        "dht_check_seconds": statistics.median(trips),
        "dht_check_wall_seconds": statistics.median(walls),
    }


# --- figures at each moment -------------------------------------------------------------

# When a stage's figures are taken, in the order its headline prefers them: a
# stack that joined is measured as it stays; one that never did, at the
# timeout (the longest it was given); at all-running is the earliest set.
# The project's deploy command returns only at all joined (or fails at its
# timeout), so it has no all-running set; the floor has no DHT to join.
MOMENTS = ("all_joined", "timeout", "all_running")
MOMENT_NAMES = {"all_joined": "all joined", "timeout": "timeout", "all_running": "all running"}
# A set's figures that the stage's headline (its column in the table) takes.
HEADLINE_KEYS = (
    "memory",
    "idle_cpu",
    "deploy_cpu",
    "probe_wall_seconds",
    "probe_seconds",
    "probe_answered_min",
    "probe_joined_min",
    "probe_total",
    "ports_seconds",
    "dht_check_seconds",
    "dht_check_wall_seconds",
)


def headline(figures: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    """The moment whose figures stand for a stage, and that set; (None, {}) if none was taken."""
    for moment in MOMENTS:
        if moment in figures:
            return moment, figures[moment]
    return None, {}


def settle(out: dict) -> None:
    """Copy the headline set's figures to the stage, and say which moment they are from."""
    moment, chosen = headline(out.get("figures") or {})
    out["figures_at"] = moment
    for key in HEADLINE_KEYS:
        if key in chosen:
            out[key] = chosen[key]


def running_slots(tasks: list[dict[str, Any]]) -> int:
    """Slots with a running task: a task and its replacement both running count once."""
    return len(
        {
            (t["ServiceID"], t.get("Slot"))
            for t in tasks
            if t.get("Status", {}).get("State") == "running"
        }
    )


# What a stack at rest costs, by process group (issue 20): the processes in
# the containers (under a containerd shim), Python (the nodes) apart from the
# rest (the health checks' execs, docker-init, the floor's sleep), the shims
# and containerd, dockerd, the kernel's threads, and everything else.
CPU_GROUPS = (
    "containers: python",
    "containers: other",
    "containerd+shims",
    "dockerd",
    "kernel threads",
    "other",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# (host busy jiffies, pid -> (group, jiffies)): see cpu_snapshot.
Snapshot = tuple[float, dict[int, tuple[str, int]]]


def cpu_snapshot() -> Snapshot:
    """(host busy jiffies from /proc/stat, pid -> (group, CPU jiffies)).

    A process's jiffies include the children it has reaped (cutime and
    cstime): the runc runs and execs that come and go between two readings
    are counted with the shim or container that waited for them.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    busy = sum(values) - values[3] - values[4]  # all but idle and iowait
    procs: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        procs[int(entry.name)] = (comm, int(rest[1]), ticks)

    def group(pid: int) -> str:
        comm, ppid, _ = procs[pid]
        if pid == 2 or ppid == 2:
            return "kernel threads"
        if comm == "containerd" or comm.startswith("containerd-shim"):
            return "containerd+shims"
        if comm == "dockerd":
            return "dockerd"
        seen = 0
        while ppid in procs and seen < 64:  # a container's process descends from its shim
            if procs[ppid][0].startswith("containerd-shim"):
                return "containers: python" if comm.startswith("python") else "containers: other"
            ppid, seen = procs[ppid][1], seen + 1
        return "other"

    return busy, {pid: (group(pid), ticks) for pid, (_, _, ticks) in procs.items()}


def cpu_used(before: Snapshot, after: Snapshot) -> tuple[float, dict[str, float]]:
    """CPU seconds between two snapshots: the host's busy time, and by group."""
    (busy0, procs0), (busy1, procs1) = before, after
    groups = dict.fromkeys(CPU_GROUPS, 0)
    for pid, (name, ticks) in procs1.items():
        was = procs0.get(pid)
        # A process started meanwhile counts whole; one that ended unreaped is lost.
        groups[name] += ticks - (was[1] if was and was[0] == name else 0)
    return (busy1 - busy0) / CLOCK_TICKS, {k: v / CLOCK_TICKS for k, v in groups.items()}


def idle_cpu(seconds: float) -> dict[str, Any]:
    """Cores busy over ``seconds`` while nothing is asked of the stack, by group."""
    before = cpu_snapshot()
    start = time.monotonic()
    time.sleep(seconds)  # the measure: what the host does on its own meanwhile
    busy, groups = cpu_used(before, cpu_snapshot())
    elapsed = time.monotonic() - start
    return {
        "seconds": elapsed,
        "host_busy_cores": busy / elapsed,
        "cores": {name: used / elapsed for name, used in groups.items()},
    }


def deploy_cpu(before: Snapshot, tasks: int) -> dict[str, Any]:
    """CPU from the deploy's start to now, in all and per task: where deploy time goes.

    Against the floor's, the per-task figures show what the node's start
    costs beyond a `sleep` (containers: python) and what the engine spends
    on each task (containerd, shims, runc, dockerd), on the same engine.
    """
    busy, groups = cpu_used(before, cpu_snapshot())
    per = max(tasks, 1) / 1000
    return {
        "host_busy_core_seconds": busy,
        "core_seconds": groups,
        "host_ms_per_task": busy / per,
        "ms_per_task": {name: used / per for name, used in groups.items()},
    }


class Measure:
    """Takes a stage's figures at one moment: each that can be taken, none fatal.

    A figure that fails (a probe that errs, an engine that does not answer)
    is recorded in the set's ``errors`` and the others are still taken, so a
    stack that never fully joins, or a stage that times out, still reports
    what it cost. Memory is divided by the slots running at that moment.
    At a stage's last moment (the floor: all running; a DHT: all joined or
    its timeout) the host's CPU at rest is read for ``idle_seconds``.
    """

    idle_seconds = 60.0
    # Fed by the probe rounds (joined) and the running count of each moment.
    timeline: Timeline | None = None

    def __init__(
        self,
        client: docker.DockerClient,
        what: str,
        stack: str,
        out: dict,
        before: dict[str, int],
        start: float,
        tasks: int,
        dht: bool,
        dht_check: bool = False,
    ) -> None:
        self.client, self.what, self.stack, self.out = client, what, stack, out
        self.before, self.start, self.tasks = before, start, tasks
        self.dht, self.dht_check = dht, dht_check
        self.cpu_before = cpu_snapshot()

    def __call__(self, moment: str) -> dict[str, Any]:
        began = time.monotonic()
        taken: dict[str, Any] = {"at_seconds": began - self.start, "tasks": self.tasks}
        errors: dict[str, str] = {}
        log(f"{self.what}: figures at {MOMENT_NAMES[moment]} ({taken['at_seconds']:.1f} s)")
        # First: the figures below cost CPU of their own.
        taken["deploy_cpu"] = deploy_cpu(self.cpu_before, self.tasks)

        def attempt(name: str, figure: Callable[[], Any]) -> Any:
            try:
                return figure()
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"[-500:]
                log(f"{self.what}: {name} at {MOMENT_NAMES[moment]} failed: {errors[name]}")
                return None

        flt = {**stack_filter(self.stack), "desired-state": "running"}
        running = attempt("running", lambda: running_slots(self.client.api.tasks(filters=flt)))
        taken["running"] = running
        if self.dht:
            # The probe first: at all-running, whether every task has joined
            # already is the figure that ages fastest.
            def probed(report: dict[str, Any]) -> None:
                if self.timeline is not None:
                    self.timeline.add(time.monotonic(), running, report["joined"])

            taken.update(attempt("probe", lambda: probe_figures(self.stack, probed)) or {})
            seen = taken.pop("probe_all_joined_at", None)
            if seen is not None:
                taken["all_joined_by_seconds"] = seen - self.start
        after = attempt("memory", memory)
        if after is not None:
            taken["memory"] = memory_figures(self.before, after, running or self.tasks)
        if self.dht:
            taken["ports_seconds"] = attempt("ports", lambda: ports_seconds(self.stack))
        if self.dht_check:
            taken.update(attempt("dht_check", lambda: dht_check_figures(self.stack)) or {})
        if self.idle_seconds > 0 and (moment != "all_running" or not self.dht):
            log(f"{self.what}: CPU at rest for {self.idle_seconds:g} s")
            taken["idle_cpu"] = attempt("idle_cpu", lambda: idle_cpu(self.idle_seconds))
        if errors:
            taken["errors"] = errors
        taken["seconds_taken"] = time.monotonic() - began
        self.out.setdefault("figures", {})[moment] = taken
        return taken


# --- stages ---------------------------------------------------------------------------


def tuned(out: dict) -> None:
    """The host as `cqkd-stack setup` leaves it; recorded with the stage."""
    report = sysctls.ensure_minimums()
    for warning in report.warnings:
        log(f"warning: {warning}")
    out["sysctls"] = {key: sysctls.current(key) for key in sysctls.MINIMUMS}


@contextlib.contextmanager
def untuned(out: dict) -> Any:
    """The host as it was before `setup` for the bare stage; the tuned values come back after."""
    before = {key: sysctls.current(key) for key in UNTUNED}
    try:
        for key, value in UNTUNED.items():
            sysctls.write(key, value)
        out["sysctls"] = {key: sysctls.current(key) for key in UNTUNED}
        yield
    finally:
        for key, value in before.items():
            if value is not None:
                sysctls.write(key, value)


def stepped_removal(client: docker.DockerClient, stack: str, timeout: float) -> float:
    """The project's stepped removal (cqkd_stack.live.teardown.stack_rm); seconds."""
    removed = stack_rm(client, stack, timeout, Throttled(f"removing {stack}"))
    if not removed.complete:
        raise TimeoutError(f"{leftovers_text(removed.left)} left after {removed.seconds:.0f} s")
    return removed.seconds


def stage_floor(
    client: docker.DockerClient, stacks: Stacks, workers: int, timeout: float, out: dict
) -> None:
    out["other_stacks"] = check_room(client, workers)
    tuned(out)
    stack = stacks.new("floor")
    subnet = free_subnet(client, workers)
    out.update(stack=stack, subnet=subnet, image=host_base_image(), tasks=workers)
    text = FLOOR_STACK.substitute(IMAGE=host_base_image(), WORKERS=workers, SUBNET=subnet)
    before = memory()
    log(f"floor: deploying {workers} x sleep infinity as {stack} ({subnet})")
    start = time.monotonic()
    timeline = Timeline(start)
    timeline.add(start, 0)
    measure = Measure(client, "floor", stack, out, before, start, workers, dht=False)
    try:
        docker_stack_deploy(text, stack)
        try:
            wait_running(client, stack, workers, start + timeout, "floor", timeline)
        except TimeoutError as exc:
            out["not_running"] = str(exc)
            measure("timeout")
            return
        out["running_seconds"] = time.monotonic() - start
        log(f"floor: all {workers} running after {out['running_seconds']:.1f} s")
        measure("all_running")
    finally:
        out["timeline"] = timeline.as_dict()
        # The same stepped removal as the project's teardown: the engine's own
        # ceiling for that method (a plain `docker stack rm` of 1000 sleepers
        # once took containerd and dockerd down here).
        budget = teardown_budget(timeout)
        take_down(stacks, stack, out, "floor", lambda: stepped_removal(client, stack, budget))


def joined_seconds(waited: float, at_running: dict[str, Any]) -> tuple[float, bool]:
    """When the stack was first seen all joined: by the wait, or earlier by the probe of the
    all-running figures (taken while the wait had not started yet); and whether it was the latter.
    """
    seen = at_running.get("all_joined_by_seconds")
    if seen is not None and seen < waited:
        return seen, True
    return waited, False


def stage_bare(
    client: docker.DockerClient,
    stacks: Stacks,
    workers: int,
    timeout: float,
    init: bool,
    as_setup_leaves_it: bool,
    lonely: int,
    out: dict,
) -> None:
    if as_setup_leaves_it:
        tuned(out)
        _bare(client, stacks, workers, timeout, init, lonely, out)
    else:
        with untuned(out):
            _bare(client, stacks, workers, timeout, init, lonely, out)


def bare_stack_text(workers: int, lonely: int, subnet: str, init: bool) -> str:
    """The naive stack: a bootstrap and ``workers`` workers, ``lonely`` of them unable to join.

    A lonely worker is the naive worker with ``bootstrap`` resolving, through
    its /etc/hosts, to an address where nothing answers (TEST-NET-1): it runs
    and listens but never finds anybody, as the 8 of 1001 that never joined
    in the 1000-worker run. It lets a small run take the path of a baseline
    that never fully joins.
    """
    text = Template((NAIVE_DIR / "naive.stack.yml").read_text()).substitute(
        WORKERS=workers - lonely, SUBNET=subnet, INIT="true" if init else "false"
    )
    if not lonely:
        return text
    doc = yaml.safe_load(text)
    worker = doc["services"]["worker"]
    doc["services"]["lonely"] = {
        **copy.deepcopy(worker),
        "environment": {**worker["environment"], "BASE_PORT": str(LONELY_BASE_PORT)},
        "extra_hosts": [f"bootstrap:{NOWHERE}"],
        "deploy": {**copy.deepcopy(worker["deploy"]), "replicas": lonely},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _bare(
    client: docker.DockerClient,
    stacks: Stacks,
    workers: int,
    timeout: float,
    init: bool,
    lonely: int,
    out: dict,
) -> None:
    out["image"] = f"{NAIVE_IMAGE} ({ensure_naive_image(client)})"
    out["other_stacks"] = check_room(client, workers + 1)
    stack = stacks.new("bare")
    subnet = free_subnet(client, workers + 1)
    tasks = workers + 1
    out.update(stack=stack, subnet=subnet, tasks=tasks, init=init, lonely=lonely)
    text = bare_stack_text(workers, lonely, subnet, init)
    before = memory()
    log(f"bare: deploying bootstrap + {workers} naive workers as {stack} ({subnet})")
    start = time.monotonic()
    timeline = Timeline(start)
    timeline.add(start, 0, 0)
    measure = Measure(client, "bare", stack, out, before, start, tasks, dht=True)
    measure.timeline = timeline
    try:
        docker_stack_deploy(text, stack)
        try:
            wait_running(client, stack, tasks, start + timeout, "bare", timeline)
        except TimeoutError as exc:
            out["not_running"] = str(exc)
            measure("timeout")
            return
        out["running_seconds"] = time.monotonic() - start
        log(f"bare: all {tasks} running after {out['running_seconds']:.1f} s")
        # Taken before waiting for the join, so a stack that never joins has
        # them too. The join wait goes on from here, so all-joined (if it
        # comes) is late by at most this long, unless the figures' own probe
        # already found every task joined: then that is when it was seen.
        at_running = measure("all_running")
        out["all_running_figures_seconds"] = at_running["seconds_taken"]
        remaining = max(start + timeout - time.monotonic(), 1.0)
        try:
            ready = wait_until_ready(
                client, stack, remaining, timeline_progress(timeline, Throttled("bare joined"))
            )
        except NotReady as exc:
            # "after N s" there is the wait's share, what all running left of the timeout.
            said = str(exc).splitlines()[0].removesuffix("; not ready:")
            out["not_joined"] = f"{said} of waiting for the join ({timeout:.0f} s timeout)"
            log(f"bare: not all joined: {out['not_joined']}")
            measure("timeout")
            return
        out["joined_seconds"], seen_early = joined_seconds(time.monotonic() - start, at_running)
        if seen_early:
            out["joined_seen_by"] = "the all-running figures' probe"
        out["ready_total"] = ready.total
        timeline.flush()
        log(f"bare: all {ready.total} joined after {out['joined_seconds']:.1f} s")
        measure("all_joined")
    finally:
        out["timeline"] = timeline.as_dict()
        budget = teardown_budget(timeout)
        take_down(stacks, stack, out, "bare", lambda: user_teardown(client, stack, budget))


def project_teardown(stack: str, timeout: float) -> float:
    """``cqkd-stack teardown`` as an operator runs it; its wall time."""
    wall, done = cqkd(
        "teardown", "--stack", stack, "--timeout", str(int(timeout)),
        timeout=timeout + 600, new_session=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"cqkd-stack teardown exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return wall


def stage_project(stacks: Stacks, workers: int, timeout: float, out: dict) -> None:
    out["other_stacks"] = check_room(stacks.client, workers + 3)
    tuned(out)
    stack = stacks.new("project")
    # The workers plus bootstrap, Alice and Bob, until the deploy says otherwise.
    out.update(stack=stack, tasks=workers + 3)
    before = memory()
    log(f"project: python -m cqkd_stack deploy --replicas {workers} --stack {stack}")
    start = time.monotonic()
    timeline = Timeline(start)
    timeline.add(start, 0, 0)
    measure = Measure(
        stacks.client, "project", stack, out, before, start, workers + 3, dht=True, dht_check=True
    )
    measure.timeline = timeline

    def progress(line: str) -> None:
        counts = progress_counts(line)
        if counts is not None:
            timeline.add(time.monotonic(), *counts)

    try:
        try:
            wall, summary = cqkd_json(
                "deploy", "--replicas", str(workers), "--stack", stack,
                "--format", "json", "--timeout", str(int(timeout)),
                timeout=timeout + 600, on_line=progress,
            )  # fmt: skip
        except Exception:
            # Deployed but not all joined in time: what runs is still measured.
            # Nothing here may hide the deploy's own error.
            deployed = False
            with contextlib.suppress(Exception):
                deployed = bool(stack_leftovers(stacks.client, stack)["services"])
            if deployed:
                measure("timeout")
            raise
        tasks = summary.get("tasks")
        tasks = len(tasks) if isinstance(tasks, list) else int(tasks)
        out.update(
            deploy_wall_seconds=wall,
            running_seconds=summary.get("running_seconds"),
            joined_seconds=summary.get("joined_seconds"),
            wait_seconds=summary.get("seconds"),
            tasks=tasks,
        )
        timeline.flush()
        log(f"project: deploy done in {wall:.1f} s ({tasks} tasks)")
        measure.tasks = tasks
        measure("all_joined")
    finally:
        out["timeline"] = timeline.as_dict()
        budget = teardown_budget(timeout)
        take_down(stacks, stack, out, "project", lambda: project_teardown(stack, budget))
        out["engine_alive_after_teardown"] = engine_alive()


def run_stage(name: str, results: dict, body: Callable[[dict], None]) -> None:
    """One stage; a failure is recorded and the next stage still runs.

    Its headline figures are settled whatever happened, an interrupt included.
    """
    out = results["stages"].setdefault(name, {})
    try:
        body(out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED: {brief(out['error'])}")
    finally:
        settle(out)


# --- report --------------------------------------------------------------------------------


def _get(stage: dict, *keys: str) -> Any:
    value: Any = stage
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def judge(results: dict) -> list[dict[str, Any]]:
    bare = results["stages"].get("bare", {})
    project = results["stages"].get("project", {})
    # The project's all-joined as the operator sees it: from pressing enter to
    # the command returning (validation, docker stack deploy and the wait
    # included), against the bare stack's from `docker stack deploy` on.
    joined = project.get("deploy_wall_seconds")
    bare_running = bare.get("running_seconds")
    values = {
        "joined_vs_bare_running": (joined, bare_running),
        "joined_vs_bare_running_stretch": (
            joined,
            0.9 * bare_running if bare_running is not None else None,
        ),
        "memory": (_get(project, "memory", "mib_per_task"), 12.0),
        "teardown": (project.get("teardown_seconds"), 60.0),
        "probe": (project.get("probe_wall_seconds"), 3.0),
        "dht_check": (project.get("dht_check_seconds"), 1.0),
    }
    verdicts = []
    for key, (value, limit) in values.items():
        if value is None or limit is None:
            passed = None
        elif key in ("probe", "dht_check"):
            passed = value < limit
        else:
            passed = value <= limit
        verdicts.append(
            {"target": key, "what": TARGETS[key], "value": value, "limit": limit, "pass": passed}
        )
    return verdicts


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def table(results: dict) -> str:
    floor = results["stages"].get("floor", {})
    bare = results["stages"].get("bare", {})
    project = results["stages"].get("project", {})
    rows = [
        ("figures taken at", _moment(floor), _moment(bare), _moment(project)),
        ("tasks", floor.get("tasks"), bare.get("tasks"), project.get("tasks")),
        ("all running, s", floor.get("running_seconds"), bare.get("running_seconds"),
         project.get("running_seconds")),
        ("all joined (probe), s", None, bare.get("joined_seconds"),
         project.get("joined_seconds")),
        ("start to all joined (target), s", None, bare.get("joined_seconds"),
         project.get("deploy_wall_seconds")),
        ("host memory per task, MiB", _get(floor, "memory", "mib_per_task"),
         _get(bare, "memory", "mib_per_task"), _get(project, "memory", "mib_per_task")),
        ("  of which dockerd+containerd RSS", _engine_share(floor), _engine_share(bare),
         _engine_share(project)),
        ("probe all, wall s (median 5)", None, bare.get("probe_wall_seconds"),
         project.get("probe_wall_seconds")),
        ("probe all, its own s", None, bare.get("probe_seconds"),
         project.get("probe_seconds")),
        ("probe answered (worst of 5)", None,
         _answered(bare), _answered(project)),
        ("probe joined (worst of 5)", None, _joined(bare), _joined(project)),
        ("dht-check round trip, s", None, None, project.get("dht_check_seconds")),
        ("ports, wall s (median 5)", None, bare.get("ports_seconds"),
         project.get("ports_seconds")),
        ("host CPU at rest, cores", _get(floor, "idle_cpu", "host_busy_cores"),
         _get(bare, "idle_cpu", "host_busy_cores"), _get(project, "idle_cpu", "host_busy_cores")),
        *((f"  {name}", _get(floor, "idle_cpu", "cores", name),
           _get(bare, "idle_cpu", "cores", name), _get(project, "idle_cpu", "cores", name))
          for name in CPU_GROUPS),
        ("CPU from deploy to then, ms/task", _get(floor, "deploy_cpu", "host_ms_per_task"),
         _get(bare, "deploy_cpu", "host_ms_per_task"),
         _get(project, "deploy_cpu", "host_ms_per_task")),
        *((f"  {name}", _get(floor, "deploy_cpu", "ms_per_task", name),
           _get(bare, "deploy_cpu", "ms_per_task", name),
           _get(project, "deploy_cpu", "ms_per_task", name))
          for name in CPU_GROUPS),
        ("teardown to nothing left, s", floor.get("teardown_seconds"),
         bare.get("teardown_seconds"), project.get("teardown_seconds")),
        ("engine alive after teardown", None, None,
         project.get("engine_alive_after_teardown")),
    ]  # fmt: skip
    header = ("figure", "swarm floor", "bare", "project", "project/bare")
    lines = []
    for label, f, b, p in rows:
        numbers = all(type(v) in (int, float) for v in (b, p))
        wanted = label not in ("tasks", "  of which dockerd+containerd RSS")
        ratio = f"{p / b:.2f}x" if numbers and b and wanted else "-"
        lines.append((label, _fmt(f), _fmt(b), _fmt(p), ratio))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(5)]

    def row(cells: tuple) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [row(header), row(tuple("-" * w for w in widths)), *(row(r) for r in lines)]
    out.append("")
    out.append("figures by moment (a stage's column above takes them from all joined if it got")
    out.append("there, else from its timeout, else from all running; 'at' counts from its deploy):")
    out.append(moments_table(results))
    out.append("")
    out.append("memory: free -b 'used' growth (median of 3) / tasks running then; the")
    out.append("project's divisor includes bootstrap, alice and bob, the bare one its bootstrap;")
    out.append("the engine's own growth is included. times from the command's start (bare:")
    out.append("docker stack deploy).")
    for name in ("floor", "bare", "project"):
        settings = results["stages"].get(name, {}).get("sysctls")
        if settings:
            shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings.items())
            out.append(f"kernel settings, {name}: {shown}")
    out.append("")
    out.append("targets:")
    for verdict in results.get("targets") or judge(results):
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[verdict["pass"]]
        value = _fmt(verdict["value"])
        limit = _fmt(verdict["limit"])
        out.append(f"  [{mark}] {verdict['what']}: {value} (limit {limit})")
    for name, stage in results["stages"].items():
        out += stage_notes(name, stage)
    if results.get("interrupted"):
        out.append(f"interrupted ({results['interrupted']}): later stages did not run")
    for stack in results.get("left_behind") or []:
        out.append(f"left behind (remove it by hand): {stack}")
    return "\n".join(out)


def stage_notes(name: str, stage: dict) -> list[str]:
    """What went wrong in a stage, or did not happen, in one line each."""
    notes = []
    if "not_running" in stage:
        notes.append(f"{name}: not all running at the timeout: {stage['not_running']}")
    if "not_joined" in stage:
        notes.append(f"{name}: not all joined at the timeout: {stage['not_joined']}")
    if stage.get("joined_seen_by"):
        notes.append(f"{name}: all joined as first seen by {stage['joined_seen_by']}")
    elif stage.get("joined_seconds") is not None and stage.get("all_running_figures_seconds"):
        notes.append(
            f"{name}: all joined may be late by up to the "
            f"{stage['all_running_figures_seconds']:.1f} s its all-running figures took"
        )
    if "error" in stage:
        notes.append(f"{name}: FAILED: {brief(stage['error'])}")
    for moment, taken in (stage.get("figures") or {}).items():
        fell = _get(taken, "memory", "used_growth_bytes")
        if fell is not None and fell < 0:
            notes.append(
                f"{name}: host memory at {MOMENT_NAMES[moment]} was {-fell / MIB:.0f} MiB below "
                "its reading before the deploy: something else on the machine freed memory, "
                "so that figure is not the stack's"
            )
        for figure, error in (taken.get("errors") or {}).items():
            notes.append(f"{name}: {figure} at {MOMENT_NAMES[moment]} failed: {brief(error)}")
    if "teardown_error" in stage:
        notes.append(f"{name}: teardown failed: {brief(stage['teardown_error'])}")
    return notes


def moments_table(results: dict) -> str:
    """Every set of figures each stage took, one row per stage and moment."""
    header = ("stage", "moment", "at, s", "running", "MiB/task", "probe wall s",
              "answered", "joined", "ports s", "dht-check s")  # fmt: skip
    lines = []
    for name, stage in results["stages"].items():
        figures = stage.get("figures") or {}
        for moment in reversed(MOMENTS):  # in the order they happen
            if moment not in figures:
                continue
            taken = figures[moment]
            lines.append(
                (
                    name,
                    MOMENT_NAMES[moment],
                    _fmt(taken.get("at_seconds")),
                    _of(taken.get("running"), taken.get("tasks")),
                    _fmt(_get(taken, "memory", "mib_per_task")),
                    _fmt(taken.get("probe_wall_seconds")),
                    _fmt(_answered(taken)),
                    _fmt(_joined(taken)),
                    _fmt(taken.get("ports_seconds")),
                    _fmt(taken.get("dht_check_seconds")),
                )
            )
    if not lines:
        return "  (none taken)"
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  " + "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, tuple("-" * w for w in widths), *lines]
    )  # fmt: skip


def _moment(stage: dict) -> str | None:
    moment = stage.get("figures_at")
    return MOMENT_NAMES[moment] if moment else None


def _of(part: Any, whole: Any) -> str | None:
    return None if part is None else f"{part}/{whole}"


def _engine_share(stage: dict) -> float | None:
    """MiB per task of the growth that is dockerd and containerd themselves."""
    grown = _get(stage, "memory", "engine_rss_growth_bytes")
    if grown is None:
        return None
    return grown / MIB / stage["memory"]["tasks_divided_by"]


def _answered(stage: dict) -> str | None:
    if stage.get("probe_total") is None:
        return None
    return f"{stage['probe_answered_min']}/{stage['probe_total']}"


def _joined(stage: dict) -> str | None:
    if stage.get("probe_joined_min") is None:
        return None
    return f"{stage['probe_joined_min']}/{stage['probe_total']}"


# --- growth: the figures at several sizes ----------------------------------------------------

STAGES = ("floor", "bare", "project")


def sizes_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of one size in a saved JSON: a run of several sizes keeps them in ``sizes``;
    a run of one size (and every run before several existed) is that size itself."""
    return list(doc["sizes"]) if "sizes" in doc else [doc]


def _joined_or_running(stage: dict[str, Any]) -> float | None:
    """From pressing enter to all joined (the floor, which has nothing to join: all running)."""
    for key in ("deploy_wall_seconds", "joined_seconds", "running_seconds"):
        if stage.get(key) is not None:
            return stage[key]
    return None


# (label, figure of a stage, how a per-task row divides it: (scale, unit) or None).
# Seconds become milliseconds a task, cores become cores per 1000 tasks.
GROWTH_FIGURES: tuple[tuple[str, Callable[[dict], Any], tuple[float, str] | None], ...] = (
    ("all running, s", lambda s: s.get("running_seconds"), (1000.0, "ms")),
    ("start to all joined, s (floor: all running)", _joined_or_running, (1000.0, "ms")),
    ("host memory per task, MiB", lambda s: _get(s, "memory", "mib_per_task"), None),
    ("probe all, wall s", lambda s: s.get("probe_wall_seconds"), (1000.0, "ms")),
    ("ports, wall s", lambda s: s.get("ports_seconds"), (1000.0, "ms")),
    ("dht-check round trip, s", lambda s: s.get("dht_check_seconds"), None),
    # The stage's headline moment's: from its deploy command to then.
    ("CPU from deploy to then, core-s",
     lambda s: _get(s, "deploy_cpu", "host_busy_core_seconds"), (1000.0, "ms")),
    ("  of it the nodes (python), core-s",
     lambda s: _get(s, "deploy_cpu", "core_seconds", "containers: python"), (1000.0, "ms")),
    ("host CPU at rest, cores", lambda s: _get(s, "idle_cpu", "host_busy_cores"),
     (1000.0, "cores/1000")),
    ("  of it the nodes (python), cores",
     lambda s: _get(s, "idle_cpu", "cores", "containers: python"), (1000.0, "cores/1000")),
    ("teardown to nothing left, s", lambda s: s.get("teardown_seconds"), (1000.0, "ms")),
)  # fmt: skip


def _ratio(part: Any, whole: Any) -> str:
    numbers = all(type(v) in (int, float) for v in (part, whole))
    return f"{part / whole:.2f}x" if numbers and whole else "-"


def growth_rows(runs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per figure and size (and per task, where it divides), smallest size first;
    a size run twice shows each run. Ratios are the project's over the floor's and the bare's."""
    ordered = sorted(runs, key=lambda r: r.get("workers") or 0)
    rows = []
    for label, figure, per_task in GROWTH_FIGURES:
        kinds = [(label, None)] + ([(f"  per task, {per_task[1]}", per_task)] if per_task else [])
        for shown, divide in kinds:
            for run in ordered:
                stages = run.get("stages") or {}
                values = []
                for name in STAGES:
                    stage = stages.get(name) or {}
                    value = figure(stage) if stage else None
                    if divide is not None and value is not None:
                        value = value * divide[0] / stage["tasks"] if stage.get("tasks") else None
                    values.append(value)
                if all(v is None for v in values):
                    continue
                floor, bare, project = values
                rows.append(
                    (shown, str(run.get("workers")), *(_fmt(v) for v in values),
                     _ratio(project, floor), _ratio(project, bare))
                )  # fmt: skip
    return rows


def growth_table(runs: list[dict[str, Any]]) -> str:
    """Each figure at each size, side by side: how the cost grows with the workers."""
    header = ("figure", "workers", "floor", "bare", "project", "project/floor", "project/bare")
    rows = growth_rows(runs)
    if not rows:
        return "(no figures at any size)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    previous = None
    for cells in [header, tuple("-" * w for w in widths), *rows]:
        label = cells[0] if cells[0] != previous else ""
        previous = cells[0]
        lines.append("  ".join(
            [label.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                                    strict=True))]
        ).rstrip())  # fmt: skip
    dates = sorted({str(r.get("date", "?")) for r in runs})
    lines.append("")
    lines.append(f"sizes from runs of {', '.join(dates)}; per task: divided by the stage's tasks")
    return "\n".join(lines)


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Every size of every saved JSON, so sizes run separately can be shown together."""
    runs = []
    for path in paths:
        runs += sizes_of(json.loads(path.read_text()))
    return runs


# --- timeline picture --------------------------------------------------------------------------

STAGE_COLOURS = {"floor": "tab:gray", "bare": "tab:orange", "project": "tab:blue"}


# Samples further apart than this are not joined by a line in the picture: nothing was
# read in between (the bare stack's joined count, before its all-running figures).
SERIES_GAP_SECONDS = 10.0


def timeline_series(stage: dict[str, Any], count: str) -> tuple[list[float], list[float]]:
    """(seconds, counts) of one stage's timeline for ``count`` ("running" or "joined"), the
    samples that have it; a NaN between two that are more than SERIES_GAP_SECONDS apart, so
    a line is never drawn across a stretch where the count was not read."""
    samples = _get(stage, "timeline", "samples") or []
    kept = [(s["seconds"], s[count]) for s in samples if s.get(count) is not None]
    seconds: list[float] = []
    counts: list[float] = []
    for t, n in kept:
        if seconds and t - seconds[-1] > SERIES_GAP_SECONDS:
            seconds.append((seconds[-1] + t) / 2)
            counts.append(float("nan"))
        seconds.append(t)
        counts.append(n)
    return seconds, counts


def plot_timelines(runs: list[dict[str, Any]], out: Path) -> None:
    """One panel per size: tasks running (solid) and joined (dashed) of each stage against
    seconds since its deploy command. matplotlib is the optional extra ``bench``."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("drawing needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(runs, key=lambda r: r.get("workers") or 0)
    fig, axes = plt.subplots(len(ordered), 1, figsize=(9, 3.6 * len(ordered)), squeeze=False)
    for ax, run in zip(axes[:, 0], ordered, strict=True):
        stages = run.get("stages") or {}
        ends = []
        for name in STAGES:
            stage = stages.get(name)
            if not stage:
                continue
            colour = STAGE_COLOURS[name]
            # Running wide and pale, joined thin on top: where they coincide both show.
            for count, style, width, alpha in (
                ("running", "-", 4.0, 0.4),
                ("joined", "--", 1.5, 1.0),
            ):
                seconds, counts = timeline_series(stage, count)
                if any(n == n for n in counts):  # one count read, not only gaps (NaN != NaN)
                    ax.plot(seconds, counts, style, color=colour, linewidth=width, alpha=alpha,
                            label=f"{name}: {count}")  # fmt: skip
            end = _joined_or_running(stage)
            if end is not None:
                ends.append(end)
                ax.axvline(end, color=colour, linestyle=":", linewidth=1)
                ax.annotate(f"{end:.0f} s", (end, 0), color=colour, fontsize="small",
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        if ends:
            # The figures taken after each stage's end add samples; the race is before.
            ax.set_xlim(0, max(ends) * 1.15)
        ax.set_title(f"{run.get('workers')} workers ({str(run.get('date', ''))[:10]})")
        ax.set_xlabel("seconds since the deploy command")
        ax.set_ylabel("tasks")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(
        "benchmarks/scale.py: Swarm's floor (sleep), the bare stack, the project\n"
        "dotted: floor all running, bare all joined, project deploy done; "
        "no line where nothing was read"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def worker_sizes(text: str) -> list[int]:
    """``--workers 100,300,1000``: each size once, smallest first (the cheap ones fail first)."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("every size must be at least 1")
    return sizes


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=worker_sizes,
        default=[1000],
        metavar="N[,N...]",
        help="workers per stage; several sizes (100,300,1000) run the three stages at each "
        "and add a table of each figure at each size",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="per deploy, seconds")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-project", action="store_true")
    parser.add_argument(
        "--bare-without-init",
        action="store_true",
        help="deploy the naive node without `init: true` (Python as PID 1 then ignores "
        "SIGTERM: every task waits out the stop timeout on docker stack rm)",
    )
    parser.add_argument(
        "--bare-sysctls",
        choices=("untuned", "tuned"),
        default="untuned",
        help="kernel settings for the bare stage: as the machine boots (default, what a "
        "user without cqkd-stack has) or as `cqkd-stack setup` leaves them",
    )
    parser.add_argument(
        "--bare-lonely",
        type=int,
        default=0,
        metavar="N",
        help="make N of the bare stage's workers unable to join (their bootstrap resolves "
        "to an address where nothing answers): a small run then takes the path of a "
        "baseline that never fully joins, and is measured at all-running and at the timeout",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=60.0,
        help="how long each stage's CPU at rest is read, by process group (0: not read)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw tasks running and joined against time, each stage, each size "
        "(needs the extra `bench`: matplotlib)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="deploy nothing: print the tables (and --plot) of saved runs, their sizes "
        "together in one growth table",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser_ = parser()
    args = parser_.parse_args(argv)
    if args.from_json:
        return args
    if not 0 <= args.bare_lonely <= args.workers[0]:
        parser_.error("--bare-lonely must be between 0 and the smallest of --workers")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401  (fail now, not after an hour of deploys)
        except ImportError:
            parser_.error("--plot needs matplotlib: pip install -e '.[bench]'")
    return args


def run_size(
    client: docker.DockerClient, args: argparse.Namespace, workers: int, results: dict[str, Any]
) -> None:
    """The three stages at one size, into ``results``; whatever they leave is removed."""
    results.update(workers=workers, timeout=args.timeout, bare_lonely=args.bare_lonely)
    results["stages"] = {}
    stacks = Stacks(client)
    try:
        if not args.skip_floor:
            run_stage(
                "floor",
                results,
                lambda out: stage_floor(client, stacks, workers, args.timeout, out),
            )
        # The project before the bare baseline: a plain `docker stack rm` of
        # 1000 tasks has taken the engine down here, and must not cost the
        # project's figures.
        if not args.skip_project:
            run_stage(
                "project",
                results,
                lambda out: stage_project(stacks, workers, args.timeout, out),
            )
        if not args.skip_bare:
            run_stage(
                "bare",
                results,
                lambda out: stage_bare(
                    client,
                    stacks,
                    workers,
                    args.timeout,
                    not args.bare_without_init,
                    args.bare_sysctls == "tuned",
                    args.bare_lonely,
                    out,
                ),
            )
    except KeyboardInterrupt as exc:
        # Each stage has removed its own stack on the way out; clean() below
        # takes whatever is left, and the figures taken so far are printed.
        results["interrupted"] = str(exc) or "Ctrl-C"
        log(f"interrupted ({results['interrupted']}): cleaning up")
    finally:
        results["left_behind"] = stacks.clean(teardown_budget(args.timeout))
        results["targets"] = judge(results)


def report(runs: list[dict[str, Any]]) -> str:
    """Each size's table, then (several sizes) the growth table."""
    if len(runs) == 1:
        return table(runs[0])
    parts = [f"=== {run.get('workers')} workers ===\n{table(run)}\n" for run in runs]
    parts.append("=== growth: each figure at each size ===\n" + growth_table(runs))
    return "\n".join(parts)


def exit_code(runs: list[dict[str, Any]]) -> int:
    if any(run.get("interrupted") for run in runs):
        return 130
    if any(run.get("left_behind") for run in runs):
        return 3
    passed = all(v["pass"] is not False for run in runs for v in run.get("targets", []))
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        runs = load_runs(args.from_json)
        print(report(runs))
        if args.plot is not None:
            plot_timelines(runs, args.plot)
            log(f"picture written to {args.plot}")
        return 0
    Measure.idle_seconds = args.idle_seconds

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    client = docker.from_env(timeout=300)
    try:
        client.images.get(host_base_image())
    except docker.errors.ImageNotFound:
        print(f"{host_base_image()} is missing: run `cqkd-stack setup` first", file=sys.stderr)
        return 2
    version = client.version()
    common: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "host": {
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "kernel": platform.release(),
        },
        "engine": {"version": version.get("Version"), "api": version.get("ApiVersion")},
    }
    runs: list[dict[str, Any]] = []
    for workers in args.workers:
        log(f"=== {workers} workers ===")
        results = dict(common)
        runs.append(results)
        run_size(client, args, workers, results)
        # One size's figures are on disk before the next size starts.
        if args.json is not None:
            doc = runs[0] if len(args.workers) == 1 else {**common, "sizes": runs}
            write_atomically(args.json, json.dumps(doc, indent=2) + "\n")
            log(f"figures written to {args.json}")
        if results.get("interrupted"):
            break
    print(report(runs))
    if args.plot is not None:
        plot_timelines(runs, args.plot)
        log(f"picture written to {args.plot}")
    return exit_code(runs)


if __name__ == "__main__":
    sys.exit(main())
