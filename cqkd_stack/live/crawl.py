"""Crawl a stack's routing tables from inside its network: the `crawl` task's engine side.

The tasks to ask are the port map's running tasks (the Docker API's
addresses, never a name); the crawler (node/crawler.py) runs where the
probe runs (live/readiness.py's ``Prober``): in this process over a socket
made in a local task's network namespace, else in a probe container of the
node image, as ``python3 -m cqkd_stack.node.crawler``. What the tables mean
is core/dhtmap.py's, so it is tested without an engine.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from .. import DEFAULT_NODE_IMAGE
from ..core.dhtmap import CrawlTarget, DhtMap, analyse
from ..core.errors import CqkdError
from .readiness import Prober, ignores_probe, start_with_retries

if TYPE_CHECKING:
    import docker

    from .inspection import TaskPort

# As the probe's one-off check: three sends of 1.5 s before an RPC counts as lost.
CRAWL_RPC_TIMEOUT = 1.5
CRAWL_ATTEMPTS = 3
# The whole crawl's deadline; a node unfinished by then counts as silent.
CRAWL_TIMEOUT = 120.0
CRAWLER_MODULE = "cqkd_stack.node.crawler"


def crawl_targets(rows: list[TaskPort]) -> list[CrawlTarget]:
    """The running DHT tasks with an address and a port: the only ones the crawler asks."""
    return [
        CrawlTarget(r.service, r.role, r.slot, r.address, r.port)
        for r in rows
        if r.state == "running" and r.address and r.port is not None
    ]


def crawl_stack(
    client: docker.DockerClient,
    stack: str,
    rows: list[TaskPort],
    image: str = DEFAULT_NODE_IMAGE,
    lookups: int = 10,
    keys: int = 10,
    seed: int | None = None,
    allow_in_process: bool = True,
) -> DhtMap:
    """Read every running task's table and say what they prove (see core/dhtmap.py).

    ``allow_in_process=False`` crawls from a probe container even where this
    process could enter a task's namespace (the tests take both ways).
    """
    targets = crawl_targets(rows)
    if not targets:
        raise CqkdError(f"stack '{stack}' has no running DHT task to crawl")
    texts = [t.text for t in targets]
    # Our node verifies the crawler's address and keeps no contact of it; a
    # stock node would keep the crawler's handshake id, so it is not sent.
    handshake = ignores_probe(client, stack)
    start = time.monotonic()
    with Prober(client, stack, image, allow_in_process=allow_in_process) as prober:
        start_with_retries(prober)
        crawl_start = time.monotonic()
        if prober.in_process:
            answers = _crawl_here(prober, texts, handshake, seed)
            method = "in-process"
        else:
            answers = _crawl_in_container(prober, texts, handshake)
            method = "container"
        crawl_seconds = time.monotonic() - crawl_start
    result = analyse(stack, targets, answers, lookups, keys, random.Random(seed))
    result.seconds = crawl_seconds
    result.method = method
    result.total_seconds = time.monotonic() - start
    return result


def _crawl_here(
    prober: Prober, texts: list[str], handshake: bool, seed: int | None
) -> dict[str, Any]:
    import asyncio
    import logging

    from ..node import crawler
    from ..node.probe import parse_target

    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    targets = [parse_target(text) for text in texts]
    try:
        sock = prober.namespace.udp_socket() if prober.namespace is not None else None
        return asyncio.run(
            crawler.crawl(
                targets,
                timeout=CRAWL_TIMEOUT,
                rpc_timeout=CRAWL_RPC_TIMEOUT,
                attempts=CRAWL_ATTEMPTS,
                handshake=handshake,
                sock=sock,
                seed=seed,
            )
        )
    except OSError as exc:
        raise CqkdError(f"cannot crawl from task {prober.via or 'host'}: {exc}") from None


def _crawl_in_container(prober: Prober, texts: list[str], handshake: bool) -> dict[str, Any]:
    """The crawler in the probe container: needs a node image that has it."""
    command = [
        "python3",
        "-m",
        CRAWLER_MODULE,
        "--rpc-timeout",
        str(CRAWL_RPC_TIMEOUT),
        "--attempts",
        str(CRAWL_ATTEMPTS),
        "--timeout",
        str(CRAWL_TIMEOUT),
        *([] if handshake else ["--no-handshake"]),
        *texts,
    ]
    try:
        return prober.run_in_container(command, "the crawler")
    except CqkdError as exc:
        if f"No module named {CRAWLER_MODULE}" in exc.message:
            raise CqkdError(
                f"the probe container's image ({prober.image}) has no crawler: it was built "
                "before `crawl` existed; rebuild it with `cqkd-stack setup`, or run `crawl` as "
                "root with the node extra (pip install 'cqkd-stack[node]') to crawl from this "
                "process"
            ) from None
        raise
