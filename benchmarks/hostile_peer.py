"""What one hostile peer gets out of a node: ours against the stock ``kademlia`` Server.

No containers: each side is a small DHT of real processes on loopback (a
target and ``--helpers`` nodes joined to it, one value stored), ours started
as the image starts it (``python -m cqkd_stack.node``), the stock one as a
``kademlia.network.Server`` in its own interpreter. The attacker is a raw
UDP socket that never answers anything, so it is what a spoofed source
looks like. Three figures, each for ours and for stock from the same inputs:

1. amplification: bytes sent by the attacker for ``--amp-count`` requests of
   each kind, bytes that came back to its address, and the factor (what a
   reflector gives an attacker who spoofs a victim's address);
2. CPU seconds of the target process (``/proc/PID/stat`` utime + stime) for
   ``--cpu-count`` datagrams of each kind, and per datagram (a fresh source
   port every 50, so the per-source rate limit does not hide the work);
3. an honest peer's ping latency (median, p95, lost) while a second process
   floods the target with pings as fast as it can for ``--seconds``.

    python benchmarks/hostile_peer.py [--seconds 10] [--helpers 5]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import umsgpack

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KEY = "hostile-peer-bench"
VALUE = "v" * 400
KINDS = ("ping", "store", "find_node", "find_value")

# The stock node: a kademlia Server on loopback, optionally joined to a
# bootstrap and storing one value, then serving until killed.
STOCK_NODE = """
import asyncio, sys
from kademlia.network import Server
async def main(port, boot, key, value):
    server = Server()
    await server.listen(port, interface="127.0.0.1")
    if boot:
        await server.bootstrap([("127.0.0.1", boot)])
        if key:
            await server.set(key, value)
    print("ready", flush=True)
    await asyncio.Future()
