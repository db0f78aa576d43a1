"""A multi-node swarm on one machine: Docker-in-Docker nodes on a private bridge.

Everything the toolkit promises for several nodes (images on every node,
inspection from any manager, tasks that move when a node is lost) has to be
tried and tested somewhere, and CI has one machine. So each "node" here is a
container running its own dockerd, all of them on one user-defined bridge
network, joined into one swarm; the host's images are copied into each.

The flags the node containers get are the ones measured to work on these
hosts (``../shared/swarm-field-notes.md``): ``--privileged`` fails here, and
nested containers need the host's cgroup tree mounted writable. A node's
``/var/lib/docker`` is a tmpfs, so its state dies with the container; PID 1
is therefore a small supervisor loop that restarts dockerd, and a fault test
can restart a node's *engine* (``docker exec NODE pkill dockerd``) without
losing the node.

Each inner engine listens on ``tcp://IP:2375`` without TLS. That is only
reachable from this machine, on the cluster's bridge; it is a test harness,
not a way to run a production swarm.

Everything created carries the label ``org.cqkd.cluster=<name>``, and
``cluster_down`` removes by that label, so it also cleans up after an ``up``
that failed half-way. ``cluster_up`` looks at what exists before acting, so
running it twice changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container

from .. import DEFAULT_NODE_IMAGE
from ..core.errors import CqkdError
from ..core.process import Say, run, say, tail
from ..live.distribution import ENGINE_LABEL, copy_image
from ..live.inspection import taken_subnets
from . import images
from .engine import PREFER_OFFLINE_ENV

CLUSTER_LABEL = "org.cqkd.cluster"
DEFAULT_NAME = "cqkd-cluster"

DIND_REPOSITORY = "cqkd-dind"
# procps: `pkill dockerd` (a fault test restarts a node's engine that way).
DIND_PACKAGES = ("docker.io", "iptables", "iproute2", "procps")
# PID 1 of a node (behind docker-init): dockerd again whenever it exits. The
# pause only keeps a daemon that cannot start from spinning a core.
SUPERVISOR = (
    "while :; do dockerd $CQKD_DOCKERD_ARGS; "
    'echo "cqkd: dockerd exited with status $?; starting it again" >&2; sleep 1; done'
)
DIND_CMD = ("sh", "-c", SUPERVISOR)

ENGINE_PORT = 2375
SWARM_PORT = 2377
# Node bridges come from here, one /24 each. Not 10/8: the inner swarms take
# their overlay networks from 10.0.0.0/8 (stacks from 10.213.0.0/16). Not
# 172.17-172.18: each inner engine makes docker0 and docker_gwbridge there.
SUBNET_POOL = ipaddress.IPv4Network("172.29.0.0/16")
SUBNET_PREFIX = 24

ENGINE_TIMEOUT = 120.0
READY_TIMEOUT = 120.0
_POLL_INTERVAL = 0.25
# Copying an image and tarring a node's rootfs can take minutes.
_API_TIMEOUT = 900
# Each copy is a `docker save` on the host: a few at once, not one per node.
_PARALLEL_COPIES = 4


@dataclass(frozen=True)
class ClusterNode:
    """One Docker-in-Docker node: its container, address and swarm identity."""

    container: str
    address: str
    engine_url: str
    node_id: str
    role: str  # "manager" or "worker"


@dataclass
class Cluster:
    """A running cluster: where its manager is, its nodes, and how long ``up`` took."""

    name: str
    manager_url: str
    subnet: str
    nodes: list[ClusterNode]
    images: dict[str, str] = field(default_factory=dict)  # image -> id on every node
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    done: list[str] = field(default_factory=list)


@dataclass
class Removed:
    """What ``cluster_down`` removed (all empty: there was nothing to remove)."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    context: str = ""
    seconds: float = 0.0


# --- the node image ---------------------------------------------------------------


