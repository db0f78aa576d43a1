"""What an operator waits for on a stack: probe, ports, dht-check, this tree against another.

Issue 20 wants `probe` under 1.5 s, `ports` under 0.5 s and `dht-check`
under 1 s at 1003 tasks. Each command runs as an operator runs it (a whole
``python -m cqkd_stack`` process, wall time), from this tree and from the
code of git revision ``--baseline-ref`` (exported with ``git archive``),
interleaved in one loop on the same stack so a noisy machine shifts both
alike. Prints medians and the ratio to the baseline. The stack must exist
(deploy it first, e.g. ``cqkd-stack deploy --replicas 1000 --stack S``);
nothing is deployed or removed here.

    python benchmarks/operations.py --stack S --baseline-ref REF [--runs 5]
        [--commands probe,ports,dht-check]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import export, snapshot

COMMANDS = {
    "probe": ["probe", "--format", "json"],
    "ports": ["ports", "--format", "json"],
    "dht-check": ["dht-check", "--format", "json"],
}


def run(tree: Path, args: list[str], stack: str, folder: Path) -> tuple[float, dict]:
    """Wall seconds of one command from ``tree``, and its JSON (``{}`` if it printed none)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args, "--stack", stack],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,  # not the repository: `python -m` would import this tree's code
        timeout=600,
    )
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    try:
        return wall, json.loads(done.stdout)
    except json.JSONDecodeError:
        return wall, {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--baseline-ref", required=True, help="the git revision to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    args = parser.parse_args()
    wanted = [name.strip() for name in args.commands.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(COMMANDS))
    if unknown:
        parser.error(f"unknown command(s) {', '.join(unknown)}; known: {', '.join(COMMANDS)}")
    with tempfile.TemporaryDirectory(prefix="cqkd-ops-") as tmp:
        work = Path(tmp)
        (work / "here").mkdir()
        (work / "run").mkdir()
        trees = {
            "this tree": snapshot(work / "here"),
            args.baseline_ref: export(args.baseline_ref, work),
        }
        walls: dict[tuple[str, str], list[float]] = {}
        notes: dict[tuple[str, str], str] = {}
        for name in wanted:
            for tree in trees.values():
                run(tree, COMMANDS[name], args.stack, work / "run")  # warm: bytecode, caches
        for _ in range(args.runs):
            for name in wanted:
                for tree_name, tree in trees.items():
                    wall, out = run(tree, COMMANDS[name], args.stack, work / "run")
                    walls.setdefault((name, tree_name), []).append(wall)
                    if name == "probe":
                        notes[(name, tree_name)] = (
                            f"{out.get('answered')}/{out.get('total')} answered, "
                            f"{out.get('method') or 'container'}"
                        )
                    elif name == "dht-check" and "via" in out:
                        notes[(name, tree_name)] = str(out["via"])
    base = args.baseline_ref
    print(f"\nstack {args.stack}, median of {args.runs} whole-process runs, wall seconds")
    print(f"{'command':<10} {'this tree':>10} {base:>12} {'ratio':>7}  notes")
    for name in wanted:
        now = statistics.median(walls[(name, "this tree")])
        then = statistics.median(walls[(name, base)])
        note = "; ".join(f"{t}: {notes[(name, t)]}" for t in trees if (name, t) in notes)
        print(f"{name:<10} {now:>10.2f} {then:>12.2f} {now / then:>6.2f}x  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
