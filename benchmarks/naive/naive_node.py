"""A Kademlia node as an operator writes it without cqkd-stack (the bare baseline).

Port = BASE_PORT + TASK_SLOT - 1 (bootstrap 5678, workers 7000 + slot - 1).
Workers resolve the bootstrap service by name (kademlia's bootstrap takes IP
addresses only) and bootstrap through it, both in a retry loop until the node
has found somebody: Docker's DNS lists the bootstrap as soon as its task runs,
before its Python has bound the port, so a single attempt can come back empty
and leave the node alone for good. No health check, no signal handling, no
backoff: deliberately naive.
"""

import asyncio
import os
import socket

from kademlia.network import Server

ROLE = os.environ.get("CQKD_ROLE", "worker")
PORT = int(os.environ.get("BASE_PORT", "7000")) + int(os.environ.get("TASK_SLOT", "1")) - 1


async def main():
    server = Server()
    await server.listen(PORT)
    print(f"{ROLE} listening on udp/{PORT}", flush=True)
    if ROLE != "bootstrap":
        while True:
            try:
                address = socket.gethostbyname("bootstrap")
            except OSError:
                await asyncio.sleep(1)
                continue
            if await server.bootstrap([(address, 5678)]):
                break
            await asyncio.sleep(1)
        print(f"bootstrapped through {address}:5678", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