def dind_inputs_hash(release: images.BaseRelease) -> str:
    """Everything that decides the DinD image's content: a changed recipe rebuilds."""
    recipe = [release.family, release.suite, DIND_PACKAGES, DIND_CMD]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()


def ensure_dind_image(
    client: docker.DockerClient,
    progress: Say | None = None,
    *,
    suite: str | None = None,
    mirror: str | None = None,
) -> tuple[str, bool]:
    """``cqkd-dind:<suite>``, debootstrapped and imported unless current; (tag, built).

    Built like the base image (no registry: packages from the host's mirror),
    and checked like the node image, by a hash of its recipe in a label.
    """
    host = images.host_release()
    release = images.base_release(host, suite)
    tag = f"{DIND_REPOSITORY}:{release.suite}"
    inputs = dind_inputs_hash(release)
    existing = images.find_image(client, tag)
    if existing is not None and existing.labels.get(images.HASH_LABEL) == inputs:
        return tag, False
    mirror = mirror or images.host_mirror(release, host)
    images.build_rootfs_image(
        client,
        tag,
        release,
        mirror,
        packages=DIND_PACKAGES,
        labels={images.HASH_LABEL: inputs},
        cmd=DIND_CMD,
        progress=progress,
    )
    if existing is not None:
        # The old recipe's image is untagged now; a running node keeps it.
        with suppress(docker.errors.APIError):
            client.images.remove(existing.id)
    return tag, True


# --- pure decisions (unit-tested) ---------------------------------------------


def choose_subnet(
    taken: Iterable[ipaddress.IPv4Network],
    pool: ipaddress.IPv4Network = SUBNET_POOL,
    prefix: int = SUBNET_PREFIX,
) -> ipaddress.IPv4Network:
    """The first /``prefix`` of ``pool`` that overlaps nothing in ``taken``."""
    taken = list(taken)
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    raise CqkdError(f"no free /{prefix} left in {pool} for a cluster network; remove one")


def route_subnets(text: str) -> list[ipaddress.IPv4Network]:
    """The destinations of ``/proc/net/route`` (the default route left out).

    The cluster's bridge must not shadow a network the host already reaches.
    """
    subnets = []
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) < 8:
            continue
        with suppress(ValueError):
            dest = ipaddress.IPv4Address(bytes.fromhex(words[1])[::-1])
            mask = ipaddress.IPv4Address(bytes.fromhex(words[7])[::-1])
            network = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
            if network.prefixlen:
                subnets.append(network)
    return subnets


def node_names(name: str, nodes: int) -> list[str]:
    return [f"{name}-{index}" for index in range(1, nodes + 1)]


def dockerd_args(subnet: ipaddress.IPv4Network) -> list[str]:
    """The inner engine's command line: the local socket and TCP on the bridge.

    ``--tls=false`` says on purpose what the address implies (newer engines
    stall their start-up to warn about TCP without TLS unless told). The
    bridge is trusted as an insecure registry, so a registry container on it
    can serve every node.
    """
    return [
        "--host=unix:///var/run/docker.sock",
        f"--host=tcp://0.0.0.0:{ENGINE_PORT}",
        "--tls=false",
        f"--insecure-registry={subnet}",
    ]


def node_host_config(network: str) -> dict[str, Any]:
    """``create_host_config`` arguments of a node: the flags that work on these hosts.

    ``--privileged`` fails here ("unable to apply caps"), so a node gets
    every capability but SYS_RESOURCE, no seccomp or AppArmor profile, every
    device, and the host's cgroup tree writable (nested containers fail on a
    read-only one). ``init`` puts docker-init in front of the supervisor, to
    reap what dockerd leaves behind. The third security option the field
    notes name, ``systempaths=unconfined``, is :data:`UNMASKED_PATHS`.
    """
    return {
        "init": True,
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "device_cgroup_rules": ["a *:* rwm"],
        "binds": ["/sys/fs/cgroup:/sys/fs/cgroup:rw"],
        "tmpfs": {"/var/lib/docker": "exec"},
        "network_mode": network,
    }


