"""A compose-target file on a real engine: ``docker-compose up``, wait, check, take down.

The file is run by docker-compose itself (Debian's ``docker-compose`` 1.29.2,
or the ``docker compose`` plugin), as an operator without Swarm would run it;
this module adds what ``deploy`` adds on Swarm: nothing starts unless the file
passes the policy and every port it publishes is free, the wait ends when
every node answers a Kademlia ping at its host port, and teardown leaves no
container, network or volume of the project behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import DEFAULT_NODE_IMAGE
from ..core.contract import key_values, resolve_slot, role_of
from ..core.errors import CqkdError, NotDeployed, UsageError
from ..core.policy import Policy
from ..core.process import Progress, Say
from ..core.results import compact
from ..lint.published import published_ports
from ..node.nodectl import DEFAULT_SOCKET
from ..targets.compose import parallel_limit
from .dhtcheck import Control, DhtCheck, exec_nodectl, round_trip
from .readiness import ProbedTask, Prober

if TYPE_CHECKING:
    import docker

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
# What docker-compose v1 accepts as a project name without rewriting it.
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# The probe asks the published ports from the host's own network.
HOST_ADDRESS = "127.0.0.1"
POLL_SECONDS = 1.0
NOT_FOUND = (
    "docker-compose is not installed: apt-get install docker-compose (Debian's package; "
    "not with pip into this project's environment, whose libraries it would downgrade)"
)


def check_project_name(name: str) -> str:
    if not _PROJECT_NAME.match(name):
        raise UsageError(
            f"--stack '{name}' is not a compose project name: lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit"
        )
    return name


def compose_command() -> list[str]:
    """docker-compose v1 if installed, else the ``docker compose`` plugin; else say how."""
    found = shutil.which("docker-compose")
    if found:
        return [found]
    docker_cli = shutil.which("docker")
    if docker_cli:
        probe = subprocess.run(
            [docker_cli, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker_cli, "compose"]
    raise CqkdError(NOT_FOUND)


@dataclass(frozen=True)
class HostPort:
    """One DHT node of the file: its service, role, slot and the host port it publishes."""

    service: str
    role: str
    slot: int
    port: int
    protocol: str


def host_ports(doc: dict[str, Any]) -> list[HostPort]:
    """The DHT services of a checked compose document, bootstrap first, with their ports."""
    found = []
    for name, service in (doc.get("services") or {}).items():
        env = key_values(service.get("environment"))
        role = role_of(env, key_values(service.get("labels")))
        if not role:
            continue
        own = resolve_slot(env, 1)
        for entry in service.get("ports") or []:
            port, _ = published_ports(entry)
            if port and port.published and port.target and own.port in port.target:
                slot = own.slot or 1
                found.append(HostPort(name, role, slot, port.published.start, port.protocol))
    return sorted(found, key=lambda p: (p.role != "bootstrap", p.role != "special", p.port))


def ports_in_use(ports: list[HostPort], own: set[int]) -> list[int]:
    """Host ports another process already holds (``own``: this project's, left out).

    docker-compose stops at the first container whose port is taken, with
    the containers before it created and running: asked first, nothing
    starts. Bound here on every address, as the engine would publish them.
    """
    taken = []
    for item in ports:
        if item.port in own:
            continue
        kind = socket.SOCK_DGRAM if item.protocol == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("0.0.0.0", item.port))
            except OSError:
                taken.append(item.port)
    return taken


def project_containers(client: docker.DockerClient, project: str) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})


def published_by(client: docker.DockerClient, project: str) -> set[int]:
    """Host ports the project's own containers publish now (a second deploy keeps them)."""
    ports = set()
    for container in project_containers(client, project):
        for port in container.get("Ports") or []:
            if port.get("PublicPort"):
                ports.add(int(port["PublicPort"]))
    return ports


def up(
    compose: list[str], file: Path, project: str, services: int, timeout: float, say: Say
) -> float:
    """``docker-compose -p PROJECT -f FILE up -d``; its output only when it fails.

    Bounded by the deploy's timeout all the same, should it hang another way.
    """
    command = [*compose, "-p", project, "-f", str(file), "up", "-d", "--remove-orphans"]
    limit = parallel_limit(services)
    say(f"COMPOSE_PARALLEL_LIMIT={limit} {' '.join(command)}")
    env = os.environ | {"COMPOSE_PARALLEL_LIMIT": str(limit)}
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        raise CqkdError(
            f"docker-compose up did not return within {timeout:.0f} s; what it created is "
            f"still there: cqkd-stack teardown --target compose -s {project}, then deploy again"
        ) from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise CqkdError(f"docker-compose up failed (exit {done.returncode}):\n{tail}")
    return time.monotonic() - start


def write_file(text: str) -> tuple[tempfile.TemporaryDirectory, Path]:  # type: ignore[type-arg]
    """The rendered file where docker-compose can read it (its directory is the project's)."""
    folder = tempfile.TemporaryDirectory(prefix="cqkd-compose-")
    path = Path(folder.name) / "docker-compose.yml"
    path.write_text(text)
    return folder, path


@dataclass
class Readiness:
    seconds: float
    answered: int
    total: int
    silent: list[HostPort] = field(default_factory=list)


def _targets(ports: list[HostPort], running: set[str]) -> list[ProbedTask]:
    return [
        ProbedTask(
            p.service,
            p.role,
            p.slot,
            HOST_ADDRESS,
            p.port,
            "running" if p.service in running else "starting",
        )
        for p in ports
    ]


def running_services(client: docker.DockerClient, project: str) -> set[str]:
    found = client.api.containers(
        filters={"label": f"{PROJECT_LABEL}={project}", "status": "running"}
    )
    return {c["Labels"].get(SERVICE_LABEL, "") for c in found}


def wait_until_ready(
    client: docker.DockerClient,
    project: str,
    ports: list[HostPort],
    timeout: float,
    progress: Progress | None = None,
    image: str = DEFAULT_NODE_IMAGE,
) -> Readiness:
    """Until every DHT node answers at its host port, joined (the bootstrap: answering)."""
    start = time.monotonic()
    ready: set[str] = set()
    with Prober(client, project, image, network="host") as prober:
        while True:
            targets = _targets(ports, running_services(client, project))
            asked = [t for t in targets if t.service not in ready]
            answers = prober.round(asked).answers if asked else {}
            ready |= {t.service for t in asked if t.ready(answers.get(t.text))}
            if progress is not None:
                progress(len(ready), len(ports), f"{len(ready)}/{len(ports)} answering")
            if len(ready) == len(ports):
                return Readiness(time.monotonic() - start, len(ready), len(ports))
            if time.monotonic() - start > timeout:
                silent = [p for p in ports if p.service not in ready]
                names = ", ".join(f"{p.service} ({p.port})" for p in silent[:10])
                more = f" and {len(silent) - 10} more" if len(silent) > 10 else ""
                raise CqkdError(
                    f"{len(silent)} of {len(ports)} nodes of project '{project}' did not "
                    f"answer at their host ports within {timeout:.0f} s: {names}{more}; "
                    f"see docker-compose -p {project} logs SERVICE"
                )
            time.sleep(POLL_SECONDS)


def _control(client: docker.DockerClient, project: str, service: str) -> Control:
    found = client.api.containers(
        filters={
            "label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"],
            "status": "running",
        }
    )
    if not found:
        raise CqkdError(f"no running container of service '{service}' in project '{project}'")
    container = client.api.inspect_container(found[0]["Id"])
    env = key_values(container["Config"].get("Env") or [])
    return Control(
        service=service,
        node_id="",
        container_id=container["Id"],
        image=str(container["Config"].get("Image") or ""),
        socket=env.get("CQKD_CONTROL_SOCKET") or DEFAULT_SOCKET,
        mount=None,
    )


