"""A value after its holders die: with a republish interval fit for tests, and with the default.

For each interval, a fresh stack (``--workers`` workers, bootstrap, Alice and
Bob, its own free subnet) is rendered with ``CQKD_REPUBLISH_INTERVAL`` set on
every DHT service, deployed with ``deploy --file``, checked with ``dht-check
--kill-holders --timeout T`` and torn down. One row per run: holders found
and killed, tasks still holding the value after the kill, the result and how
long Bob took to read it again. The default interval (3600 s) is the
baseline: nothing but the publisher's republish can bring the value back,
so there the read should never succeed within the timeout.

Needs the engine and the node image (``cqkd-stack setup``); run it under
the shared engine's lock:

    flock /tmp/cqkd-docker.lock python benchmarks/kill_holders.py [--workers 24] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from cqkd_stack import DEFAULT_NODE_IMAGE
from cqkd_stack.core.policy import load_policy
from cqkd_stack.host import images
from cqkd_stack.live.client import connect
from cqkd_stack.live.inspection import free_subnet, taken_subnets
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def cqkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True
    )


def one_run(workers: int, interval: str, timeout: int, folder: Path) -> dict[str, Any]:
    client = connect()
    subnet = str(free_subnet(taken_subnets(client), workers + 3))
    client.close()
    options = RenderOptions(workers, DEFAULT_NODE_IMAGE, subnet=subnet)
    doc = yaml.safe_load(render(load_policy(), options))
    for service in doc["services"].values():
        service["environment"]["CQKD_REPUBLISH_INTERVAL"] = interval
    path = folder / f"stack-{interval}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        deployed = cqkd("deploy", "--file", str(path), "-s", name, "-t", "300")
        if deployed.returncode != 0:
            raise SystemExit(f"deploy failed: {deployed.stderr[-500:]}")
        start = time.monotonic()
        done = cqkd("dht-check", "--kill-holders", "-s", name, "-t", str(timeout), "-f", "json")
        if not done.stdout.strip():
            raise SystemExit(f"dht-check --kill-holders failed: {done.stderr[-800:]}")
        result = json.loads(done.stdout)
        result["exit_code"] = done.returncode
        result["check_seconds"] = round(time.monotonic() - start, 1)
        return result
    finally:
        cqkd("teardown", "-s", name, "-t", "300")
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--interval", default="5", help="the test interval (s)")
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--runs", type=int, default=1, help="runs per interval")
    args = parser.parse_args()
    # The node image of this tree: another tree's build may have replaced the tag.
    images.ensure_images()
    print(
        f"{args.workers} workers, bootstrap, alice, bob; dht-check --kill-holders -t {args.timeout}"
    )
    print(
        "| interval | holders / killed | holding after | bootstrap killed | result | read again |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for interval in (args.interval, "3600"):
            for _ in range(args.runs):
                r = one_run(args.workers, interval, args.timeout, Path(tmp))
                again = f"{r['seconds_to_read']} s ({r['reads']} reads)" if r["ok"] else "-"
                result = "ok" if r["ok"] else f"FAIL ({r['reads']} reads: {r['last_error']})"
                print(
                    f"| {interval} s | {len(r['holders'])} / {len(r['killed'])} | "
                    f"{len(r['survivors_holding'])} | {'bootstrap.1' in r['killed']} | "
                    f"{result} | {again} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
