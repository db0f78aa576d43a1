"""Process start-up cost of what runs most often: render + validate, and the resolver.

The resolver runs once in each of 1000+ containers; render + validate runs in
every CI lint. Both are measured as whole processes (what a user waits for),
interleaved with a bare-interpreter baseline in the same loop so a noisy
machine shifts every figure alike. Prints medians and ratios to the baseline.

With ``--baseline-ref REF`` the same commands also run from the code of git
revision REF (exported with ``git archive`` into a temporary folder), in the
same loop, and the table compares the two: both sides then start as
``python -m cqkd_stack`` with their own tree first on ``PYTHONPATH``, so
they differ in their code and nothing else (this tree is copied as it is,
uncommitted changes included, beside the exported one). Every command runs in an empty
temporary folder: ``python -m`` puts the current directory first on the
path, so run from the repository both sides imported this tree's code.

Bytecode is cached, as an installed command has it (pip compiles on
install): every command runs once before the loop, writing what it
compiles under a temporary ``PYTHONPYCACHEPREFIX``, so neither tree pays
for compiling, even where ``PYTHONDONTWRITEBYTECODE`` is set.
``--no-bytecode-cache`` measures instead what a run costs that compiles the
project's modules each time (that variable set; with ``--baseline-ref``
neither tree has a cache, the installed command's may).

    python benchmarks/startup.py [--runs 21] [--replicas 1000] [--baseline-ref REF]
                                 [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Issue 20: render + validate of 1000 workers in at most 200 ms a process.
TARGETS = {"render + validate": 0.200, "validate": 0.200, "resolver": 0.050}


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def export(ref: str, dest: Path) -> Path:
    """The tree of git revision ``ref`` in ``dest``, as ``git archive`` gives it."""
    archive = dest / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", ref], stdout=out, check=True)
    tree = dest / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def snapshot(dest: Path) -> Path:
    """This tree's code and data in ``dest``, as it is now, without its ``__pycache__``.

    Both sides then start from fresh folders alike, and a bytecode cache the
    working tree happens to hold counts for neither.
    """
    skip = shutil.ignore_patterns("__pycache__")
    for part in ("cqkd_stack", "stacks", "schemas"):
        shutil.copytree(REPO / part, dest / part, ignore=skip)
    return dest


def commands_for(
    cli: list[str], stack: Path, replicas: int, env: dict[str, str]
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The measured commands of one tree: its CLI (``cli``), its resolver, its environment."""
    resolver_env = env | {"TASK_SLOT": "5", "BASE_PORT": "7000", "PORT_RANGE_END": "7999"}
    return {
        "render + validate": (
            [*cli, "render", "--replicas", str(replicas), "--output", str(stack)],
            env,
        ),
        "validate": ([*cli, "validate", str(stack)], env),
        "resolver": ([sys.executable, "-m", "cqkd_stack.resolver"], resolver_env),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument(
        "--baseline-ref", default="", help="also measure the code of this git revision"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="compile the project's modules in every run (PYTHONDONTWRITEBYTECODE=1)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cqkd-bench-"))
    here = work / "cwd"  # empty: nothing on the path but what PYTHONPATH says
    here.mkdir()
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if args.no_bytecode_cache:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    commands = {"python -c pass (baseline)": ([sys.executable, "-c", "pass"], env)}
    if args.baseline_ref:
        # Both trees alike: python -m cqkd_stack, each tree first on the path.
        trees = {
            "": snapshot(work / "this"),
            f" @{args.baseline_ref}": export(args.baseline_ref, work),
        }
        for suffix, tree in trees.items():
            tree_env = env | {"PYTHONPATH": str(tree)}
            found = commands_for(
                [sys.executable, "-m", "cqkd_stack"],
                work / f"stack{len(suffix)}.yml",
                args.replicas,
                tree_env,
            )
            commands |= {name + suffix: command for name, command in found.items()}
    else:
        cli = shutil.which("cqkd-stack")
        if cli is None:
            print("cqkd-stack is not installed: pip install -e .", file=sys.stderr)
            return 2
        commands |= commands_for([cli], work / "stack.yml", args.replicas, env)
    for command in commands.values():
        # Render first: the file validate reads; and every command's bytecode, disk cache.
        timed(*command, here)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (cmd, cmd_env) in commands.items():
            samples[name].append(timed(cmd, cmd_env, here))
    shutil.rmtree(work)

    baseline = statistics.median(samples["python -c pass (baseline)"])
    cache = "compiled in every run" if args.no_bytecode_cache else "cached"
    print(
        f"{args.runs} runs each, {args.replicas} replicas, interleaved; wall time per process; "
        f"bytecode {cache}"
    )
    print(f"{'command':36} {'median':>9} {'min':>9} {'x baseline':>11} {'target':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"{target * 1000:.0f}ms " + ("ok" if median <= target else "OVER")
        print(
            f"{name:36} {median * 1000:7.1f}ms {min(values) * 1000:7.1f}ms "
            f"{median / baseline:10.1f}x {verdict:>8}"
        )
    if args.baseline_ref:
        print(f"\nthis tree against {args.baseline_ref} (median over median)")
        for name in ("render + validate", "validate", "resolver"):
            now = statistics.median(samples[name])
            then = statistics.median(samples[f"{name} @{args.baseline_ref}"])
            print(f"{name:36} {now * 1000:7.1f}ms vs {then * 1000:7.1f}ms  {now / then:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
