"""dht-check's round trip by the sealed control ports against the Swarm-job path, one stack.

Deploys one stack (``--workers`` workers plus bootstrap, Alice and Bob),
then runs ``dht-check --via job`` and ``dht-check --via network`` in turns,
``--runs`` times each, so both paths see the same stack and the same load.
Prints, per path, the median round trip the command reports (store through
Alice + read through Bob, as ``round_trip_seconds``) and the median wall
time of the whole command (process start, API calls, both requests), then
the ratio network / job. The job path is what every dht-check took before
the control ports (issue 20: 2.88 s at 1003 tasks); it is the baseline.

Needs the engine and the node image (``cqkd-stack setup``); run it under
the shared engine's lock:

    flock /tmp/cqkd-docker.lock python benchmarks/dhtcheck_paths.py [--workers 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid


def cqkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True
    )


def check(stack: str, via: str) -> tuple[float, float]:
    """(round trip the command reports, wall seconds of the command) for one dht-check."""
    start = time.monotonic()
    done = cqkd("dht-check", "-s", stack, "-f", "json", "--via", via)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"dht-check --via {via} failed: {done.stdout[-300:]}{done.stderr[-500:]}")
    result = json.loads(done.stdout)
    if result["via"] != via:
        raise SystemExit(f"dht-check --via {via} went by {result['via']}")
    return float(result["round_trip_seconds"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="dht-checks per path")
    args = parser.parse_args()
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    figures: dict[str, list[tuple[float, float]]] = {"job": [], "network": []}
    try:
        deployed = cqkd("deploy", "-r", str(args.workers), "-s", stack, "-t", "300")
        if deployed.returncode != 0:
            raise SystemExit(f"deploy failed: {deployed.stderr[-800:]}")
        for _ in range(args.runs):
            for via in figures:
                figures[via].append(check(stack, via))
    finally:
        cqkd("teardown", "-s", stack, "-t", "300")
        subprocess.run(["docker", "stack", "rm", stack], capture_output=True)
    print(f"dht-check at {args.workers} workers ({args.workers + 3} tasks), medians of {args.runs}")
    print(f"{'path':<8} {'round trip':>11} {'wall':>8}   all round trips")
    medians = {}
    for via, rows in figures.items():
        trip = statistics.median(r for r, _ in rows)
        wall = statistics.median(w for _, w in rows)
        medians[via] = trip
        runs = " ".join(f"{r:.3f}" for r, _ in rows)
        print(f"{via:<8} {trip:>10.3f}s {wall:>7.2f}s   {runs}")
    print(f"network / job round trip: {medians['network'] / medians['job']:.3f}")


if __name__ == "__main__":
    main()
