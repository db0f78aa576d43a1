"""How `cqkd-stack ports` scales with the task count, up to 1000 tasks.

1000 real DHT nodes need ~20 GB here, but the port map reads only the API
(services, tasks, nodes) and each service's environment. So the stack below
is the rendered CQKD stack whose workers run ``sleep`` instead of the node:
same services, same environment, same slots, a few MB per task. Baseline, in
the same loop on the same stack: ``docker stack ps`` (Docker's own listing).

    python benchmarks/ports_at_scale.py [--workers 100 1000] [--repeat 5]
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
import yaml

from cqkd_stack import DEFAULT_NODE_IMAGE
from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.teardown import stack_rm
from cqkd_stack.live.waits import wait_until_running
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def sleeper_stack(workers: int) -> str:
    doc = yaml.safe_load(render(load_policy(), RenderOptions(replicas=workers)))
    for service in doc["services"].values():
        service["entrypoint"] = ["sleep", "infinity"]
        service["healthcheck"] = {"disable": True}
    return yaml.safe_dump(doc, sort_keys=False)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def measure(client: docker.DockerClient, workers: int, repeat: int) -> None:
    stack = f"cqkdbench_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.yml"
        path.write_text(sleeper_stack(workers))
        start = time.perf_counter()
        subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
            check=True,
            capture_output=True,
        )
        waited = wait_until_running(client, stack, timeout=1200)
    print(
        f"\n{workers} sleeper workers ({waited.total} tasks) running after "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    try:
        ours, theirs = [], []
        for _ in range(repeat):
            seconds, out = timed(
                [sys.executable, "-m", "cqkd_stack", "ports", "--stack", stack, "--format", "json"]
            )
            ours.append(seconds)
            theirs.append(timed(["docker", "stack", "ps", stack])[0])
        result = json.loads(out)
        rows = [t for t in result["tasks"] if t["role"] == "worker"]
        assert sorted(t["port"] for t in rows) == list(range(7000, 7000 + workers))
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(
            f"ports --format json: median {statistics.median(ours) * 1000:.0f} ms "
            f"(min {min(ours) * 1000:.0f}); docker stack ps: median "
            f"{statistics.median(theirs) * 1000:.0f} ms; ratio {ratio:.2f}x; "
            f"{len(rows)} worker rows, ports 7000-{7000 + workers - 1} all present"
        )
    finally:
        start = time.perf_counter()
        done = stack_rm(client, stack, timeout=1200)
        print(f"teardown: {time.perf_counter() - start:.0f} s, complete={done.complete}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env(timeout=300)
    client.images.get(DEFAULT_NODE_IMAGE)  # fails early without cqkd-stack setup
    for workers in args.workers:
        measure(client, workers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
