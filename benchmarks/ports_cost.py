"""Where the wall time of `cqkd-stack ports` goes, on a stack already deployed.

`ports` at 1003 tasks took 0.95 s wall (issue 20 wants < 0.5 s). This splits
one run into its parts, in this process: the interpreter and the CLI's
imports, each Docker API call of ``connect`` and ``port_map`` (with the bytes
it returned), building the map, and writing the JSON. Then the command
itself as an operator runs it, ``--repeat`` times (medians), and, with
``--baseline DIR`` (an export of another revision: ``git archive main | tar -x
-C DIR``), that revision's command on the same stack, interleaved run by run
so both see the same engine.

    python benchmarks/ports_cost.py --stack cqkdtest_ab12cd [--baseline /tmp/main]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _path_env() -> dict[str, str]:
    """This environment without PYTHONPATH, which each run sets to its checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def ports_wall(checkout: Path, stack: str) -> tuple[float, int]:
    """Wall seconds of ``python -m cqkd_stack ports`` run from ``checkout``; tasks shown."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", "ports", "--stack", stack, "--format", "json"],
        cwd=checkout,
        env={"PYTHONPATH": str(checkout), **_path_env()},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"ports from {checkout} exited {done.returncode}: {done.stderr}")
    return wall, len(json.loads(done.stdout)["tasks"])


def import_wall(checkout: Path, repeat: int) -> float:
    """Median wall seconds of a process that only imports what ``ports`` imports."""
    code = (
        "import cqkd_stack.cli.main, cqkd_stack.live.client, cqkd_stack.live.inspection, docker"
    )
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=checkout,
            env={"PYTHONPATH": str(checkout), **_path_env()},
            check=True,
        )
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


class Timed:
    """Wraps the SDK's HTTP session: seconds and bytes of every API call, by path."""

    def __init__(self, api: Any) -> None:
        self.calls: list[tuple[str, float, int]] = []
        session_send = api.send

        def send(request: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            response = session_send(request, **kwargs)
            length = len(response.content)
            path = request.path_url.split("?")[0]
            self.calls.append((f"{request.method} {path}", time.perf_counter() - start, length))
            return response

        api.send = send


def split_one_run(stack: str) -> dict[str, Any]:
    """One ``ports --format json`` done step by step in this process."""
    parts: dict[str, Any] = {}
    start = time.perf_counter()
    import docker  # noqa: F401

    from cqkd_stack.cli import main  # noqa: F401
    from cqkd_stack.core.policy import load_policy
    from cqkd_stack.live import client as live_client
    from cqkd_stack.live import inspection

    parts["imports (in this process, after the benchmark's own)"] = time.perf_counter() - start

    import docker as sdk

    made: list[Timed] = []
    real_init = sdk.APIClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(Timed(self))
        real_init(self, *args, **kwargs)

    sdk.APIClient.__init__ = init  # type: ignore[method-assign]
    try:
        step = time.perf_counter()
        policy = load_policy()
        parts["load the policy"] = time.perf_counter() - step
        step = time.perf_counter()
        client = live_client.connect()
        parts["connect"] = time.perf_counter() - step
        step = time.perf_counter()
        result = inspection.port_map(client, stack, policy)
        parts["port_map (API calls and build)"] = time.perf_counter() - step
        step = time.perf_counter()
        text = json.dumps(result.as_dict(), indent=2, default=str)
        parts["as_dict + json.dumps"] = time.perf_counter() - step
    finally:
        sdk.APIClient.__init__ = real_init  # type: ignore[method-assign]
    parts["rows"] = len(result.tasks)
    parts["json bytes"] = len(text)
    parts["api calls"] = [
        {"call": call, "seconds": seconds, "bytes": size}
        for timed in made
        for call, seconds, size in timed.calls
    ]
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another revision's checkout to compare")
    args = parser.parse_args()

    checkouts = {"this checkout": REPO}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    walls: dict[str, list[float]] = {name: [] for name in checkouts}
    rows = {}
    for _ in range(args.repeat):
        for name, checkout in checkouts.items():
            wall, rows[name] = ports_wall(checkout, args.stack)
            walls[name].append(wall)
    for name, checkout in checkouts.items():
        imports = import_wall(checkout, args.repeat)
        print(
            f"{name} ({checkout}): ports --format json median "
            f"{statistics.median(walls[name]) * 1000:.0f} ms (min {min(walls[name]) * 1000:.0f}, "
            f"max {max(walls[name]) * 1000:.0f}) over {args.repeat}, {rows[name]} rows; "
            f"a process importing what it imports: {imports * 1000:.0f} ms"
        )
    if args.baseline is not None:
        ratio = statistics.median(walls["this checkout"]) / statistics.median(walls["baseline"])
        print(f"this checkout / baseline: {ratio:.2f}x")
    print("\none run of this checkout, step by step (in this process):")
    parts = split_one_run(args.stack)
    for call in parts.pop("api calls"):
        print(f"  {call['call']:<28} {call['seconds'] * 1000:7.1f} ms  {call['bytes']:>9} bytes")
    for name, value in parts.items():
        shown = f"{value * 1000:7.1f} ms" if isinstance(value, float) else str(value)
        print(f"  {name:<28} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
