"""A node lost under a running DHT: what Swarm alone gives, and what this project adds.

Two stages, each on a fresh 3-node Docker-in-Docker swarm on this machine
(``cqkd_stack.cluster``), each losing its third node (``docker kill`` of the
node's container) once every task answers:

1. bare: the naive node of ``benchmarks/naive/`` with a plain
   ``docker stack deploy`` on the manager (its image copied to every node
   by hand first, as a user without this project must).
2. project: ``cqkd-stack --host <manager> deploy``, Alice stores a value
   before the loss, Bob reads it after.

For each: seconds until Swarm marks the node down, until every slot runs
again on the other nodes, until every task answers a Kademlia probe at its
address and port (the project's own readiness wait, so both are judged
alike); tasks moved; and the port map read every 0.5 s throughout
(duplicate ports ever seen, any worker ever off ``7000 + slot - 1``).

    python benchmarks/node_loss.py --workers 60 --json node_loss.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import docker
from scale import NAIVE_DIR, NAIVE_IMAGE, Throttled, ensure_naive_image, log, wait_running

from cqkd_stack import DEFAULT_NODE_IMAGE
from cqkd_stack.core.files import write_atomically
from cqkd_stack.host.cluster import Cluster, cluster_down, cluster_up
from cqkd_stack.live import dhtcheck
from cqkd_stack.live.client import engine_client
from cqkd_stack.live.distribution import copy_image
from cqkd_stack.live.inspection import port_map
from cqkd_stack.live.waits import wait_until_ready

CLUSTER = "cqkd-bench-cluster"
# How long every slot may take to run again after the loss before the run says it did not.
RUNNING_AGAIN_SECONDS = 600.0
SUBNET = "10.214.0.0/20"


class Watch:
    """The port map every half second on another thread: duplicates and stray ports."""

    def __init__(self, manager: docker.DockerClient, stack: str) -> None:
        self.manager, self.stack = manager, stack
        self.samples, self.duplicates, self.stray = 0, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ports = port_map(self.manager, self.stack)
            except (docker.errors.APIError, OSError):
                continue
            self.samples += 1
            self.duplicates += bool(ports.duplicate_ports)
            self.stray += sum(
                1
                for r in ports.tasks
                if r.role == "worker" and r.state == "running" and r.port != 7000 + r.slot - 1
            )
            self.stop.wait(0.5)


def on_node(manager: docker.DockerClient, stack: str, node: str) -> set[tuple[str, int]]:
    return {
        (r.service, r.slot)
        for r in port_map(manager, stack).tasks
        if r.state == "running" and r.node == node
    }


T = TypeVar("T")


def asked_again(ask: Callable[[], T], deadline: float) -> T:
    """``ask()``, again every 2 s while the manager is too busy to answer, until ``deadline``.

    Moving 500 tasks at once, a starved manager answers task listings with
    "context deadline exceeded"; at 1503 tasks that ended the benchmark in
    a traceback six minutes after the kill, its node-loss figures unsaved.
    A manager that never answers again still ends the run, at the deadline.
    """
    while True:
        try:
            return ask()
        except (docker.errors.APIError, OSError) as exc:
            if time.monotonic() > deadline:
                raise
            log(f"node loss: the manager did not answer ({str(exc)[:80]}); asking again")
            time.sleep(2)


def lose_node(
    host: docker.DockerClient, cluster: Cluster, manager: docker.DockerClient, stack: str
) -> dict[str, Any]:
    """Kill the third node; time the way back to every task answering."""
    victim = cluster.nodes[-1]
    total = len({(r.service, r.slot) for r in port_map(manager, stack).tasks})
    moved = on_node(manager, stack, victim.container)
    watch = Watch(manager, stack)
    watch.thread.start()
    start = time.monotonic()
    out: dict[str, Any] = {"tasks": total, "moved": len(moved), "node": victim.container}
    try:
        host.containers.get(victim.container).kill()
        deadline = start + RUNNING_AGAIN_SECONDS
        while (
            asked_again(lambda: manager.api.inspect_node(victim.node_id), deadline)["Status"][
                "State"
            ]
            != "down"
        ):
            time.sleep(0.2)
        out["down_seconds"] = round(time.monotonic() - start, 1)
        deadline = time.monotonic() + RUNNING_AGAIN_SECONDS
        while True:
            tasks = asked_again(lambda: port_map(manager, stack).tasks, deadline)
            rows = [r for r in tasks if r.state == "running"]
            keys = {(r.service, r.slot) for r in rows}
            if len(keys) == total and not any(r.node == victim.container for r in rows):
                break
            if time.monotonic() > deadline:
                # Seen: replacements left "New" for want of subnet addresses.
                out["not_running_again"] = total - len(keys)
                return out | {"samples": watch.samples, "duplicates": watch.duplicates}
            time.sleep(0.2)
        out["running_seconds"] = round(time.monotonic() - start, 1)
        wait_until_ready(manager, stack, 600, progress=Throttled("answering again"))
        out["answering_seconds"] = round(time.monotonic() - start, 1)
    finally:
        watch.stop.set()
        watch.thread.join(10)
    out |= {"samples": watch.samples, "duplicates": watch.duplicates, "stray": watch.stray}
    ports = {
        r.port
        for r in asked_again(lambda: port_map(manager, stack).tasks, time.monotonic() + 60)
        if r.role == "worker"
    }
    out["distinct_worker_ports"] = len(ports)
    return out


def bare_stack(
    host: docker.DockerClient, cluster: Cluster, workers: int
) -> tuple[docker.DockerClient, str, Path, dict[str, str]]:
    """The naive stack's file and the manager, its image on every node by hand, as a
    user without the project does: (manager, stack, file, environment for docker)."""
    manager = docker.DockerClient(base_url=cluster.manager_url, timeout=300)
    ensure_naive_image(host)
    for node in cluster.nodes:
        target = engine_client(node.engine_url)
        copy_image(host, target, NAIVE_IMAGE)
        target.close()
    text = Template((NAIVE_DIR / "naive.stack.yml").read_text()).substitute(
        WORKERS=workers, SUBNET=SUBNET, INIT="true"
    )
    stack = f"bare_{uuid.uuid4().hex[:6]}"
    path = Path(f"/tmp/{stack}.yml")
    path.write_text(text)
    return manager, stack, path, {**os.environ, "DOCKER_HOST": cluster.manager_url}


def bare(host: docker.DockerClient, cluster: Cluster, workers: int) -> dict[str, Any]:
    manager, stack, path, env = bare_stack(host, cluster, workers)
    start = time.monotonic()
    subprocess.run(
        ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
        check=True,
        capture_output=True,
        env=env,
    )
    wait_running(manager, stack, workers + 1, start + 600, "bare running")
    wait_until_ready(manager, stack, 600, progress=Throttled("bare joined"))
    log(f"bare: {workers + 1} tasks answering after {time.monotonic() - start:.1f} s")
    return lose_node(host, cluster, manager, stack)


def project(host: docker.DockerClient, cluster: Cluster, workers: int) -> dict[str, Any]:
    manager = docker.DockerClient(base_url=cluster.manager_url, timeout=300)
    stack = f"proj_{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", "--host", cluster.manager_url, "deploy",
         "-s", stack, "-r", str(workers), "-f", "json"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"deploy failed: {done.stderr[-2000:]}")
    log(f"project: deployed in {json.loads(done.stdout)['seconds']} s")
    key, value = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dhtcheck.store_value(manager, stack, "alice", key, value)
    out = lose_node(host, cluster, manager, stack)
    out["value_survived"] = dhtcheck.read_value(manager, stack, "bob", key) == value
    return out


def median_of(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3, help="losses per stage (medians shown)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    host = docker.from_env(timeout=600)
    results: dict[str, Any] = {"workers": args.workers, "bare": [], "project": []}
    for run in range(args.runs):
        # Alternating stages: a slow spell of the machine hits both alike.
        for name, stage in (("bare", bare), ("project", project)):
            cluster_down(host, CLUSTER)
            log(f"{name} run {run + 1}/{args.runs}: 3-node cluster up")
            cluster = cluster_up(host, 3, CLUSTER, DEFAULT_NODE_IMAGE)
            try:
                results[name].append(stage(host, cluster, args.workers))
                log(f"{name}: {results[name][-1]}")
            finally:
                cluster_down(host, CLUSTER)
    rows = [
        ("tasks moved off the lost node", "moved", ""),
        ("node marked down after", "down_seconds", " s"),
        ("every slot running again after", "running_seconds", " s"),
        ("every task answering again after", "answering_seconds", " s"),
        ("port-map samples with a duplicate port", "duplicates", ""),
        ("workers seen off 7000 + slot - 1", "stray", ""),
        ("port-map samples taken", "samples", ""),
    ]
    bare_runs, project_runs = results["bare"], results["project"]
    title = f"node lost, {args.workers} workers, median of {args.runs}"
    print(f"{title:44} {'bare':>10} {'project':>10}")
    for label, key, unit in rows:
        b, p = median_of(bare_runs, key), median_of(project_runs, key)
        print(f"{label:44} {f'{b:g}{unit}':>10} {f'{p:g}{unit}':>10}")
    b, p = median_of(bare_runs, "answering_seconds"), median_of(project_runs, "answering_seconds")
    print(f"{'answering again, project / bare':44} {'':>10} {p / b:>9.2f}x")
    survived = sum(bool(r.get("value_survived")) for r in project_runs)
    print(f"{'runs where Bob read the value Alice stored':44} {'-':>10} {survived:>7}/{args.runs}")
    if args.json:
        write_atomically(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