port, boot = int(sys.argv[1]), int(sys.argv[2])
asyncio.run(main(port, boot, sys.argv[3], sys.argv[4]))
"""

# The flooder: one socket sending pings to the target as fast as it can.
FLOODER = """
import os, socket, sys, time
import umsgpack
port, seconds = int(sys.argv[1]), float(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
body = umsgpack.packb(["ping", [os.urandom(20)]])
end = time.monotonic() + seconds
sent = 0
while time.monotonic() < end:
    try:
        sock.sendto(b"\\x00" + os.urandom(20) + body, ("127.0.0.1", port))
        sent += 1
    except BlockingIOError:
        pass
print(sent)
"""


def free_udp_ports(count: int) -> list[int]:
    """Ports the kernel just handed out (held together so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def node_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CQKD_", "DHT_", "JOIN_", "BOOTSTRAP_", "TASK_", "BASE_PORT"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


@contextlib.contextmanager
def our_dht(helpers: int) -> Iterator[tuple[int, int]]:
    """A bootstrap node (the target) and ``helpers`` workers; yields (port, pid)."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cqkd-hostile-") as tmp:
        ports = free_udp_ports(helpers + 1)

        def start(index: int, role: str, boot: str) -> Path:
            health = Path(tmp) / f"n{index}.health"
            env = node_env(
                {
                    "CQKD_ROLE": role,
                    "DHT_PORT": str(ports[index]),
                    "BIND_HOST": "127.0.0.1",
                    "BOOTSTRAP_NODES": boot,
                    "CQKD_HEALTH_FILE": str(health),
                    "CQKD_CONTROL_SOCKET": str(Path(tmp) / f"n{index}.sock"),
                }
            )
            procs.append(
                subprocess.Popen(
                    [PYTHON, "-m", "cqkd_stack.node"],
                    env=env,
                    cwd=REPO_ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            return health

        try:
            wait_for(start(0, "bootstrap", "").exists, 10, "our bootstrap")
            healths = [start(i, "worker", f"127.0.0.1:{ports[0]}") for i in range(1, helpers + 1)]
            wait_for(lambda: all(h.exists() for h in healths), 20, "our workers to join")
            subprocess.run(
                [
                    PYTHON,
                    "-m",
                    "cqkd_stack.nodectl",
                    "--socket",
                    str(Path(tmp) / "n1.sock"),
                    "set",
                    KEY,
                    VALUE,
                ],
                env=node_env({}),
                cwd=REPO_ROOT,
                capture_output=True,
                timeout=30,
                check=True,
            )
            yield ports[0], procs[0].pid
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def stock_dht(helpers: int) -> Iterator[tuple[int, int]]:
    """The same DHT of stock kademlia Servers; yields the target's (port, pid)."""
    procs: list[subprocess.Popen[str]] = []
    ports = free_udp_ports(helpers + 1)

    def start(port: int, boot: int, key: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [PYTHON, "-c", STOCK_NODE, str(port), str(boot), key, VALUE],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        return proc

    try:
        for index, port in enumerate(ports):
            proc = start(port, ports[0] if index else 0, KEY if index == 1 else "")
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a stock kademlia node did not start")
        yield ports[0], procs[0].pid
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def request(kind: str) -> bytes:
    """One attacker request of ``kind``, with a fresh sender id and key."""
    sender = os.urandom(20)
    if kind == "ping":
        args: list[Any] = [sender]
    elif kind == "store":
        args = [sender, os.urandom(20), "x" * 400]
    elif kind == "find_node":
        args = [sender, os.urandom(20)]
    else:
        args = [sender, hashlib.sha1(KEY.encode()).digest()]
    return b"\x00" + os.urandom(20) + umsgpack.packb([kind, args])


def drain(sock: socket.socket, quiet: float) -> int:
    """Bytes received until nothing came for ``quiet`` seconds."""
    total = 0
    sock.settimeout(quiet)
    while True:
        try:
            total += len(sock.recv(70000))
        except TimeoutError:
            return total


def amplification(port: int, count: int) -> dict[str, tuple[int, int]]:
    """Per kind: (bytes sent, bytes back) for ``count`` requests from one fresh socket."""
    result = {}
    for kind in KINDS:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sent = 0
        for _ in range(count):
            datagram = request(kind)
            sock.sendto(datagram, ("127.0.0.1", port))
            sent += len(datagram)
            time.sleep(0.002)  # below the per-source rate: the factor, not the limiter
        result[kind] = (sent, drain(sock, 0.5))
        sock.close()
    return result


def cpu_cost(port: int, pid: int, count: int) -> dict[str, float]:
    """Per kind: the target's CPU seconds for ``count`` datagrams sent in bursts."""
    result = {}
    for kind in KINDS:
        # A fresh source port every 50 datagrams (under the per-source burst):
        # every request is served, so this is the work a request costs, not
        # the cost of refusing one over the rate.
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count // 50)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        datagrams = [request(kind) for _ in range(len(socks) * 50)]
        before = cpu_seconds(pid)
        for index, datagram in enumerate(datagrams):
            socks[index // 50].sendto(datagram, ("127.0.0.1", port))
            if index % 50 == 49:
                time.sleep(0.002)  # let the kernel buffer drain: count work, not drops
        time.sleep(0.5)
        result[kind] = cpu_seconds(pid) - before
        for sock in socks:
            sock.close()
    return result


def latency_under_flood(port: int, seconds: float) -> tuple[float, float, int, int, int]:
    """Honest pings (20/s) during a flood: median ms, p95 ms, lost, sent, flood datagrams."""
    flooder = subprocess.Popen(
        [PYTHON, "-c", FLOODER, str(port), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=node_env({}),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    honest_id = os.urandom(20)
    pending: dict[bytes, float] = {}
    rtts: list[float] = []
    sent = 0
    time.sleep(0.2)  # the flood is on before the first honest ping
    end = time.monotonic() + seconds - 0.4
    next_ping = time.monotonic()
    while time.monotonic() < end or (pending and time.monotonic() < end + 1.0):
        now = time.monotonic()
        if now >= next_ping and now < end:
            msgid = os.urandom(20)
            sock.sendto(
                b"\x00" + msgid + umsgpack.packb(["ping", [honest_id]]), ("127.0.0.1", port)
            )
            pending[msgid] = now
            sent += 1
            next_ping = now + 0.05
        try:
            data, address = sock.recvfrom(70000)
        except TimeoutError:
            continue
        if data[:1] == b"\x01" and data[1:21] in pending:
            rtts.append((time.monotonic() - pending.pop(data[1:21])) * 1000)
        elif data[:1] == b"\x00":  # the node verifying us: an honest peer answers
            sock.sendto(b"\x01" + data[1:21] + umsgpack.packb(honest_id), address)
    out, _ = flooder.communicate(timeout=seconds + 10)
    sock.close()
    if not rtts:
        return float("nan"), float("nan"), sent, sent, int(out)
    rtts.sort()
    p95 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.95))]
    return statistics.median(rtts), p95, sent - len(rtts), sent, int(out)


def measure(dht: Any, args: argparse.Namespace) -> dict[str, Any]:
    with dht(args.helpers) as (port, pid):
        return {
            "amp": amplification(port, args.amp_count),
            "cpu": cpu_cost(port, pid, args.cpu_count),
            "lat": latency_under_flood(port, args.seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration")
    parser.add_argument("--helpers", type=int, default=5, help="nodes joined to the target")
    parser.add_argument("--amp-count", type=int, default=50, help="requests per kind")
    parser.add_argument("--cpu-count", type=int, default=3000, help="datagrams per kind")
    args = parser.parse_args()
    results = {"ours": measure(our_dht, args), "stock": measure(stock_dht, args)}

    print(f"\n1. Amplification: {args.amp_count} requests per kind from one silent socket")
    print(
        f"{'kind':<11} {'sent B':>8} | {'ours back B':>11} {'factor':>7} | "
        f"{'stock back B':>12} {'factor':>7}"
    )
    for kind in KINDS:
        sent, ours = results["ours"]["amp"][kind]
        stock_sent, stock = results["stock"]["amp"][kind]
        print(
            f"{kind:<11} {sent:>8} | {ours:>11} {ours / sent:>7.2f} | "
            f"{stock:>12} {stock / stock_sent:>7.2f}"
        )

    print(f"\n2. Target CPU for {args.cpu_count} datagrams per kind (utime+stime)")
    print(f"{'kind':<11} {'ours s':>7} {'us/dgram':>9} | {'stock s':>7} {'us/dgram':>9} | ratio")
    for kind in KINDS:
        ours, stock = results["ours"]["cpu"][kind], results["stock"]["cpu"][kind]
        ratio = f"{stock / ours:.1f}x" if ours else "-"
        print(
            f"{kind:<11} {ours:>7.2f} {ours / args.cpu_count * 1e6:>9.1f} | "
            f"{stock:>7.2f} {stock / args.cpu_count * 1e6:>9.1f} | {ratio}"
        )

    print(
        f"\n3. Honest ping latency, 20 pings/s, while one source floods pings for "
        f"{args.seconds:g} s"
    )
    print(f"{'':<6} {'median ms':>9} {'p95 ms':>8} {'lost':>10} {'flood dgrams':>13}")
    for name in ("ours", "stock"):
        median, p95, lost, sent, flood = results[name]["lat"]
        shown = [f"{x:.2f}" if x == x else "-" for x in (median, p95)]  # NaN: none answered
        print(f"{name:<6} {shown[0]:>9} {shown[1]:>8} {f'{lost}/{sent}':>10} {flood:>13}")


if __name__ == "__main__":
    main()