# The docker CLI's `--security-opt systempaths=unconfined`: the CLI turns it
# into these two empty lists (nothing masked or read-only under /proc and
# /sys); the engine itself refuses it as a security option, so the SDK must
# send the lists.
UNMASKED_PATHS: dict[str, list[str]] = {"MaskedPaths": [], "ReadonlyPaths": []}


def node_environment(subnet: ipaddress.IPv4Network) -> dict[str, str]:
    """What the supervisor hands dockerd: its flags, and local images for tasks."""
    return {PREFER_OFFLINE_ENV: "1", "CQKD_DOCKERD_ARGS": " ".join(dockerd_args(subnet))}


def _start_node(
    client: docker.DockerClient,
    name: str,
    node: str,
    image: str,
    network: str,
    subnet: ipaddress.IPv4Network,
) -> Container:
    api = client.api
    host_config = api.create_host_config(**node_host_config(network))
    host_config.update(UNMASKED_PATHS)
    created = api.create_container(
        image,
        name=node,
        hostname=node,
        labels={CLUSTER_LABEL: name},
        environment=node_environment(subnet),
        host_config=host_config,
    )
    api.start(created["Id"])
    return client.containers.get(created["Id"])


def engine_url(address: str) -> str:
    return f"tcp://{address}:{ENGINE_PORT}"


# --- up ---------------------------------------------------------------------------


def cluster_up(
    client: docker.DockerClient,
    nodes: int = 3,
    name: str = DEFAULT_NAME,
    image: str = DEFAULT_NODE_IMAGE,
    progress: Say | None = None,
    *,
    managers: int = 1,
    engine_timeout: float = ENGINE_TIMEOUT,
) -> Cluster:
    """Start (or complete) cluster ``name`` of ``nodes`` nodes and load ``image`` into each.

    ``client`` is the host's engine. Each step looks at what exists first:
    a second run reuses the network, the running nodes and their swarm, and
    copies no image whose id already matches. A failure names what failed
    and leaves what was made for ``cluster_down`` (or a second ``up``).
    """
    if nodes < 1:
        raise CqkdError("a cluster needs at least one node")
    if not 1 <= managers <= nodes:
        raise CqkdError(f"--managers must be between 1 and the node count ({nodes})")
    if images.find_image(client, image) is None:
        raise CqkdError(f"image {image} is not on this engine: build it with `cqkd-stack setup`")
    started = time.monotonic()
    result = Cluster(name=name, manager_url="", subnet="", nodes=[])
    try:
        _up(client, result, nodes, image, progress, managers, engine_timeout)
    except (CqkdError, docker.errors.DockerException) as exc:
        message = exc.message if isinstance(exc, CqkdError) else f"the engine said: {exc}"
        raise CqkdError(
            f"cluster {name}: {message}\nwhat was made is left as it is; remove it with: "
            f"cqkd-stack cluster down --name {name}"
        ) from exc
    result.timings["total"] = round(time.monotonic() - started, 2)
    return result