def check_project_dht(
    client: docker.DockerClient, project: str, alice: str = "alice", bob: str = "bob"
) -> DhtCheck:
    """Alice stores a random value, Bob reads it back through the DHT (``docker exec``)."""
    writer, reader = _control(client, project, alice), _control(client, project, bob)
    return round_trip(
        writer, reader, lambda control, *args: exec_nodectl(client, control, *args), alice, bob
    )


@dataclass
class Removed:
    containers: int
    networks: list[str]
    volumes: list[str]
    seconds: float


def down(client: docker.DockerClient, project: str) -> Removed:
    """Remove the project's containers, then its networks and volumes, found by label.

    By label, as docker-compose marks them, so no file is needed: the one
    ``deploy`` rendered is gone, and a file edited since would miss services.
    """
    from docker.errors import NotFound

    start = time.monotonic()
    containers = project_containers(client, project)
    for container in containers:
        with contextlib.suppress(NotFound):
            client.api.remove_container(container["Id"], force=True, v=True)
    label = {"label": f"{PROJECT_LABEL}={project}"}
    networks = []
    for network in client.api.networks(filters=label):
        client.api.remove_network(network["Id"])
        networks.append(network["Name"])
    volumes = []
    for volume in client.api.volumes(filters=label).get("Volumes") or []:
        client.api.remove_volume(volume["Name"])
        volumes.append(volume["Name"])
    return Removed(len(containers), networks, volumes, time.monotonic() - start)


