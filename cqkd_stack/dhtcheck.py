"""Prove the DHT works end to end: Alice stores a value, Bob reads it back.

Both run inside the nodes' own containers through the node's control socket
(``nodectl``), and Bob's read always goes to the network (the node never
answers from its own storage), so success means a real Kademlia store and
lookup crossed the overlay network.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CqkdError
from .swarm import stack_filter

if TYPE_CHECKING:
    import docker

NODECTL = ["python3", "-m", "cqkd_stack.nodectl"]


@dataclass
class DhtCheck:
    key: str
    value: str
    stored_by: str
    read_by: str
    set_seconds: float
    get_seconds: float
    round_trip_seconds: float


def _container(client: docker.DockerClient, stack: str, service: str) -> Any:
    """The running container of a one-replica service on this node."""
    tasks = client.api.tasks(
        filters={**stack_filter(stack), "service": f"{stack}_{service}", "desired-state": "running"}
    )
    for task in tasks:
        status = task.get("Status", {})
        container_id = status.get("ContainerStatus", {}).get("ContainerID")
        if status.get("State") == "running" and container_id:
            try:
                return client.containers.get(container_id)
            except Exception as exc:  # on another node: the local engine cannot see it
                raise CqkdError(
                    f"{stack}_{service} runs in container {container_id[:12]}, which this "
                    f"engine cannot reach ({exc}); run dht-check on that node"
                ) from None
    raise CqkdError(f"{stack}_{service} has no running task; is the stack deployed and healthy?")


def _nodectl(container: Any, *args: str) -> dict[str, Any]:
    code, output = container.exec_run([*NODECTL, *args])
    text = output.decode(errors="replace").strip()
    try:
        reply = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        reply = {}
    if not reply:
        raise CqkdError(f"nodectl {' '.join(args[:1])} in {container.name} said: {text or code}")
    reply["exit_code"] = code
    return reply


def dht_check(
    client: docker.DockerClient, stack: str, alice: str = "alice", bob: str = "bob"
) -> DhtCheck:
    key = f"cqkd-check-{secrets.token_hex(6)}"
    value = secrets.token_hex(16)
    writer, reader = _container(client, stack, alice), _container(client, stack, bob)
    start = time.monotonic()
    stored = _nodectl(writer, "set", key, value)
    if not stored.get("ok") or stored["exit_code"] != 0:
        raise CqkdError(f"{alice} could not store {key}: {stored.get('error', stored)}")
    got = _nodectl(reader, "get", key)
    elapsed = time.monotonic() - start
    if got.get("value") != value:
        raise CqkdError(
            f"{bob} read {key} back as {got.get('value')!r}, expected {value!r} "
            f"({got.get('error', 'the value did not travel through the DHT')})"
        )
    return DhtCheck(
        key=key,
        value=value,
        stored_by=alice,
        read_by=bob,
        set_seconds=float(stored.get("seconds", 0.0)),
        get_seconds=float(got.get("seconds", 0.0)),
        round_trip_seconds=elapsed,
    )
