"""The compose target: render + validate of 1000 services, and a real `up` against a naive one.

1. Render + validate (always): ``cqkd-stack render --target compose -r 1000``
   (which validates what it writes) and ``cqkd-stack validate`` of the file,
   each as a whole process, interleaved with two baselines in the same loop:
   ``python -c pass`` and docker-compose 1.29.2 reading the same file
   (``docker-compose config -q``, the tool's own check). Issue 11's bound:
   render + validate under 1.5 s.

2. ``--up N`` (optional, needs the engine): N workers on this host, stages
   alternating, ``--runs`` each:
   - bare: what an operator writes without cqkd-stack, one service per
     worker with the naive node of ``benchmarks/naive/`` (TASK_SLOT fixed per
     service, its port published), ``depends_on: [bootstrap]``, run with a
     plain ``docker-compose up -d``;
   - project: ``cqkd-stack deploy --target compose -r N``.
   Both are timed until every node answers a Kademlia ping at its host port
   (the same probe, from this host), and host memory is ``free -b`` used
   before and after, divided by the nodes.

    python benchmarks/compose_target.py [--runs 11] [--up 100 --up-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import NAIVE_IMAGE, ensure_naive_image, log, memory

PROJECT = "cqkd-bench-compose"
MIB = 1024 * 1024


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def render_and_validate(runs: int, replicas: int) -> None:
    cli = shutil.which("cqkd-stack")
    compose = shutil.which("docker-compose")
    if cli is None:
        raise SystemExit("cqkd-stack is not installed: pip install -e .")
    work = Path(tempfile.mkdtemp(prefix="cqkd-bench-"))
    path = work / "docker-compose.yml"
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "render --target compose (renders and validates)": [
            cli,
            "render",
            "--target",
            "compose",
            "-r",
            str(replicas),
            "-o",
            str(path),
        ],
        "validate the file": [cli, "validate", str(path)],
    }
    if compose:
        commands["docker-compose config -q (baseline)"] = [compose, "-f", str(path), "config", "-q"]
    timed(commands["render --target compose (renders and validates)"])  # warm caches
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            samples[name].append(timed(cmd))
    services = path.read_text().count("\n  worker-") + 3
    shutil.rmtree(work)
    print(f"## render + validate, {services} services ({replicas} workers), median of {runs}\n")
    print("| command | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for name, values in samples.items():
        print(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |"
        )
    ours = statistics.median(samples["render --target compose (renders and validates)"])
    if compose:
        theirs = statistics.median(samples["docker-compose config -q (baseline)"])
        print(f"\nrender + validate / docker-compose config: {ours / theirs:.2f}x")
    print(f"render + validate under 1.5 s: {'met' if ours < 1.5 else 'NOT met'} ({ours:.2f} s)\n")


def naive_file(workers: int) -> str:
    """One service per worker, as written by hand: fixed TASK_SLOT, its port published."""
    lines = [
        "services:",
        "  bootstrap:",
        f"    image: {NAIVE_IMAGE}",
        "    environment: {CQKD_ROLE: bootstrap, BASE_PORT: '5678', TASK_SLOT: '1'}",
        "    ports: ['5678:5678/udp']",
    ]
    for k in range(1, workers + 1):
        port = 7000 + k - 1
        lines += [
            f"  worker-{k}:",
            f"    image: {NAIVE_IMAGE}",
            f"    environment: {{CQKD_ROLE: worker, BASE_PORT: '7000', TASK_SLOT: '{k}'}}",
            f"    ports: ['{port}:{port}/udp']",
            "    depends_on: [bootstrap]",
        ]
    return "\n".join(lines) + "\n"


def wait_answering(ports: list[int], timeout: float = 900) -> float:
    """Seconds until every port answers a Kademlia ping on 127.0.0.1 (joined for workers)."""
    start = time.monotonic()
    waiting = set(ports)
    while waiting:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{len(waiting)} ports silent after {timeout} s")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cqkd_stack.probe",
                "--joined",
                "--rpc-timeout",
                "1",
                *(f"127.0.0.1:{p}" for p in sorted(waiting)),
            ],
            capture_output=True,
            text=True,
        )
        answers = json.loads(done.stdout.strip().splitlines()[-1])
        for target, answer in answers.items():
            port = int(target.rsplit(":", 1)[1])
            if answer and (port == 5678 or answer.get("neighbours", 0) > 0):
                waiting.discard(port)
        if waiting:
            time.sleep(0.5)
    return time.monotonic() - start


def bare_stage(workers: int, work: Path) -> dict[str, float]:
    path = work / "naive-compose.yml"
    path.write_text(naive_file(workers))
    base = ["docker-compose", "-p", PROJECT, "-f", str(path)]
    before = memory()
    start = time.monotonic()
    # Without a larger pool docker-compose 1.29 deadlocks past 64 services
    # (docker/compose#5864, seen in 2 of 6 runs at 100): the baseline gets the
    # same setting as the project, or it could not be measured.
    env = os.environ | {"COMPOSE_PARALLEL_LIMIT": str(2 * (workers + 1) + 8)}
    subprocess.run([*base, "up", "-d"], check=True, capture_output=True, timeout=600, env=env)
    up = time.monotonic() - start
    wait_answering([5678, *range(7000, 7000 + workers)])
    seconds = time.monotonic() - start
    after = memory()
    subprocess.run([*base, "down", "-v"], check=True, capture_output=True)
    return {"up": up, "answering": seconds, "mib": (after["used"] - before["used"]) / MIB}


def project_stage(workers: int) -> dict[str, float]:
    before = memory()
    start = time.monotonic()
    done = subprocess.run(
        [
            "cqkd-stack",
            "deploy",
            "--target",
            "compose",
            "-r",
            str(workers),
            "-s",
            PROJECT,
            "-f",
            "json",
            "-t",
            "900",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    summary = json.loads(done.stdout)
    # The project's own wait ends at its probe; the bare stage's at this one:
    # ask once more the same way, so both end on the same check.
    wait_answering([n["port"] for n in summary["nodes"]])
    seconds = time.monotonic() - start
    after = memory()
    subprocess.run(
        ["cqkd-stack", "teardown", "--target", "compose", "-s", PROJECT],
        check=True,
        capture_output=True,
    )
    return {
        "up": summary["up_seconds"],
        "answering": seconds,
        "mib": (after["used"] - before["used"]) / MIB,
    }


def up_stages(workers: int, runs: int) -> None:
    import docker

    client = docker.from_env()
    ensure_naive_image(client)
    subprocess.run(
        ["cqkd-stack", "teardown", "--target", "compose", "-s", PROJECT], capture_output=True
    )
    results: dict[str, list[dict[str, float]]] = {"bare": [], "project": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for stage in ("bare", "project") if run % 2 == 0 else ("project", "bare"):
                log(f"run {run + 1}/{runs}: {stage}, {workers} workers")
                figures = (
                    bare_stage(workers, Path(tmp)) if stage == "bare" else project_stage(workers)
                )
                log(f"  {figures}")
                results[stage].append(figures)
    nodes = {"bare": workers + 1, "project": workers + 3}
    print(f"## up, {workers} workers on this host, median of {runs} runs per stage\n")
    print("| | bare docker-compose up, naive node | cqkd-stack deploy --target compose |")
    print("| --- | --- | --- |")
    for key, what in (
        ("up", "docker-compose up returned, s"),
        ("answering", "every node answering at its host port, s"),
    ):
        bare = statistics.median(r[key] for r in results["bare"])
        ours = statistics.median(r[key] for r in results["project"])
        print(f"| {what} | {bare:.1f} | {ours:.1f} ({ours / bare:.2f}x) |")
    per = {s: statistics.median(r["mib"] for r in results[s]) / nodes[s] for s in results}
    print(
        f"| host memory per node, MiB (free, before/after) | {per['bare']:.1f} "
        f"| {per['project']:.1f} ({per['project'] / per['bare']:.2f}x) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--up", type=int, default=0, help="workers for the up stages (0: skip)")
    parser.add_argument("--up-runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    render_and_validate(args.runs, args.replicas)
    if args.up:
        up_stages(args.up, args.up_runs)


if __name__ == "__main__":
    main()