def _up(
    client: docker.DockerClient,
    result: Cluster,
    nodes: int,
    image: str,
    progress: Say | None,
    managers: int,
    engine_timeout: float,
) -> None:
    name, timed = result.name, result.timings
    with _timed(timed, "image"):
        dind, built = ensure_dind_image(client, progress)
        if built:
            result.done.append(f"built {dind}")
    with _timed(timed, "nodes"):
        network, subnet = _ensure_network(client, name, progress, result.done)
        result.subnet = str(subnet)
        containers = _ensure_nodes(client, name, nodes, dind, network, subnet, progress, result)
        addresses = [_address(c, network) for c in containers]
    engines: list[docker.DockerClient] = []
    try:
        with _timed(timed, "engines"):
            say(progress, f"waiting for {nodes} inner engines on tcp://…:{ENGINE_PORT}")
            for container, address in zip(containers, addresses, strict=True):
                engines.append(_wait_engine(container, address, engine_timeout))
        with _timed(timed, "swarm"):
            node_ids = _ensure_swarm(engines, addresses, managers, progress, result.done)
        manager = engines[0]
        with _timed(timed, "ready"):
            say(progress, f"waiting until {nodes} swarm nodes are Ready")
            _wait_ready(manager, node_ids, READY_TIMEOUT)
            _label_engines(manager, node_ids, addresses)
        with _timed(timed, "images"):
            result.images = _distribute(client, engines, containers, image, progress, result.done)
        roles = {n["ID"]: n["Spec"]["Role"] for n in manager.api.nodes()}
    finally:
        for engine in engines:
            engine.close()
    with _timed(timed, "context"):
        set_context(name, engine_url(addresses[0]))
    result.manager_url = engine_url(addresses[0])
    result.nodes = [
        ClusterNode(c.name, a, engine_url(a), n, roles.get(n, ""))
        for c, a, n in zip(containers, addresses, node_ids, strict=True)
    ]


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record how long the block took as ``timings[step]`` (seconds)."""
    start = time.monotonic()
    try:
        yield
    finally:
        timings[step] = round(time.monotonic() - start, 2)


def _ensure_network(
    client: docker.DockerClient, name: str, progress: Say | None, done: list[str]
) -> tuple[str, ipaddress.IPv4Network]:
    """The cluster's bridge (reused when it exists) and its subnet."""
    networks = taken_subnets(client)
    ours = client.api.networks(filters={"label": f"{CLUSTER_LABEL}={name}"})
    if any(network["Name"] == name for network in ours):
        subnets = [subnet for network, subnet in networks if network == name]
        if subnets:
            return name, subnets[0]
    taken = [subnet for _, subnet in networks]
    with suppress(OSError):
        taken += route_subnets(Path("/proc/net/route").read_text())
    subnet = choose_subnet(taken)
    say(progress, f"creating bridge network {name} ({subnet})")
    pool = docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
    try:
        client.networks.create(
            name,
            driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            labels={CLUSTER_LABEL: name},
        )
    except docker.errors.APIError as exc:
        raise CqkdError(f"cannot create the cluster network {name} ({subnet}): {exc}") from exc
    done.append(f"created network {name} ({subnet})")
    return name, subnet


def _ensure_nodes(
    client: docker.DockerClient,
    name: str,
    nodes: int,
    dind: str,
    network: str,
    subnet: ipaddress.IPv4Network,
    progress: Say | None,
    result: Cluster,
) -> list[Container]:
    """One running container per node; a stopped one is replaced (its tmpfs is gone)."""
    wanted = node_names(name, nodes)
    existing = {
        c.name: c
        for c in client.containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={name}"})
    }
    extra = sorted(set(existing) - set(wanted))
    if extra:
        raise CqkdError(
            f"cluster {name} has nodes beyond {nodes} ({', '.join(extra)}); "
            f"remove it first: cqkd-stack cluster down --name {name}"
        )
    containers = []
    for node in wanted:
        container = existing.get(node)
        if container is not None and container.status == "running":
            containers.append(container)
            continue
        if container is not None:
            container.remove(force=True)
        say(progress, f"starting node {node}")
        try:
            container = _start_node(client, name, node, dind, network, subnet)
        except docker.errors.APIError as exc:
            raise CqkdError(f"cannot start cluster node {node}: {exc}") from exc
        result.done.append(f"started {node}")
        containers.append(container)
    return containers


def _address(container: Container, network: str) -> str:
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"].get(network, {}).get("IPAddress")
    if not address:
        raise CqkdError(f"cluster node {container.name} has no address on network {network}")
    return address


