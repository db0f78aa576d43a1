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
before the deploy and once all tasks are up, divided by the task count: it
includes the containers' shims, network namespaces and the engine's own
growth, not just the node processes. Progress goes to stderr, the table to
stdout, the figures to ``--json FILE``.

    python benchmarks/scale.py --workers 1000 --json scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

import docker

from cqkd_stack.core.files import write_atomically
from cqkd_stack.host import sysctls
from cqkd_stack.host.images import host_base_image
from cqkd_stack.live.inspection import STACK_LABEL, stack_filter, stack_leftovers
from cqkd_stack.live.teardown import stack_rm

NAIVE_DIR = Path(__file__).resolve().parent / "naive"
NAIVE_IMAGE = "cqkd-naive-node:bench"
RECIPE_LABEL = "cqkd.bench.recipe"
RECIPE_FILES = ("Dockerfile", "naive_node.py", "requirements.txt")
# Overlay subnets of the floor and bare stacks; the project picks its own
# from 10.213.0.0/16, so they never collide with it.
SUBNET_POOL = ipaddress.IPv4Network("10.232.0.0/16")
POLL_SECONDS = 1.0
PROGRESS_EVERY = 10.0
MEMORY_READINGS = 3
MEMORY_GAP = 3.0
REPEAT = 5
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
    client: docker.DockerClient, stack: str, total: int, deadline: float, what: str
) -> None:
    """Until ``total`` slots of the stack run: one task list call per poll round."""
    flt = {**stack_filter(stack), "desired-state": "running"}
    progress = Throttled(what)
    while True:
        tasks = client.api.tasks(filters=flt)
        running = len(
            {
                (t["ServiceID"], t.get("Slot"))
                for t in tasks
                if t.get("Status", {}).get("State") == "running"
            }
        )
        progress(running, total, f"{running}/{total} running")
        if running >= total:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{stack}: {running}/{total} tasks running at the deadline")
        time.sleep(POLL_SECONDS)


def user_teardown(client: docker.DockerClient, stack: str, timeout: float) -> float:
    """``docker stack rm`` as a user runs it, until containers and network are gone.

    The network's removal fails while tasks still hold it; a user runs
    ``docker stack rm`` again once the containers are gone, and so do we.
    """
    start = time.monotonic()
    subprocess.run(["docker", "stack", "rm", stack], capture_output=True, text=True)
    last_rm = time.monotonic()
    progress = Throttled(f"docker stack rm {stack}")
    while True:
        left = stack_leftovers(client, stack)
        if not any(left.values()):
            return time.monotonic() - start
        progress(0, 0, f"{len(left['containers'])} containers, {len(left['networks'])} networks")
        if not left["containers"] and time.monotonic() - last_rm >= 2 * POLL_SECONDS:
            subprocess.run(["docker", "stack", "rm", stack], capture_output=True, text=True)
            last_rm = time.monotonic()
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{stack}: still there after {timeout:.0f} s: {left}")
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

    def clean(self, timeout: float) -> None:
        """Remove what is left, large stacks in steps (1000 at once can kill containerd)."""
        for stack in list(self.live):
            try:
                if any(stack_leftovers(self.client, stack).values()):
                    log(f"cleaning up stack {stack}")
                    stack_rm(self.client, stack, timeout, Throttled(f"cleaning {stack}"))
                self.gone(stack)
            except Exception as exc:
                log(f"could not remove stack {stack}: {exc}; remove it by hand")


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


