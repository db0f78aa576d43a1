"""Process start-up cost of what runs most often: render + validate, and the resolver.

The resolver runs once in each of 1000+ containers; render + validate runs in
every CI lint. Both are measured as whole processes (what a user waits for),
interleaved with a bare-interpreter baseline in the same loop so a noisy
machine shifts every figure alike. Prints medians and ratios to the baseline.

    python benchmarks/startup.py [--runs 21] [--replicas 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"render + validate": 0.300, "validate": 0.300, "resolver": 0.050}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--replicas", type=int, default=1000)
    args = parser.parse_args()

    cli = shutil.which("cqkd-stack")
    if cli is None:
        print("cqkd-stack is not installed: pip install -e .", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cqkd-bench-"))
    stack = work / "stack.yml"
    env = dict(os.environ)
    resolver_env = env | {"TASK_SLOT": "5", "BASE_PORT": "7000", "PORT_RANGE_END": "7999"}
    commands = {
        "python -c pass (baseline)": ([sys.executable, "-c", "pass"], env),
        "render + validate": (
            [cli, "render", "--replicas", str(args.replicas), "--output", str(stack)],
            env,
        ),
        "validate": ([cli, "validate", str(stack)], env),
        "resolver": ([sys.executable, "-m", "cqkd_stack.resolver"], resolver_env),
    }
    timed(*commands["render + validate"])  # the file validate reads, and a warm cache
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (cmd, cmd_env) in commands.items():
            samples[name].append(timed(cmd, cmd_env))
    shutil.rmtree(work)

    baseline = statistics.median(samples["python -c pass (baseline)"])
    print(f"{args.runs} runs each, {args.replicas} replicas, interleaved; wall time per process")
    print(f"{'command':28} {'median':>9} {'min':>9} {'x baseline':>11} {'target':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"{target * 1000:.0f}ms " + ("ok" if median < target else "OVER")
        print(
            f"{name:28} {median * 1000:7.1f}ms {min(values) * 1000:7.1f}ms "
            f"{median / baseline:10.1f}x {verdict:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
