"""How long and how much memory `cqkd-stack validate` takes to refuse hostile input.

Each input is written to a temporary file and validated in a fresh process
(as CI runs the linter), five times; the script prints the median wall time
and the peak resident memory (from /usr/bin/time) next to the same figures
for the baseline, a valid rendered stack of 1000 workers. The project's
bound: no input takes more than a second or a few tens of MB more than the
baseline to refuse.

    python benchmarks/hostile.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cqkd_stack.core.policy import load_policy
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.compose import render_compose
from cqkd_stack.targets.kubernetes import render_kubernetes
from cqkd_stack.targets.swarm import render


def _dense(services: int) -> str:
    lines = ['version: "3.8"', "services:"]
    lines += [f'  s{i}: {{image: "x", ports: ["{8000 + i % 50000}:80"]}}' for i in range(services)]
    return "\n".join(lines) + "\n"


def _compose_file(services: int) -> str:
    lines = ['version: "3.8"', "services:"]
    for i in range(services):
        lines += [
            f"  w{i}:",
            '    image: "cqkd-dht-node:latest"',
            f'    environment: {{CQKD_ROLE: worker, WORKER_ID: "{i + 1}", BASE_PORT: "7000"}}',
            f"    ports: [{{target: {7000 + i}, published: {7000 + i}, "
            "protocol: udp, mode: host}]",
            "    deploy: {replicas: 1, labels: {cqkd.role: worker}}",
        ]
    return "\n".join(lines) + "\n"


def _compose_target(services: int, fields: int) -> str:
    """A file marked as a compose target, every service distinct, ``fields`` env entries each."""
    lines = ["x-cqkd-target: compose", "services:"]
    for i in range(services):
        env = ", ".join(f"E{j}: '{i}-{j}'" for j in range(fields))
        lines.append(
            f"  s{i}: {{image: 'x{i}', environment: {{{env}}}, ports: ['{20000 + i}:80']}}"
        )
    return "\n".join(lines) + "\n"


def _compose_aliases() -> str:
    """One environment of 9,000 entries under an anchor, used by 4 services: ~72,000 nodes."""
    env = ", ".join(f"E{j}: '{j}'" for j in range(9_000))
    lines = ["x-cqkd-target: compose", f"x-env: &env {{{env}}}", "services:"]
    lines += [f"  s{i}: {{image: x, environment: *env}}" for i in range(4)]
    return "\n".join(lines) + "\n"


def _manifests(documents: int, labels: int) -> str:
    """ConfigMaps, each with ``labels`` distinct data entries."""
    doc = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m{i}}}\ndata: {{{data}}}\n"
    data = ", ".join(f"k{j}: v{j}" for j in range(labels))
    return "".join(doc.format(i=i, data=data) for i in range(documents))


def _bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("services: {s: {image: x, labels: *j}}")
    return "\n".join(lines) + "\n"


Files = dict[str, bytes | None]  # beside the stack: name -> content, None for a FIFO


def _env_files(services: int, size: int) -> tuple[str, Files]:
    """Services with an env file of ``size`` bytes each (16-byte lines)."""
    line = b"V" + b"x" * 6 + b"=" + b"1" * 8 + b"\n"  # 16 bytes
    body = line * (size // len(line))
    lines = ["services:"] + [f"  s{i}: {{image: x, env_file: e{i}.env}}" for i in range(services)]
    lines.append("networks: {default: {ipam: {config: [{subnet: 10.9.0.0/20}]}}}")
    return "\n".join(lines) + "\n", {f"e{i}.env": body for i in range(services)}


def _unreadable_env_files() -> tuple[str, Files]:
    text = "services:\n  s: {image: x, env_file: [/dev/zero, fifo.env, /dev/stdin]}\n"
    return text, {"fifo.env": None}


def _shared_bad_anchor(services: int) -> str:
    lines = ["x-s: &s {image: x, stop_grace_period: 5 seconds}", "services:"]
    return "\n".join([*lines, *(f"  s{i}: *s" for i in range(services))]) + "\n"


def _many_variables(services: int, variables: int) -> tuple[str, Files]:
    """One env file of ``variables`` lines shared by ``services``: copies past the bound."""
    lines = ["x-s: &s {image: x, env_file: shared.env}", "services:"]
    lines += [f"  s{i}: *s" for i in range(services)]
    env = "".join(f"V{j}=1\n" for j in range(variables)).encode()
    return "\n".join(lines) + "\n", {"shared.env": env}


def inputs() -> dict[str, str | tuple[str, Files]]:
    stack = render(load_policy(), RenderOptions(replicas=1000))
    compose = render_compose(load_policy(), RenderOptions(replicas=1000))
    return {
        "baseline: rendered 1000-worker stack (valid)": stack,
        "render --target compose, 1000 workers (valid)": compose,
        # 1000 services of 9 + 2 * 5 nodes: just under the node bound, every value distinct.
        "compose target: 1000 distinct services at the node bound": _compose_target(1000, 5),
        "compose target: aliases expanded to the bound": _compose_aliases(),
        "compose target: 2049 services (over the service bound)": _compose_target(2049, 0),
        "compose target: 1 MiB of one-line services": _compose_target(30_000, 0)[: 1024 * 1024],
        "1000 services, one per worker (compose-style)": _compose_file(1000),
        "render --target kubernetes, 1000 workers (valid)": render_kubernetes(load_policy(), 1000),
        "kubernetes: 12 documents of 13,000 nodes in 1 MiB": _manifests(12, 6_300),
        # 12 x ~830 nodes: each document just under its share of the node bound.
        "kubernetes: 12 documents at both bounds": _manifests(12, 410),
        "kubernetes: 15,000 tiny documents in 1 MiB": _manifests(14_000, 1),
        "billion laughs (9 levels of 9 aliases)": _bomb(),
        "nested 100,000 brackets deep": "services: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "1 MiB of one-line services": _dense(20_000)[: 1024 * 1024 - 64],
        "4 MiB of one-line services (over the size limit)": _dense(95_000),
        "an anchor with a bad value shared by 1000 services (one problem)": _shared_bad_anchor(
            1000
        ),
        # 480 x 62 variables: just under the bound of 30,000 variables.
        "env_file: 480 services, one 1000-byte env file each (valid, at the bound)": (
            _env_files(480, 1000)
        ),
        "env_file: 1100 services, one 1000-byte env file each (over 1 MiB together)": (
            _env_files(1100, 1000)
        ),
        "env_file: /dev/zero, a FIFO, /dev/stdin": _unreadable_env_files(),
        "env_file: one file of 100 variables shared by 2000 services (over the bound)": (
            _many_variables(2000, 100)
        ),
    }


def measure(path: Path, runs: int) -> tuple[float, int, int]:
    """Median seconds, peak KB (largest run), exit code of `cqkd-stack validate path`."""
    seconds, peaks, code = [], [], 0
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "cqkd_stack", "validate"]
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([*command, str(path)], capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        peaks.append(int(done.stderr.strip().splitlines()[-1]))
        code = done.returncode
    return statistics.median(seconds), max(peaks), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"| input | exit | median s ({args.runs} runs) | peak MB |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, given) in enumerate(inputs().items()):
            folder = Path(tmp) / str(number)
            folder.mkdir()
            text, files = given if isinstance(given, tuple) else (given, {})
            for file, content in files.items():
                if content is None:
                    os.mkfifo(folder / file)
                else:
                    (folder / file).write_bytes(content)
            path = folder / "stack.yml"
            path.write_text(text)
            seconds, peak_kb, code = measure(path, args.runs)
            print(f"| {name} | {code} | {seconds:.2f} | {peak_kb / 1024:.0f} |")


if __name__ == "__main__":
    main()
