"""Past one range on a 3-node cluster: N real DHT workers, beside a bare stack (issue 21).

One run, on a fresh Docker-in-Docker swarm of this machine (``cluster up``):

1. the memory arithmetic: host memory before and after the cluster is up,
   and the per-worker figures measured below, give how many workers fit;
   a stage that would not fit (no swap here: an out-of-memory kill takes
   the engine with it) is refused before it starts, and says so;
2. bare: the naive node of ``benchmarks/naive/`` with a plain ``docker stack
   deploy`` on the manager (its image copied to every node by hand first),
   timed to all running and to all joined (the project's own readiness
   wait, so both are judged alike), host memory per worker, torn down;
3. project: ``cqkd-stack --host <manager> deploy --replicas N --pace P --verify``
   (worker groups past 1000; ``--pace``: at most P tasks a node starting at
   once, since all at once drowns this 2-core host past ~1000 tasks on 3
   nodes), timed the same way; host memory per worker;
   ``probe``, ``crawl`` (one component, every task known), ``dht-check``
   (Alice and Bob's nodes named), ``ports`` wall times; then a node lost
   under that load (tasks moved, seconds until every slot answers again,
   the port map sampled throughout for a port held twice), and Alice's
   value read by Bob after; then ``teardown``.

Exit status 3 when the cluster could not be removed (``cluster_left`` in
the JSON names why, and the command that removes it); a manager too busy
to list tasks during the node loss is asked again, not a traceback.

    python benchmarks/cluster_scale.py --workers 1500 --pace 24 --heartbeat 60 --json cs.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from node_loss import bare_stack, lose_node
from scale import (
    MIB,
    Throttled,
    cqkd,
    log,
    memory,
    memory_figures,
    user_teardown,
    wait_running,
)

from cqkd_stack import DEFAULT_NODE_IMAGE
from cqkd_stack.core.files import write_atomically
from cqkd_stack.host.cluster import Cluster, cluster_down, cluster_up
from cqkd_stack.live import dhtcheck
from cqkd_stack.live.inspection import port_map
from cqkd_stack.live.waits import wait_until_ready

CLUSTER = "cqkd-bench-scale"
NODES = 3
SUBNET = "10.214.0.0/20"
GIB = 1024 * MIB
# Kept free whatever the arithmetic says: the engine, the benchmark, page cache.
MARGIN = 2 * GIB
# Host memory a task, measured on this machine (docs/benchmarks.md, 1000
# workers on one node): what the arithmetic starts from before a stage has
# measured its own. The naive node imports asyncio and kademlia.
NAIVE_MIB = 14.9
PROJECT_MIB = 9.0
TASKS_EXTRA = 3  # the bootstrap, Alice and Bob (the bare stack: its bootstrap)


def available() -> int:
    """``free -b`` "available": what the next stage may take."""
    out = subprocess.run(["free", "-b"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("Mem:"))
    return int(line.split()[6])


def fits(tasks: int, mib_per_task: float) -> tuple[bool, str]:
    """Whether ``tasks`` of ``mib_per_task`` fit in what is available, keeping MARGIN free."""
    need = tasks * mib_per_task * MIB
    have = available() - MARGIN
    said = (
        f"{tasks} tasks x {mib_per_task:.1f} MiB = {need / GIB:.1f} GiB; "
        f"available {(have + MARGIN) / GIB:.1f} GiB less {MARGIN / GIB:.0f} GiB kept free"
    )
    return need <= have, said


def bare(host: docker.DockerClient, cluster: Cluster, workers: int) -> dict[str, Any]:
    manager, stack, path, env = bare_stack(host, cluster, workers)
    before = memory()
    start = time.monotonic()
    subprocess.run(
        ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    out: dict[str, Any] = {"tasks": workers + 1}
    try:
        wait_running(manager, stack, workers + 1, start + 1800, "bare running")
        out["running_seconds"] = round(time.monotonic() - start, 1)
        waited = wait_until_ready(manager, stack, 1800, progress=Throttled("bare joined"))
        out["joined_seconds"] = round(time.monotonic() - start, 1)
        out["joined"] = waited.ready
        out["memory"] = memory_figures(before, memory(), workers + 1)
    except TimeoutError as exc:
        out["error"] = str(exc)
    finally:
        out["teardown_seconds"] = round(user_teardown(manager, stack, 1800, env), 1)
        path.unlink(missing_ok=True)
    return out


def timed_json(*args: str, timeout: float = 900) -> tuple[float, Any, int]:
    wall, done = cqkd(*args, timeout=timeout)
    try:
        body = json.loads(done.stdout)
    except json.JSONDecodeError:
        body = {"stderr": done.stderr[-2000:]}
    return round(wall, 2), body, done.returncode


def crawl_figures(crawl: dict[str, Any]) -> dict[str, Any]:
    """What a crawl's JSON says of the network: components, unknown tasks, tables, lookups."""
    keys = ("components", "unknown", "ok", "seconds", "incomplete_tables", "table_median")
    lookups = crawl.get("lookups") or {}
    return {k: crawl.get(k) for k in keys} | {
        "lookups": {k: lookups.get(k) for k in ("success_rate", "keys_agreeing", "hops_median")}
    }