def _wait_engine(container: Container, address: str, timeout: float) -> docker.DockerClient:
    """A client of the node's inner engine once it answers on TCP; else why not."""
    url = engine_url(address)
    deadline = time.monotonic() + timeout
    while True:
        engine = _answering(url)
        if engine is not None:
            return engine
        container.reload()
        if container.status != "running" or time.monotonic() >= deadline:
            why = (
                f"its container is {container.status}"
                if container.status != "running"
                else f"it did not answer within {timeout:g} s"
            )
            raise CqkdError(
                f"the engine of cluster node {container.name} ({url}) is not up: {why}; "
                f"its log ends:\n{_log_tail(container)}"
            )
        time.sleep(_POLL_INTERVAL)


def _answering(url: str) -> docker.DockerClient | None:
    """A client of the engine at ``url`` if it answers now (the SDK asks its version)."""
    try:
        return docker.DockerClient(base_url=url, timeout=_API_TIMEOUT)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None


def _log_tail(container: Container) -> str:
    with suppress(docker.errors.APIError, requests.exceptions.RequestException):
        return tail(container.logs(tail=40).decode(errors="replace")) or "(nothing yet)"
    return "(no log)"


def _swarm_state(engine: docker.DockerClient) -> dict[str, Any]:
    return engine.info().get("Swarm") or {}


def _ensure_swarm(
    engines: list[docker.DockerClient],
    addresses: list[str],
    managers: int,
    progress: Say | None,
    done: list[str],
) -> list[str]:
    """Node 1 manages the swarm; the next ``managers - 1`` join as managers, the rest
    as workers. A node already in this swarm is left alone; a node in another
    one (its manager was replaced) leaves it first. Returns the node ids.
    """
    lead, lead_address = engines[0], addresses[0]
    state = _swarm_state(lead)
    if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
        if state.get("LocalNodeState") == "active":
            lead.swarm.leave(force=True)
        say(progress, f"initialising the swarm on {lead_address}")
        lead.swarm.init(advertise_addr=lead_address, listen_addr=f"0.0.0.0:{SWARM_PORT}")
        done.append(f"initialised the swarm on {lead_address}")
    lead.swarm.reload()
    tokens = lead.swarm.attrs["JoinTokens"]
    members = {n["ID"] for n in lead.api.nodes()}
    node_ids = [_swarm_state(lead)["NodeID"]]
    for index, (engine, address) in enumerate(zip(engines[1:], addresses[1:], strict=True), 2):
        state = _swarm_state(engine)
        if state.get("LocalNodeState") == "active" and state.get("NodeID") in members:
            node_ids.append(state["NodeID"])
            continue
        if state.get("LocalNodeState") != "inactive":
            engine.swarm.leave(force=True)
        role = "manager" if index <= managers else "worker"
        say(progress, f"joining {address} as a {role}")
        try:
            engine.swarm.join(
                remote_addrs=[f"{lead_address}:{SWARM_PORT}"],
                join_token=tokens["Manager" if role == "manager" else "Worker"],
                advertise_addr=address,
                listen_addr=f"0.0.0.0:{SWARM_PORT}",
            )
        except docker.errors.APIError as exc:
            raise CqkdError(
                f"node {address} could not join the swarm at {lead_address}: {exc}"
            ) from exc
        done.append(f"joined {address} as a {role}")
        node_ids.append(_swarm_state(engine)["NodeID"])
    _forget_stale_nodes(lead, node_ids)
    return node_ids


def _forget_stale_nodes(manager: docker.DockerClient, keep: list[str]) -> None:
    """Drop entries of nodes that were replaced: they would stay Down for ever."""
    for node in manager.api.nodes():
        if node["ID"] not in keep:
            with suppress(docker.errors.APIError):
                manager.api.remove_node(node["ID"], force=True)


