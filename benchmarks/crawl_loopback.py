"""How long `crawl` takes: the crawler against N real nodes on loopback, and the analysis.

Issue 21 sets a target of 10 s for a crawl of 1000 nodes. This starts
``--nodes`` plain nodes on loopback (one bootstrap, the rest workers; the
per-IP caps lifted since all share 127.0.0.1), waits until they joined,
then crawls them ``--runs`` times with the crawler `crawl` uses
(node/crawler.py, 128 nodes at a time) and prints, per run and as the
median: the crawl's seconds, the RPCs sent, the tables read, and the
analysis's seconds (core/dhtmap.py, 10 x 10 lookups replayed). On loopback
every address is 9 characters, so no answer is cut to the reply budget
(on an overlay a full bucket is asked twice; see the crawler's docstring).

    python benchmarks/crawl_loopback.py [--nodes 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from node_cost import REPO, Node, free_udp_ports

sys.path.insert(0, str(REPO))

from cqkd_stack.core.dhtmap import CrawlTarget, analyse
from cqkd_stack.node import crawler
from cqkd_stack.node.probe import parse_target

LIFTED = {"CQKD_MAX_PER_IP": "100000", "CQKD_MAX_PER_NET24": "100000"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    ports = free_udp_ports(args.nodes)
    with tempfile.TemporaryDirectory() as folder:
        nodes = [Node(REPO, Path(folder), "boot", ports[0], "bootstrap", extra=LIFTED)]
        nodes[0].ready()
        join = f"127.0.0.1:{ports[0]}"
        nodes += [
            Node(REPO, Path(folder), f"w{n}", port, "worker", join, extra=LIFTED)
            for n, port in enumerate(ports[1:], 1)
        ]
        try:
            for node in nodes[1:]:
                node.ready()
            texts = [f"127.0.0.1:{port}" for port in ports]
            targets = [
                CrawlTarget("bench_worker", "bootstrap" if i == 0 else "worker", i, "127.0.0.1", p)
                for i, p in enumerate(ports)
            ]
            rows = []
            for run in range(1, args.runs + 1):
                start = time.perf_counter()
                answers = asyncio.run(crawler.crawl([parse_target(t) for t in texts]))
                seconds = time.perf_counter() - start
                start = time.perf_counter()
                result = analyse("bench", targets, answers, 10, 10, random.Random(run))
                analysis = time.perf_counter() - start
                rpcs = sum(1 + a["queries"] for a in answers.values() if a)
                rows.append((seconds, rpcs, result.answered, analysis))
                print(
                    f"run {run}: crawl {seconds:.2f} s, {rpcs} RPCs, {result.answered}/"
                    f"{len(targets)} tables (contacts {result.table_min}/"
                    f"{result.table_median:g}/{result.table_max}), components "
                    f"{result.components}, lookups {result.lookups.succeeded}/"
                    f"{result.lookups.lookups}; analysis {analysis:.2f} s"
                )
        finally:
            for node in nodes:
                node.stop()
    print(
        f"median of {args.runs} at {args.nodes} nodes: crawl "
        f"{statistics.median(r[0] for r in rows):.2f} s, "
        f"{statistics.median(r[1] for r in rows):.0f} RPCs, analysis "
        f"{statistics.median(r[3] for r in rows):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
