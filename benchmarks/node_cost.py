"""What one node costs to start and to keep: this tree against an older one, in one run.

The node runs in 1000+ containers, so a change to how its code is laid out
(issue 19 split ``node/daemon.py`` by job) must cost no start-up time and no
memory. Every measure takes both trees in turn in the same loop, alternating
which goes first, so a noisy machine shifts both alike; the table gives
medians and the ratio this tree / baseline.

* start-up: ``python -m cqkd_stack.node`` as a bootstrap node, from spawn to
  the "joined" line it prints once it listens and has written its health
  file (what readiness waits for); and a worker, from spawn to its joined
  line against a running bootstrap node (one RPC round trip more).
* processes: ``free -b`` "used" (median of 3 readings) before and after
  starting N plain nodes on loopback (one bootstrap, N-1 workers), once all
  have joined, divided by N; and, for the record, their Pss, RSS and private
  bytes (``/proc/PID/smaps_rollup``): less noisy than ``free`` on a shared
  machine, and the private part is what each node adds.
* swarm (``--swarm``; it uses the engine, so run it under the Docker lock):
  the node image built locally from each tree (``host.images``), deployed as
  a stack of N workers (plus bootstrap, Alice and Bob) with this tree's
  ``deploy --image``, ``free -b`` "used" before and once all have joined,
  divided by the task count, then torn down before the next. This includes
  each container's shim, namespaces and the engine's growth, as
  ``benchmarks/scale.py`` does; each container's own cgroup figures
  (anonymous and all it is charged, mean per task) are read at the same
  moment, since other work on a shared machine moves ``free`` more than a
  node's difference.

Each tree runs its own code: the baseline is exported with ``git archive``,
each tree is put first on ``PYTHONPATH``, and the nodes start in a folder
outside both (``-m`` puts the working directory first on ``sys.path``).

    python benchmarks/node_cost.py --baseline-ref d1e4711 [--runs 21] [--nodes 100]
        [--rounds 3] [--swarm] [--json FILE]

``--runs 0 --rounds 0 --swarm`` measures the swarm alone, so the Docker lock
is held only for what uses the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from scale import used_bytes
from startup import export

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MEMORY_READINGS = 3
MEMORY_GAP = 1.0
# After the last node joined: its own-id lookup and the first pings settle.
SETTLE = 3.0
JOIN_TIMEOUT = 60.0


# --- trees ------------------------------------------------------------------------


def free_udp_ports(count: int) -> list[int]:
    """Ports the kernel hands out now on loopback (held together so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --- plain node processes -----------------------------------------------------------


class Node:
    """One ``python -m cqkd_stack.node`` of a tree, its files in ``folder``."""

    def __init__(
        self,
        tree: Path,
        folder: Path,
        name: str,
        port: int,
        role: str,
        bootstrap: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(tree),
            "CQKD_ROLE": role,
            "DHT_PORT": str(port),
            "BIND_HOST": "127.0.0.1",
            "BOOTSTRAP_NODES": bootstrap,
            "CQKD_HEALTH_FILE": str(folder / f"{name}.health"),
            "CQKD_CONTROL_SOCKET": str(folder / f"{name}.sock"),
            **(extra or {}),
        }
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cqkd_stack.node"],
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def ready(self) -> float:
        """Seconds from spawn to the joined line (the node prints nothing else)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"cqkd-node: joined"):
            raise RuntimeError(f"node exited {self.proc.poll()} before joining: {line!r}")
        return time.perf_counter() - self.started

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def startup_once(tree: Path, folder: Path) -> tuple[float, float]:
    """(bootstrap ready, worker joined) seconds, one node of each."""
    boot_port, worker_port = free_udp_ports(2)
    boot = Node(tree, folder, "boot", boot_port, "bootstrap")
    try:
        boot_seconds = boot.ready()
        worker = Node(tree, folder, "w", worker_port, "worker", f"127.0.0.1:{boot_port}")
        try:
            return boot_seconds, worker.ready()
        finally:
            worker.stop()
    finally:
        boot.stop()


# Where host memory goes, from /proc/meminfo: what the containers' processes
# hold (AnonPages) and what the kernel holds for them, to tell a node's cost
# from other work on the machine when ``free`` moves.
MEMINFO = ("AnonPages", "Shmem", "SUnreclaim", "PageTables", "KernelStack")


def meminfo() -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in MEMINFO:
            found[key] = int(rest.split()[0]) * 1024
    return found


def used() -> int:
    readings = []
    for i in range(MEMORY_READINGS):
        if i:
            time.sleep(MEMORY_GAP)
        readings.append(used_bytes())
    return int(statistics.median(readings))


def rollup(pid: int) -> dict[str, int]:
    """Pss, Rss and private bytes of a process (``/proc/PID/smaps_rollup``)."""
    found = {"Private": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            found[key] = int(rest.split()[0]) * 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            found["Private"] += int(rest.split()[0]) * 1024
    return found


def processes_once(tree: Path, folder: Path, count: int) -> dict[str, float]:
    """``count`` nodes on loopback: host memory growth and Pss/Rss, per node."""
    before = used()
    ports = free_udp_ports(count)
    nodes = [Node(tree, folder, "boot", ports[0], "bootstrap")]
    try:
        nodes[0].ready()
        join = f"127.0.0.1:{ports[0]}"
        nodes += [
            Node(tree, folder, f"w{i}", port, "worker", join) for i, port in enumerate(ports[1:])
        ]
        joined = [node.ready() for node in nodes[1:]]
        time.sleep(SETTLE)
        after = used()
        rolls = [rollup(node.proc.pid) for node in nodes]
    finally:
        for node in nodes:
            node.stop()
    return {
        "free_mib_per_node": (after - before) / count / MIB,
        "pss_mib_per_node": sum(r["Pss"] for r in rolls) / count / MIB,
        "rss_mib_per_node": sum(r["Rss"] for r in rolls) / count / MIB,
        "private_mib_per_node": sum(r["Private"] for r in rolls) / count / MIB,
        "slowest_join_seconds": max(joined),
    }


# --- swarm ----------------------------------------------------------------------------


def build_image(tree: Path, label: str, work: Path) -> str:
    """The node image of ``tree``, built locally (no registry here); its tag."""
    import docker

    from cqkd_stack.host.images import ensure_node_image, host_base_image

    client = docker.from_env(timeout=600)
    base = client.images.get(host_base_image())
    tag = f"cqkd-bench-{label}:node"
    ensure_node_image(client, base, project_dir=tree, wheelhouse=work / f"wheels-{label}", tag=tag)
    return tag


def cqkd(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """This tree's ``python -m cqkd_stack`` (the same CLI deploys both images)."""
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def container_memory(stack: str) -> list[tuple[int, int]]:
    """(anonymous, charged) bytes of each running container of ``stack``, from its cgroup.

    A container's own figure, not the host's: on a machine other work shares,
    ``free`` moves by more than the difference being measured. Anonymous is
    what the container's processes hold privately (``rss`` in cgroup v1,
    ``anon`` in v2); charged adds the page cache and kernel memory billed to it.
    """
    import docker

    client = docker.from_env()
    found = []
    flt = {"label": f"com.docker.stack.namespace={stack}", "status": "running"}
    for container in client.containers.list(filters=flt):
        pid = container.attrs["State"]["Pid"]
        with contextlib.suppress(OSError, ValueError, KeyError):
            found.append(cgroup_memory(Path(f"/proc/{pid}/cgroup").read_text()))
    return found


def cgroup_memory(proc_cgroup: str) -> tuple[int, int]:
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            folder = Path("/sys/fs/cgroup/memory" + path)
            anon_key, usage = "rss", folder / "memory.usage_in_bytes"
            break
    else:
        path = proc_cgroup.splitlines()[0].split(":", 2)[2]  # cgroup v2: "0::/path"
        folder = Path("/sys/fs/cgroup" + path)
        anon_key, usage = "anon", folder / "memory.current"
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return int(stat[anon_key]), int(usage.read_text())


def swarm_once(image: str, workers: int, timeout: int) -> dict[str, float]:
    """Deploy ``workers`` workers of ``image``, read host memory once joined, tear down."""
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    before, kernel_before = used(), meminfo()
    start = time.perf_counter()
    try:
        done = cqkd(
            "deploy", "--replicas", str(workers), "--stack", stack, "--image", image,
            "--format", "json", "--timeout", str(timeout),
            timeout=timeout + 300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"deploy of {stack} failed:\n{done.stderr.strip()[-2000:]}")
        wall = time.perf_counter() - start
        summary = json.loads(done.stdout)
        tasks = summary.get("tasks")
        tasks = len(tasks) if isinstance(tasks, list) else int(tasks)
        time.sleep(SETTLE)
        after, kernel_after = used(), meminfo()
        cgroups = container_memory(stack)
    finally:
        gone = cqkd("teardown", "--stack", stack, timeout=timeout + 300)
        if gone.returncode != 0:
            print(f"teardown of {stack} failed:\n{gone.stderr.strip()}", file=sys.stderr)
    return {
        "free_mib_per_task": (after - before) / tasks / MIB,
        "anon_mib_per_task": statistics.mean(c[0] for c in cgroups) / MIB,
        "charged_mib_per_task": statistics.mean(c[1] for c in cgroups) / MIB,
        **{
            f"meminfo_{key}_mib_per_task": (kernel_after[key] - kernel_before[key]) / tasks / MIB
            for key in MEMINFO
        },
        "tasks": tasks,
        "deploy_seconds": wall,
        "joined_seconds": float(summary.get("joined_seconds") or 0.0),
    }


# --- output -----------------------------------------------------------------------------


def row(name: str, now: list[float], then: list[float], unit: str, scale: float = 1.0) -> str:
    a, b = statistics.median(now) * scale, statistics.median(then) * scale
    ratio = f"{a / b:7.3f}x" if b > 0 else "      -"
    return f"{name:34} {a:9.2f}{unit:3} {b:9.2f}{unit:3} {ratio}  (n={len(now)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", required=True, help="the git revision to compare with")
    parser.add_argument("--runs", type=int, default=21, help="start-up runs per tree")
    parser.add_argument("--nodes", type=int, default=100, help="nodes (or workers) per round")
    parser.add_argument("--rounds", type=int, default=3, help="process memory rounds per tree")
    parser.add_argument("--swarm", action="store_true", help="also deploy each tree's image")
    parser.add_argument("--swarm-rounds", type=int, default=1)
    parser.add_argument("--swarm-timeout", type=int, default=300)
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cqkd-node-cost-"))
    trees = {"this": REPO, "base": export(args.baseline_ref, work)}
    folder = work / "run"
    folder.mkdir(mode=0o700)
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in trees}

    def add(label: str, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            samples[label].setdefault(key, []).append(value)

    def order(i: int) -> list[str]:
        return list(trees) if i % 2 == 0 else list(reversed(trees))

    try:
        for tree in trees.values():
            startup_once(tree, folder)  # compiles each tree's .pyc: warm, as in the image
        for i in range(args.runs):
            for label in order(i):
                boot, worker = startup_once(trees[label], folder)
                add(label, {"bootstrap_ready_seconds": boot, "worker_joined_seconds": worker})
        for i in range(args.rounds):
            for label in order(i):
                add(label, processes_once(trees[label], folder, args.nodes))
                print(f"processes round {i + 1} {label}: done", file=sys.stderr)
        if args.swarm:
            images = {label: build_image(tree, label, work) for label, tree in trees.items()}
            for i in range(args.swarm_rounds):
                for label in order(i):
                    add(label, swarm_once(images[label], args.nodes, args.swarm_timeout))
                    print(f"swarm round {i + 1} {label}: done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    this, base = samples["this"], samples["base"]
    ref = args.baseline_ref
    print(f"node cost: this tree vs {ref}; medians; {args.nodes} nodes per memory round")
    print(f"{'measure':34} {'this tree':>12} {'@' + ref:>12} {'ratio':>8}")
    for key, name, unit, scale in (
        ("bootstrap_ready_seconds", "bootstrap: spawn to ready", "ms", 1000),
        ("worker_joined_seconds", "worker: spawn to joined", "ms", 1000),
        ("free_mib_per_node", "processes: free used / node", "MiB", 1),
        ("pss_mib_per_node", "processes: Pss / node", "MiB", 1),
        ("rss_mib_per_node", "processes: Rss / node", "MiB", 1),
        ("private_mib_per_node", "processes: private / node", "MiB", 1),
        ("free_mib_per_task", "swarm: free used / task", "MiB", 1),
        ("anon_mib_per_task", "swarm: cgroup anon / task", "MiB", 1),
        ("charged_mib_per_task", "swarm: cgroup charged / task", "MiB", 1),
        ("joined_seconds", "swarm: deploy to all joined", "s", 1),
        *((f"meminfo_{k}_mib_per_task", f"swarm: meminfo {k} / task", "MiB", 1) for k in MEMINFO),
    ):
        if key in this:  # --runs 0 / --rounds 0 leave a measure out
            print(row(name, this[key], base[key], unit, scale))
    if args.json:
        args.json.write_text(json.dumps({"baseline_ref": ref, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