@dataclass
class ComposeOutcome:
    project: str
    nodes: list[HostPort]
    up_seconds: float
    ready: Readiness | None

    def summary(self) -> dict[str, Any]:
        """What ``deploy --target compose -f json`` prints."""
        return {
            "target": "compose",
            "project": self.project,
            "nodes": [
                {
                    "service": n.service,
                    "role": n.role,
                    "slot": n.slot,
                    "port": n.port,
                    "protocol": n.protocol,
                }
                for n in self.nodes
            ],
            "up_seconds": round(self.up_seconds, 2),
            "ready_seconds": None if self.ready is None else round(self.ready.seconds, 2),
            "answered": None if self.ready is None else self.ready.answered,
        }


def _missing_images(client: docker.DockerClient, doc: dict[str, Any]) -> list[str]:
    """Images the file names that this engine lacks: docker-compose would pull them."""
    from .client import image_id

    names = {str(s.get("image")) for s in (doc.get("services") or {}).values() if s.get("image")}
    return sorted(name for name in names if not image_id(client, name))


def deploy(
    client: docker.DockerClient,
    text: str,
    name: str,
    project: str,
    policy: Policy,
    timeout: float,
    wait: bool,
    say: Say,
    progress: Progress | None = None,
) -> ComposeOutcome:
    """Check the file, its ports on this host and its images; then up, and wait.

    Every refusal comes before docker-compose runs, so a refused deploy
    starts nothing (NotDeployed carries the policy's problems).
    """
    from ..lint.validate import validate_texts
    from ..targets.compose import load_compose

    check_project_name(project)
    command = compose_command()
    loaded = load_compose(text, name)
    results = validate_texts([(name, text)], policy, loaded={name: loaded}, target="compose")
    if not results.ok or loaded.doc is None:
        raise NotDeployed(results)
    nodes = host_ports(loaded.doc)
    taken = ports_in_use(nodes, published_by(client, project))
    if taken:
        raise CqkdError(
            f"host port{'s' if len(taken) > 1 else ''} {compact(taken)} already in use on this "
            "host (another process or project holds them); nothing was started"
        )
    missing = _missing_images(client, loaded.doc)
    if missing:
        raise CqkdError(
            f"image {', '.join(missing)} is not on this engine; build it with "
            "`cqkd-stack setup`; nothing was started"
        )
    folder, path = write_file(text)
    with folder:
        seconds = up(command, path, project, len(loaded.doc["services"]), timeout, say)
    say(f"project '{project}': {len(nodes)} DHT nodes up in {seconds:.1f} s")
    left = max(1.0, timeout - seconds)  # one budget for the whole deploy
    ready = wait_until_ready(client, project, nodes, left, progress) if wait else None
    return ComposeOutcome(project, nodes, seconds, ready)