def cqkd(*args: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``python -m cqkd_stack ARGS`` as an operator runs it: wall time and result."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return time.perf_counter() - start, done


def cqkd_json(*args: str, timeout: float = 600, ok_codes: tuple[int, ...] = (0,)) -> Any:
    wall, done = cqkd(*args, timeout=timeout)
    if done.returncode not in ok_codes:
        raise RuntimeError(
            f"cqkd-stack {' '.join(args)} exited {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )
    return wall, json.loads(done.stdout)


def probe_figures(stack: str) -> dict[str, Any]:
    """``probe`` five times: wall time, its own seconds, answered/total (median run)."""
    walls, seconds, answered, total = [], [], [], 0
    for _ in range(REPEAT):
        # Exit 1 means some task was silent: a figure, not a failure.
        wall, out = cqkd_json("probe", "--stack", stack, "--format", "json", ok_codes=(0, 1))
        walls.append(wall)
        seconds.append(out["seconds"])
        answered.append(out["answered"])
        total = out["total"]
    return {
        "probe_wall_seconds": statistics.median(walls),
        "probe_seconds": statistics.median(seconds),
        "probe_answered_min": min(answered),
        "probe_total": total,
    }


def ports_seconds(stack: str) -> float:
    walls = []
    for _ in range(REPEAT):
        wall, _ = cqkd_json("ports", "--stack", stack, "--format", "json", ok_codes=(0, 1))
        walls.append(wall)
    return statistics.median(walls)


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
    try:
        docker_stack_deploy(text, stack)
        wait_running(client, stack, workers, start + timeout, "floor")
        out["running_seconds"] = time.monotonic() - start
        log(f"floor: all {workers} running after {out['running_seconds']:.1f} s")
        out["memory"] = memory_figures(before, memory(), workers)
    finally:
        # The same stepped removal as the project's teardown: the engine's own
        # ceiling for that method (a plain `docker stack rm` of 1000 sleepers
        # once took containerd and dockerd down here).
        log(f"floor: stepped removal of {stack} (cqkd_stack.live.teardown.stack_rm)")
        removed = stack_rm(client, stack, timeout, Throttled("floor teardown"))
        out["teardown_seconds"] = removed.seconds
        stacks.gone(stack)
        log(f"floor: gone after {out['teardown_seconds']:.1f} s")


def stage_bare(
    client: docker.DockerClient,
    stacks: Stacks,
    workers: int,
    timeout: float,
    init: bool,
    as_setup_leaves_it: bool,
    out: dict,
) -> None:
    if as_setup_leaves_it:
        tuned(out)
        _bare(client, stacks, workers, timeout, init, out)
    else:
        with untuned(out):
            _bare(client, stacks, workers, timeout, init, out)


def _bare(
    client: docker.DockerClient,
    stacks: Stacks,
    workers: int,
    timeout: float,
    init: bool,
    out: dict,
) -> None:
    out["image"] = f"{NAIVE_IMAGE} ({ensure_naive_image(client)})"
    out["other_stacks"] = check_room(client, workers + 1)
    stack = stacks.new("bare")
    subnet = free_subnet(client, workers + 1)
    tasks = workers + 1
    out.update(stack=stack, subnet=subnet, tasks=tasks, init=init)
    text = Template((NAIVE_DIR / "naive.stack.yml").read_text()).substitute(
        WORKERS=workers, SUBNET=subnet, INIT="true" if init else "false"
    )
    before = memory()
    log(f"bare: deploying bootstrap + {workers} naive workers as {stack} ({subnet})")
    start = time.monotonic()
    try:
        docker_stack_deploy(text, stack)
        wait_running(client, stack, tasks, start + timeout, "bare")
        out["running_seconds"] = time.monotonic() - start
        log(f"bare: all {tasks} running after {out['running_seconds']:.1f} s")
        try:
            from cqkd_stack.live.waits import wait_until_ready
        except ImportError:
            raise RuntimeError(
                "cqkd_stack.live.waits.wait_until_ready is missing (issue 8, item 1): "
                "cannot measure all-joined the same way as for the project"
            ) from None
        remaining = max(start + timeout - time.monotonic(), 1.0)
        ready = wait_until_ready(client, stack, remaining, progress=Throttled("bare joined"))
        out["joined_seconds"] = time.monotonic() - start
        out["ready_total"] = ready.total
        log(f"bare: all {ready.total} joined after {out['joined_seconds']:.1f} s")
        out["memory"] = memory_figures(before, memory(), tasks)
        out.update(probe_figures(stack))
        out["ports_seconds"] = ports_seconds(stack)
    finally:
        log(f"bare: docker stack rm {stack}")
        out["teardown_seconds"] = user_teardown(client, stack, timeout)
        stacks.gone(stack)
        log(f"bare: gone after {out['teardown_seconds']:.1f} s")


def stage_project(stacks: Stacks, workers: int, timeout: float, out: dict) -> None:
    out["other_stacks"] = check_room(stacks.client, workers + 3)
    tuned(out)
    stack = stacks.new("project")
    out["stack"] = stack
    before = memory()
    log(f"project: python -m cqkd_stack deploy --replicas {workers} --stack {stack}")
    try:
        wall, summary = cqkd_json(
            "deploy", "--replicas", str(workers), "--stack", stack,
            "--format", "json", "--timeout", str(int(timeout)),
            timeout=timeout + 600,
        )  # fmt: skip
        tasks = summary.get("tasks")
        tasks = len(tasks) if isinstance(tasks, list) else int(tasks)
        out.update(
            deploy_wall_seconds=wall,
            running_seconds=summary.get("running_seconds"),
            joined_seconds=summary.get("joined_seconds"),
            wait_seconds=summary.get("seconds"),
            tasks=tasks,
        )
        log(f"project: deploy done in {wall:.1f} s ({tasks} tasks)")
        # Divided by every task: the workers plus bootstrap, Alice and Bob.
        out["memory"] = memory_figures(before, memory(), tasks)
        out.update(probe_figures(stack))
        trips, walls = [], []
        for _ in range(REPEAT):
            wall, check = cqkd_json("dht-check", "--stack", stack, "--format", "json")
            walls.append(wall)
            trips.append(check["round_trip_seconds"])
        out["dht_check_seconds"] = statistics.median(trips)
        out["dht_check_wall_seconds"] = statistics.median(walls)
        out["ports_seconds"] = ports_seconds(stack)
    finally:
        if any(stack_leftovers(stacks.client, stack).values()):
            log(f"project: python -m cqkd_stack teardown --stack {stack}")
            wall, done = cqkd(
                "teardown", "--stack", stack, "--timeout", str(int(timeout)),
                timeout=timeout + 600,
            )  # fmt: skip
            if done.returncode == 0:
                out["teardown_seconds"] = wall
                stacks.gone(stack)
                log(f"project: teardown done in {wall:.1f} s")
            else:
                out["teardown_error"] = done.stderr.strip()[-2000:]
            out["engine_alive_after_teardown"] = engine_alive()


def run_stage(name: str, results: dict, body: Callable[[dict], None]) -> None:
    """One stage; a failure is recorded and the next stage still runs."""
    out = results["stages"].setdefault(name, {})
    try:
        body(out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED: {out['error']}")


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
        ("dht-check round trip, s", None, None, project.get("dht_check_seconds")),
        ("ports, wall s (median 5)", None, bare.get("ports_seconds"),
         project.get("ports_seconds")),
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
    out.append("memory: free -b 'used' growth (median of 3) / tasks; the project's divisor")
    out.append("includes bootstrap, alice and bob, the bare one its bootstrap; the engine's own")
    out.append("growth is included. times from the command's start (bare: docker stack deploy).")
    for name in ("floor", "bare", "project"):
        settings = results["stages"].get(name, {}).get("sysctls")
        if settings:
            shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings.items())
            out.append(f"kernel settings, {name}: {shown}")
    out.append("")
    out.append("targets:")
    for verdict in results["targets"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[verdict["pass"]]
        value = _fmt(verdict["value"])
        limit = _fmt(verdict["limit"])
        out.append(f"  [{mark}] {verdict['what']}: {value} (limit {limit})")
    for name, stage in results["stages"].items():
        if "error" in stage:
            out.append(f"{name}: FAILED: {stage['error']}")
        if "teardown_error" in stage:
            out.append(f"{name}: teardown failed: {stage['teardown_error']}")
    return "\n".join(out)


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


# --- main -----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
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
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    signal.signal(signal.SIGTERM, _interrupt)
    client = docker.from_env(timeout=300)
    try:
        client.images.get(host_base_image())
    except docker.errors.ImageNotFound:
        print(f"{host_base_image()} is missing: run `cqkd-stack setup` first", file=sys.stderr)
        return 2
    version = client.version()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "workers": args.workers,
        "timeout": args.timeout,
        "host": {
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "kernel": platform.release(),
        },
        "engine": {"version": version.get("Version"), "api": version.get("ApiVersion")},
        "stages": {},
    }
    stacks = Stacks(client)
    try:
        if not args.skip_floor:
            run_stage(
                "floor",
                results,
                lambda out: stage_floor(client, stacks, args.workers, args.timeout, out),
            )
        # The project before the bare baseline: a plain `docker stack rm` of
        # 1000 tasks has taken the engine down here, and must not cost the
        # project's figures.
        if not args.skip_project:
            run_stage(
                "project",
                results,
                lambda out: stage_project(stacks, args.workers, args.timeout, out),
            )
        if not args.skip_bare:
            run_stage(
                "bare",
                results,
                lambda out: stage_bare(
                    client,
                    stacks,
                    args.workers,
                    args.timeout,
                    not args.bare_without_init,
                    args.bare_sysctls == "tuned",
                    out,
                ),
            )
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        results["interrupted"] = True
        raise
    finally:
        stacks.clean(args.timeout)
        results["targets"] = judge(results)
        if args.json is not None:
            write_atomically(args.json, json.dumps(results, indent=2) + "\n")
            log(f"figures written to {args.json}")
    print(table(results))
    return 0 if all(v["pass"] is not False for v in results["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