def _wait_ready(manager: docker.DockerClient, node_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {n["ID"]: n["Status"]["State"] for n in manager.api.nodes()}
        waiting = [n for n in node_ids if states.get(n) != "ready"]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{n[:12]} ({states.get(n, 'not listed')})" for n in waiting)
            raise CqkdError(f"swarm nodes not Ready after {timeout:g} s: {listed}")
        time.sleep(_POLL_INTERVAL)


def _label_engines(manager: docker.DockerClient, node_ids: list[str], addresses: list[str]) -> None:
    """Label every swarm node with its engine's URL, where image distribution looks."""
    for node_id, address in zip(node_ids, addresses, strict=True):
        node = manager.nodes.get(node_id)
        spec = node.attrs["Spec"]
        labels = spec.get("Labels") or {}
        if labels.get(ENGINE_LABEL) == engine_url(address):
            continue
        spec["Labels"] = {**labels, ENGINE_LABEL: engine_url(address)}
        node.update(spec)


def _distribute(
    client: docker.DockerClient,
    engines: list[docker.DockerClient],
    containers: list[Container],
    image: str,
    progress: Say | None,
    done: list[str],
) -> dict[str, str]:
    """Copy ``image`` from the host into every node whose copy differs, side by side.

    The copies overlap: one node's load (unpacking into its tmpfs) runs while
    the host saves for the next.
    """
    say(progress, f"putting {image} on {len(engines)} nodes (copied where its id differs)")
    with ThreadPoolExecutor(max_workers=min(len(engines), _PARALLEL_COPIES)) as pool:
        copied = list(pool.map(lambda engine: copy_image(client, engine, image), engines))
    for container, new in zip(containers, copied, strict=True):
        if new:
            done.append(f"loaded {image} into {container.name}")
    return {image: client.images.get(image).id}


# --- docker CLI context -----------------------------------------------------------


def set_context(name: str, url: str) -> None:
    """A docker CLI context named after the cluster, pointing at its manager.

    Replaced when it exists, so it always names this run's manager address.
    """
    if context_exists(name):
        remove_context(name)
    run(
        [
            "docker",
            "context",
            "create",
            name,
            "--description",
            f"cqkd-stack cluster {name} (manager)",
            "--docker",
            f"host={url}",
        ],
        f"docker context create {name}",
    )


def context_exists(name: str) -> bool:
    inspected = run(["docker", "context", "inspect", name], "docker context inspect", check=False)
    return inspected.returncode == 0


def remove_context(name: str) -> None:
    """Remove context ``name``; the CLI's current context falls back to default first."""
    current = run(["docker", "context", "show"], "docker context show", check=False)
    if current.stdout.strip() == name:
        run(["docker", "context", "use", "default"], "docker context use default")
    run(["docker", "context", "rm", "--force", name], f"docker context rm {name}")


# --- down -----------------------------------------------------------------


def cluster_down(
    client: docker.DockerClient, name: str = DEFAULT_NAME, progress: Say | None = None
) -> Removed:
    """Remove every container and network labelled for ``name``, and its context.

    Works whatever state ``up`` left (nothing, a network only, nodes that
    never joined); removing nothing is not an error.
    """
    started = time.monotonic()
    removed = Removed()
    selector = {"label": f"{CLUSTER_LABEL}={name}"}
    for container in client.containers.list(all=True, filters=selector):
        say(progress, f"removing node {container.name}")
        with suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
        removed.containers.append(container.name)
    for network in client.networks.list(filters=selector):
        say(progress, f"removing network {network.name}")
        try:
            network.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise CqkdError(f"cannot remove the cluster network {network.name}: {exc}") from exc
        removed.networks.append(network.name)
    if context_exists(name):
        remove_context(name)
        removed.context = name
    removed.seconds = round(time.monotonic() - started, 2)
    return removed


def cluster_containers(client: docker.DockerClient, name: str = DEFAULT_NAME) -> list[Container]:
    """The cluster's node containers, in node order."""
    found = client.containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={name}"})
    return sorted(found, key=lambda c: _node_index(c.name))


def _node_index(container: str) -> int:
    suffix = container.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else 0
