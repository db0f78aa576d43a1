"""What a DHT at rest costs in CPU: this tree's nodes against an older tree's, in one run.

Issue 20: with 1003 tasks deployed and nothing asked of them, the project's
node processes kept 0.061 cores busy where the naive node's kept 0.000. A
node at rest should cost next to nothing. This starts ``--nodes`` plain
nodes on loopback (one bootstrap, the rest workers) from each tree in turn,
lets them settle past every staleness threshold, then reads the CPU time
(``/proc/PID/stat`` utime + stime) all of them use in ``--window`` seconds.

Time is compressed: ``CQKD_HEALTH_INTERVAL`` is ``--interval`` (default 1 s,
the node's default is 10 s), and everything a node does at rest is counted
in health rounds, so the cost scales with 1 / interval for both trees; the
table also gives the cost scaled to 1000 nodes at the default interval.
Every node has its own IP in a stack, but here all share 127.0.0.1, so the
per-IP and per-/24 caps are lifted (``CQKD_MAX_PER_IP``) for both trees.

    python benchmarks/idle_cpu.py --baseline-ref REF [--nodes 100] [--interval 1]
        [--settle-rounds 70] [--window 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from node_cost import REPO, Node, export, free_udp_ports

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_INTERVAL = 10.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def idle_once(tree: Path, folder: Path, count: int, args: argparse.Namespace) -> dict[str, float]:
    extra = {
        "CQKD_HEALTH_INTERVAL": str(args.interval),
        "CQKD_MAX_PER_IP": "100000",
        "CQKD_MAX_PER_NET24": "100000",
    }
    ports = free_udp_ports(count)
    nodes = [Node(tree, folder, "boot", ports[0], "bootstrap", extra=extra)]
    try:
        nodes[0].ready()
        join = f"127.0.0.1:{ports[0]}"
        nodes += [
            Node(tree, folder, f"w{i}", port, "worker", join, extra)
            for i, port in enumerate(ports[1:])
        ]
        for node in nodes[1:]:
            node.ready()
        time.sleep(args.settle_rounds * args.interval)  # past every staleness threshold
        before = [cpu_seconds(node.proc.pid) for node in nodes]
        start = time.monotonic()
        time.sleep(args.window)  # the measure: what the nodes do while nobody asks
        after = [cpu_seconds(node.proc.pid) for node in nodes]
        elapsed = time.monotonic() - start
    finally:
        for node in nodes:
            node.stop()
    cores = (sum(after) - sum(before)) / elapsed
    boot = (after[0] - before[0]) / elapsed
    scale = (1000 / count) * (args.interval / DEFAULT_INTERVAL)
    return {
        "cores": cores,
        "bootstrap_cores": boot,
        "workers_cores": cores - boot,
        "cores_per_1000_at_10s": cores * scale,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", required=True, help="the git revision to compare with")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="CQKD_HEALTH_INTERVAL, s")
    parser.add_argument("--settle-rounds", type=int, default=70)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cqkd-idle-") as tmp:
        work = Path(tmp)
        trees = {"this tree": REPO, args.baseline_ref: export(args.baseline_ref, work)}
        results = {}
        for name, tree in trees.items():
            folder = work / name.replace(" ", "-")
            folder.mkdir()
            print(f"{name}: {args.nodes} nodes at rest ...", file=sys.stderr, flush=True)
            results[name] = idle_once(tree, folder, args.nodes, args)
    now, then = results["this tree"], results[args.baseline_ref]
    print(
        f"\n{args.nodes} nodes on loopback at rest, CQKD_HEALTH_INTERVAL={args.interval:g} s, "
        f"{args.window:g} s measured after {args.settle_rounds} rounds"
    )
    print(f"{'cores (utime+stime)':<34} {'this tree':>10} {args.baseline_ref:>12} {'ratio':>7}")
    for key in ("cores", "bootstrap_cores", "workers_cores", "cores_per_1000_at_10s"):
        ratio = f"{now[key] / then[key]:.2f}x" if then[key] else "-"
        print(f"{key:<34} {now[key]:>10.4f} {then[key]:>12.4f} {ratio:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
