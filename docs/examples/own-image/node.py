"""A DHT node for cqkd-stack on the stock kademlia package (2.2.3).

Its port is the resolver's (the design's get_dynamic_port(), which reads
DHT_PORT once the resolver's entrypoint has exported it). Nodes other than
the bootstrap join through BOOTSTRAP_NODES (host:port, comma-separated):
kademlia takes IP addresses only, and a bootstrap's name resolves only once
its task runs, so both are retried until the node has a contact. That is
what `cqkd-stack deploy` waits for: every task answering a Kademlia
find_node at its own port with at least one contact.
"""

import asyncio
import contextlib
import os
import signal
import socket

from cqkd_resolver import get_dynamic_port
from kademlia.network import Server


def bootstrap_addresses() -> list[tuple[str, int]]:
    found = []
    for item in os.environ.get("BOOTSTRAP_NODES", "").split(","):
        host, _, port = item.strip().rpartition(":")
        if host:
            with contextlib.suppress(OSError):  # not in DNS yet: its task is not running
                found.append((socket.gethostbyname(host), int(port)))
    return found


async def join(server: Server) -> None:
    while not server.protocol.router.find_neighbors(server.node):
        addresses = bootstrap_addresses()
        if addresses:
            await server.bootstrap(addresses)
        if not server.protocol.router.find_neighbors(server.node):
            await asyncio.sleep(1)


async def main() -> None:
    port = get_dynamic_port()
    server = Server()
    await server.listen(port)
    print(f"{os.environ.get('CQKD_ROLE', 'node')} listening on udp/{port}", flush=True)
    stop = asyncio.Event()
    # The stack runs an init in front; stop at once on its SIGTERM.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if os.environ.get("CQKD_ROLE") != "bootstrap":
        await join(server)
        print("joined the DHT", flush=True)
    await stop.wait()
    server.stop()


asyncio.run(main())
