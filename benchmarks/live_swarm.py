"""Live-swarm figures: deploy to all-healthy, dht-check, ports, teardown.

Needs a running engine with an active swarm and the node image
(``cqkd-stack setup``). For each worker count it deploys a fresh stack with
``cqkd-stack deploy``, runs ``dht-check`` and ``ports`` several times, then
``teardown``. Baselines run in the same script on the same machine:

* ``ports`` against ``docker stack ps`` on the same stack (Docker's own task
  listing: one API call plus formatting, no port derivation);
* ``deploy`` against a bare ``docker stack deploy`` of the very same rendered
  file, waited on with the same task poll, so the ratio is what validation
  and our wait add (``--no-baseline`` skips it).

    python benchmarks/live_swarm.py [--workers 50 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.teardown import stack_rm
from cqkd_stack.live.waits import wait_until_running
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def cqkd(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cqkd-stack {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, done


def deploy(stack: str, workers: int) -> tuple[float, dict]:
    """cqkd-stack deploy as an operator runs it: wall time and its JSON summary."""
    wall, done = cqkd(
        "deploy",
        "--replicas",
        str(workers),
        "--stack",
        stack,
        "--format",
        "json",
        "--timeout",
        "900",
    )
    return wall, json.loads(done.stdout)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def bare_deploy(client: docker.DockerClient, workers: int) -> float:
    """The same rendered stack through plain docker stack deploy, no validation."""
    stack = f"cqkdbench_{uuid.uuid4().hex[:6]}"
    text = render(load_policy(), RenderOptions(replicas=workers))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.yml"
        path.write_text(text)
        start = time.perf_counter()
        subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
            check=True,
            capture_output=True,
        )
        wait_until_running(client, stack, timeout=900)
        elapsed = time.perf_counter() - start
    stack_rm(client, stack, timeout=600)
    return elapsed


def measure(client: docker.DockerClient, workers: int, repeat: int, baseline: bool) -> None:
    stack = f"cqkdbench_{uuid.uuid4().hex[:6]}"
    print(f"\n== {workers} workers (stack {stack}) ==", flush=True)
    wall, summary = deploy(stack, workers)
    print(
        f"deploy to all healthy: {wall:.1f} s wall ({summary['tasks']} tasks; "
        f"waiting alone {summary['seconds']:.1f} s)",
        flush=True,
    )

    trips = []
    for _ in range(repeat):
        _, done = cqkd("dht-check", "--stack", stack, "--format", "json")
        trips.append(json.loads(done.stdout)["round_trip_seconds"])
    print(
        f"dht-check round trip: median {median_ms(trips)} "
        f"(min {min(trips) * 1000:.0f}, max {max(trips) * 1000:.0f}; {repeat} runs)"
    )

    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(cqkd("ports", "--stack", stack, "--format", "json")[0])
        theirs.append(timed(["docker", "stack", "ps", stack]))
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"ports --format json: median {median_ms(ours)}; docker stack ps: "
        f"median {median_ms(theirs)}; ratio {ratio:.2f}x ({repeat} runs each, interleaved)"
    )

    wall, _ = cqkd("teardown", "--stack", stack, "--timeout", "900")
    print(f"teardown to nothing left: {wall:.1f} s", flush=True)

    if baseline:
        bare = bare_deploy(client, workers)
        _, ours_again = deploy(stack, workers)
        cqkd("teardown", "--stack", stack, "--timeout", "900")
        print(
            f"baseline: bare docker stack deploy + wait {bare:.1f} s; cqkd-stack deploy "
            f"(second run, wait {ours_again['seconds']:.1f} s); "
            f"ratio of waits {ours_again['seconds'] / bare:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    for workers in args.workers:
        measure(client, workers, args.repeat, not args.no_baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