def project(
    host: docker.DockerClient,
    cluster: Cluster,
    workers: int,
    pace: int = 0,
    out: dict[str, Any] | None = None,
    save: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The project's stage; ``out`` is filled as figures come and ``save`` called after each.

    So a run the host cannot finish (a node lost under 1500 tasks restarts
    hundreds at once) still leaves every figure taken before it on disk.
    """
    manager = docker.DockerClient(base_url=cluster.manager_url, timeout=300)
    stack = f"proj_{uuid.uuid4().hex[:6]}"
    on = ["--host", cluster.manager_url]
    before = memory()
    out = {} if out is None else out
    out["tasks"] = workers + TASKS_EXTRA
    paced = ["--pace", str(pace)] if pace else []
    wall, deployed, code = timed_json(
        *on, "deploy", "-s", stack, "-r", str(workers), *paced, "--verify", "-f", "json",
        "-t", "1800", timeout=2400,
    )  # fmt: skip
    out["deploy"] = {"wall": wall, "exit": code, **{
        k: deployed.get(k) for k in ("seconds", "running_seconds", "stderr") if k in deployed
    }}  # fmt: skip
    out["deploy_crawl"] = crawl_figures(deployed.get("crawl") or {})
    save()
    if code != 0 and not deployed.get("waited"):
        return out  # not deployed; a deploy whose crawl failed is measured on
    try:
        out["memory"] = memory_figures(before, memory(), workers + TASKS_EXTRA)
        for name, args in (
            ("probe", ("probe", "-s", stack, "-f", "json")),
            ("crawl", ("crawl", "-s", stack, "-f", "json")),
            ("dht_check", ("dht-check", "-s", stack, "-f", "json")),
            ("ports", ("ports", "-s", stack, "-f", "json")),
        ):
            wall, body, code = timed_json(*on, *args)
            out[name] = {"wall": wall, "exit": code}
            if name == "probe":
                out[name] |= {k: body.get(k) for k in ("joined", "total")}
            if name == "crawl":
                out[name] |= crawl_figures(body)
            if name == "ports":
                out[name] |= {"healthy": body.get("healthy"), "dup": body.get("duplicate_ports")}
            save()
        rows = port_map(manager, stack).tasks
        out["alice_bob_nodes"] = sorted(r.node for r in rows if r.role == "special")
        key, value = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        dhtcheck.store_value(manager, stack, "alice", key, value)
        out["node_loss"] = {"started": time.strftime("%H:%M:%S")}
        save()
        out["node_loss"] = lose_node(host, cluster, manager, stack)
        out["value_survived"] = dhtcheck.read_value(manager, stack, "bob", key) == value
        save()
    finally:
        wall, _, code = timed_json(*on, "teardown", "-s", stack, "-t", "1800", timeout=2400)
        out["teardown"] = {"wall": wall, "exit": code}
        save()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1500)
    parser.add_argument("--skip-bare", action="store_true", help="the project stage only")
    parser.add_argument(
        "--pace", type=int, default=0, help="deploy --pace for the project (0: all at once)"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=0, help="the swarm's dispatcher heartbeat, s (0: 5)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    host = docker.from_env(timeout=600)
    results: dict[str, Any] = {
        "workers": args.workers, "nodes": NODES, "pace": args.pace, "heartbeat": args.heartbeat
    }  # fmt: skip
    cluster_down(host, CLUSTER)
    bare_at = memory()["used"]
    log(f"{NODES}-node cluster up")
    cluster = cluster_up(host, NODES, CLUSTER, DEFAULT_NODE_IMAGE)
    if args.heartbeat:
        # Past ~1400 tasks the starved manager missed the workers' 5 s
        # heartbeats, called a node down and moved its ~500 tasks at once:
        # the host drowned (seen 2026-12-03). Node loss is then noticed later.
        manager = docker.DockerClient(base_url=cluster.manager_url, timeout=60)
        manager.swarm.update(dispatcher_heartbeat_period=int(args.heartbeat * 1e9))
        manager.close()

    def save() -> None:
        if args.json:
            write_atomically(args.json, json.dumps(results, indent=2) + "\n")

    try:
        results["cluster_mib"] = round((memory()["used"] - bare_at) / MIB)
        stages = [("project", project, PROJECT_MIB, TASKS_EXTRA)]
        if not args.skip_bare:
            stages.insert(0, ("bare", bare, NAIVE_MIB, 1))
        for name, stage, mib, extra in stages:
            ok, said = fits(args.workers + extra, mib)
            results[f"{name}_arithmetic"] = said
            log(f"{name}: {said}")
            if not ok:
                results[name] = {"refused": f"does not fit: {said}"}
                continue
            if name == "project":
                results[name] = {}
                project(host, cluster, args.workers, args.pace, results[name], save)
            else:
                results[name] = stage(host, cluster, args.workers)
            save()
            log(f"{name}: {results[name]}")
    finally:
        left = take_cluster_down(host)
        if left:
            results["cluster_left"] = left
    print(json.dumps(results, indent=2))
    save()
    return 3 if "cluster_left" in results else 0


def take_cluster_down(host: docker.DockerClient) -> str | None:
    """Remove the cluster; what went wrong instead of a traceback that hides the figures.

    At 1503 tasks, with a node just lost, the host's engine once could not
    kill a node container ("did not receive an exit event"); a later
    ``cluster down`` removed it.
    """
    for attempt in range(3):
        try:
            cluster_down(host, CLUSTER)
            return None
        except docker.errors.APIError as exc:
            said = str(exc)
            log(f"could not remove the cluster (try {attempt + 1} of 3): {said[:200]}")
            time.sleep(10)
    return f"{said}: remove it with `cqkd-stack cluster down --name {CLUSTER}`"


if __name__ == "__main__":
    sys.exit(main())
