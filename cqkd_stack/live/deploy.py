"""What ``deploy`` and ``scale`` do from start to finish, without printing anything.

The tasks parse options and show results; the order of the steps (render
once, validate against the live swarm, the image on every node, deploy the
bootstrap first, wait for the DHT, read back the port map) lives here so that
it can be used and tested without Invoke. The Docker SDK has no stack
support, so ``docker stack deploy`` and ``docker service scale`` go through
the docker CLI.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.contract import TakenSubnet, service_role
from ..core.documents import read_text
from ..core.errors import CqkdError, NotDeployed
from ..core.policy import Policy
from ..core.process import Progress, Say, run
from ..core.results import Problem, Results, json_path
from ..lint.env_files import working_dir_of
from ..lint.stackfile import load_stack
from ..lint.validate import validate_texts
from ..targets.base import RenderOptions
from ..targets.swarm import render, room_problems
from . import distribution, inspection, pacing
from .client import docker_cli, image_source, scale_services
from .controlkey import ensure_control_key, wanted_control_key
from .groups import GroupResize, apply_groups, pinned_groups, place_groups, plan_groups
from .waits import POLL_SECONDS, WaitResult, wait_until_ready

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class DeployRequest:
    """Everything ``deploy`` needs; ``file`` wins over rendering from ``options``."""

    stack: str
    policy: Policy
    options: RenderOptions
    file: str = ""
    timeout: float = 600
    wait: bool = True
    # HOST/REPO: push the node image there and deploy the pushed reference,
    # instead of copying the image to every node.
    registry: str = ""
    # The local image pushed to ``registry`` (``options.image`` is then its
    # registry reference).
    local_image: str = ""
    # A new stack's workers: at most this many tasks a node on their way up at
    # once (live/pacing.py); 0 asks Swarm for all of them at once.
    pace: int = 0


@dataclass
class DeployOutcome:
    stack: str
    source: str
    waited: WaitResult | None = None
    ports: inspection.PortMap | None = None
    # Per node: was the image there, copied, or (registry) left to pull.
    images: list[distribution.NodeImage] = dataclasses.field(default_factory=list)
    pushed: str = ""

    def summary(self) -> dict[str, Any]:
        """The machine-readable result (``--format json``)."""
        out: dict[str, Any] = {"stack": self.stack, "source": self.source, "waited": False}
        out["images"] = [n.as_dict() for n in self.images]
        if self.pushed:
            out["pushed"] = self.pushed
        if self.waited is not None:
            out |= {
                "waited": True,
                "seconds": round(self.waited.seconds, 1),
                "running_seconds": _rounded(self.waited.running_seconds),
                "joined_seconds": _rounded(self.waited.joined_seconds),
                "tasks": self.waited.total,
            }
        if self.ports is not None:
            out |= {"port_ranges": port_ranges(self.ports), "ports": self.ports.as_dict()}
        return out


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def port_ranges(ports: inspection.PortMap) -> dict[str, str]:
    """First-last port per service: the one line an operator wants after a deploy."""
    by_service: dict[str, list[int]] = {}
    for row in ports.tasks:
        if row.port is not None:
            by_service.setdefault(row.service, []).append(row.port)
    return {s: f"{min(p)}-{max(p)}" if len(p) > 1 else str(p[0]) for s, p in by_service.items()}


def stack_text(
    client: docker.DockerClient, request: DeployRequest, taken: list[TakenSubnet]
) -> tuple[str, str]:
    """(source name, text) of the stack to deploy: the given file, or one rendered once.

    A rendered stack gets the manager's address for host networking, joins
    its own DHT (or, for a batch, the stack it names), and an overlay subnet:
    its network's own if the stack runs, else one outside ``taken`` (the
    subnets of the engine's other networks).
    """
    if request.file:
        return request.file, read_text(Path(request.file))
    options = request.options
    if options.bootstrap_host == RenderOptions.bootstrap_host:
        # A host-network batch joins the bootstrap where it runs now.
        joined = (
            inspection.bootstrap_address(client, options.join_stack) if options.is_batch else None
        )
        node_id, address = (None, joined) if joined else inspection.bootstrap_node(client)
        options = dataclasses.replace(options, bootstrap_host=address, bootstrap_node=node_id)
    if not options.is_batch:
        options = dataclasses.replace(options, join_stack=request.stack)
    # A redeploy keeps its network's subnet: Swarm never changes a live
    # network, and the same options must render the same file (so that
    # deploying twice changes nothing and restarts no task).
    current = inspection.stack_subnet(client, request.stack)

    def free(tasks: int) -> ipaddress.IPv4Network:
        return current if current is not None else inspection.free_subnet(taken, tasks)

    source = f"<rendered for stack {request.stack}>"
    return source, render(request.policy, options, free)


def check_against_swarm(
    client: docker.DockerClient,
    stack: str,
    source: str,
    text: str,
    policy: Policy,
    taken: list[TakenSubnet],
) -> tuple[Results, dict[str, Any] | None]:
    """Validate as a linter would, plus what the live swarm holds; (results, document).

    Ports that other stacks on the same networks hold count as claims, and
    so do every stack's published ports; this stack's own services are being
    replaced, so they do not. Subnets of existing networks must not overlap.
    """
    # Read once, as docker stack deploy will (interpolated from this environment).
    loaded = load_stack(text, source, os.environ)
    doc = loaded.doc
    joined = inspection.stack_network_names(doc, stack) if doc is not None else set()
    existing = inspection.live_claims(client, policy, exclude_stack=stack, networks=joined)
    results = validate_texts([(source, text)], policy, existing, taken, loaded={source: loaded})
    return results, doc


@dataclass(frozen=True)
class CheckedStack:
    """A stack file that passed validation against the policy and the live inspection."""

    source: str
    text: str
    images: tuple[str, ...] = ()
    # The document as Docker will read it (interpolated from this environment).
    doc: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


def stack_images(doc: dict[str, Any]) -> tuple[str, ...]:
    """Every service's image, once each, in file order."""
    services = doc.get("services") or {}
    found = [s.get("image") for s in services.values() if isinstance(s, dict)]
    return tuple(dict.fromkeys(i for i in found if isinstance(i, str) and i))


def check_stack(client: docker.DockerClient, request: DeployRequest) -> CheckedStack:
    """Render or read, then validate against the swarm; NotDeployed if it would break.

    Nothing on the swarm changes here: this is the part an operator waits
    for before anything is drawn or deployed.
    """
    taken = inspection.taken_subnets(client, exclude_stack=request.stack)
    source, text = stack_text(client, request, taken)
    results, doc = check_against_swarm(client, request.stack, source, text, request.policy, taken)
    if results.ok and doc is not None:
        # Only a valid document has the shape the count reads.
        nodes = len(inspection.nodes_that_run_tasks(client))
        results.extend(room_problems(doc, source, request.stack, nodes))
    if not results.ok or doc is None:
        raise NotDeployed(results)
    return CheckedStack(source, text, stack_images(doc), doc)


def images_on_nodes(
    client: docker.DockerClient, images: tuple[str, ...], say: Say
) -> list[distribution.NodeImage]:
    """Each image on every node that may run a task, copied from this machine's engine.

    An image that neither this machine's engine nor the manager has (a
    registry reference in a hand-written stack) is left for the nodes to pull.
    """
    done: list[distribution.NodeImage] = []
    with image_source(client) as find:
        for image in images:
            source = find(image)
            if source is None:
                if distribution.names_a_registry(image):
                    say(f"{image} is not on this engine: the nodes will pull it")
                    continue
                raise CqkdError(
                    f"the image {image} is on neither this engine nor the manager; "
                    "build it with: cqkd-stack setup"
                )
            done += distribution.ensure_on_nodes(client, image, source, say)
    return done


def push_image(client: docker.DockerClient, image: str, registry: str, say: Say) -> str:
    """Push the local image to ``registry``; the pinned reference the nodes will pull."""
    with image_source(client) as find:
        source = find(image)
        if source is None:
            raise CqkdError(f"the image {image} does not exist; build it with: cqkd-stack setup")
        say(f"pushing {image} to {registry}")
        pushed = distribution.push_to_registry(source, image, registry)
    say(f"pushed {pushed}")
    return pushed


def deploy_stack(
    client: docker.DockerClient,
    request: DeployRequest,
    checked: CheckedStack,
    say: Say,
    progress: Progress | None = None,
) -> DeployOutcome:
    """Deploy a checked stack (bootstrap first), wait until it is in the DHT, map its ports.

    The image reaches every node first: pushed to ``request.registry`` (the
    engine resolves it to a digest at deploy), or copied where it differs.
    """
    started = time.monotonic()
    outcome = DeployOutcome(request.stack, checked.source)
    resolve = "never"
    if request.registry:
        outcome.pushed = push_image(client, request.local_image, request.registry, say)
        outcome.images = distribution.pull_on_nodes(client, outcome.pushed, say)
        resolve = "always"
    else:
        outcome.images = images_on_nodes(client, checked.images, say)
    groups = pinned_groups(checked.doc, request.stack)
    if groups:
        place_groups(client, request.stack, groups, say)
    key_config = wanted_control_key(checked.doc)
    if key_config is not None and ensure_control_key(client, request.stack, key_config):
        say(f"created the control key config {key_config}")
    with tempfile.TemporaryDirectory(prefix="cqkd-") as tmp:
        path = Path(tmp) / f"{request.stack}.stack.yml"
        path.write_text(checked.text)
        say(f"deploying stack '{request.stack}' ({checked.source})")
        # Docker reads env files and relative paths from the given file's folder.
        where = working_dir_of(checked.source)
        asked_at = time.monotonic()
        deploy_bootstrap_first(
            client,
            path,
            request.stack,
            say,
            resolve_image=resolve,
            working_dir=where,
            pace=request.pace,
            pace_seconds=request.timeout,
        )
    if not request.wait:
        return outcome
    # --timeout is the whole deploy's: the time pacing took is not given twice.
    left = max(1.0, request.timeout - (time.monotonic() - started))
    # Its seconds count from the first `docker stack deploy`, pacing included.
    outcome.waited = wait_until_ready(client, request.stack, left, progress, since=asked_at)
    outcome.ports = inspection.port_map(client, request.stack, request.policy)
    return outcome


@dataclass
class ScaleOutcome:
    stack: str
    service: str
    replicas: int
    waited: WaitResult
    # Replicas of each service scaled: the service, or each of its worker groups.
    groups: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "service": self.service,
            "replicas": self.replicas,
            "groups": self.groups,
            "seconds": round(self.waited.seconds, 1),
            "tasks": self.waited.total,
        }


def check_scale(
    client: docker.DockerClient, stack: str, service: str, replicas: int, policy: Policy
) -> GroupResize | None:
    """The new count, judged by the validator's rules on the live service; NotDeployed if not.

    Workers past one range, or a stack that has worker groups already, are
    spread over the groups (live/groups): the plan is returned, checked
    whole (every group's ports, the subnet, the nodes' bridges).
    """
    resize = plan_groups(client, stack, service, replicas)
    if resize is None:
        results = inspection.scale_problems(client, stack, service, replicas, policy)
    elif resize.on_host:
        # A new group would need its node labelled and the first group
        # held to its own: a change of the first group's tasks, not a scale.
        results = Results()
        results.checked(f"stack {stack}")
        message = (
            f"{replicas} workers on the host network need worker groups, one node each; "
            f"scale keeps host-network workers within one range of {resize.size}: "
            f"deploy --network host --replicas {replicas} places the groups"
        )
        results.extend([Problem(f"stack {stack}", json_path(["services", service]), message)])
    else:
        results = inspection.resize_problems(client, stack, resize.counts, policy, resize.shapes)
    if not results.ok:
        raise NotDeployed(results, "nothing was changed")
    return resize


def scale_stack(
    client: docker.DockerClient,
    stack: str,
    service: str,
    replicas: int,
    timeout: float,
    progress: Progress | None = None,
    say: Say | None = None,
    groups: GroupResize | None = None,
) -> ScaleOutcome:
    """Scale a checked service (or its worker groups) and wait until the DHT has every task.

    A node that joined since the deploy gets the image first, so that no
    new task waits in "Preparing" for it.
    """
    spec = client.api.inspect_service(f"{stack}_{service}")["Spec"]
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    images_on_nodes(client, (image,), say or (lambda _: None))
    if groups is None:
        scale_service(client, stack, service, replicas)
    else:
        apply_groups(client, groups)
    waited = wait_until_ready(client, stack, timeout, progress)
    counts = groups.kept if groups is not None else {service: replicas}
    return ScaleOutcome(stack, service, replicas, waited, counts)


def stack_deploy(
    stack_file: Path, stack: str, resolve_image: str = "never", working_dir: Path | None = None
) -> None:
    """``docker stack deploy``; by default without registry lookups (images are copied).

    ``resolve_image="always"`` pins a registry image to its digest, so every
    node pulls the same bytes. The file goes in on standard input from
    ``working_dir``: Docker resolves env files and relative bind mounts from
    there, as it would from the folder of the file the operator named (which
    is what the linter read; ``stack_file`` is a temporary copy elsewhere).
    """
    run(
        [docker_cli(), "stack", "deploy", "--resolve-image", resolve_image, "-c", "-", stack],
        "docker stack deploy",
        input=stack_file.read_text(),
        cwd=working_dir,
    )


# How long a fresh stack's bootstrap node may take to run before the rest is
# deployed anyway (every node retries its bootstrap for ever, so this only
# costs speed, never correctness).
BOOTSTRAP_FIRST_SECONDS = 120.0


def bootstrap_only(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The stack with every service but its bootstrap nodes at 0 replicas; None if not apt.

    Swarm starts a stack's tasks in no particular order: in a 1003-task deploy
    the bootstrap task ran five minutes after the first workers, which all
    waited for it. Deploying the bootstrap first, alone (a few seconds),
    means every other node finds it at its first try. Stacks without a
    bootstrap service (a batch joining another stack's DHT) are deployed as
    they are.
    """
    services = doc.get("services")
    if not isinstance(services, dict):
        return None
    roles = {name: service_role(s) for name, s in services.items() if isinstance(s, dict)}
    if "bootstrap" not in roles.values() or set(roles.values()) == {"bootstrap"}:
        return None
    first = copy.deepcopy(doc)
    for name, role in roles.items():
        if role != "bootstrap":
            first["services"][name].setdefault("deploy", {})["replicas"] = 0
    return first


def deploy_bootstrap_first(
    client: docker.DockerClient,
    stack_file: Path,
    stack: str,
    say: Say | None = None,
    wait: float = BOOTSTRAP_FIRST_SECONDS,
    resolve_image: str = "never",
    working_dir: Path | None = None,
    pace: int = 0,
    pace_seconds: float = 600.0,
) -> None:
    """``docker stack deploy``, bootstrap nodes first when the stack is new (see bootstrap_only).

    A stack that already exists is deployed in one step: its bootstrap runs.
    The first phase is made from the file as written (not as interpolated),
    so that Docker interpolates it exactly once, as it does the whole file.
    With ``pace``, a new stack's workers are then raised at most ``pace``
    tasks a node on their way up (live/pacing.py), for at most
    ``pace_seconds``; the file as written is always deployed last.
    ``working_dir``: where the stack's relative paths start (see stack_deploy).
    """
    if inspection.stack_exists(client, stack):
        stack_deploy(stack_file, stack, resolve_image, working_dir)
        return
    import yaml

    first = bootstrap_only(yaml.safe_load(stack_file.read_text()))
    phase = stack_file.with_name(f"{stack_file.stem}.first-step{stack_file.suffix}")
    start = time.monotonic()
    if first is not None:
        phase.write_text(yaml.safe_dump(first, sort_keys=False))
        stack_deploy(phase, stack, resolve_image, working_dir)
        names = [
            f"{stack}_{name}"
            for name, s in first["services"].items()
            if service_role(s) == "bootstrap"
        ]
        while not _all_running(client, names):
            if time.monotonic() - start >= wait:
                if say is not None:
                    say(f"the bootstrap node is not running after {wait:.0f} s; deploying the rest")
                break
            time.sleep(POLL_SECONDS / 2)
        else:
            if say is not None:
                say(f"bootstrap running after {time.monotonic() - start:.1f} s; deploying the rest")
    if pace > 0:
        # A batch (no bootstrap of its own) is paced too: --pace does what it says.
        written = yaml.safe_load(stack_file.read_text())
        wanted = pacing.worker_counts(written)
        window = pace * max(1, len(inspection.nodes_that_run_tasks(client)))
        asked = pacing.next_step({}, wanted, window)
        if asked != wanted:
            # The workers start at the window and are raised as tasks come up.
            for name, count in asked.items():
                written["services"][name].setdefault("deploy", {})["replicas"] = count
            phase.write_text(yaml.safe_dump(written, sort_keys=False))
            stack_deploy(phase, stack, resolve_image, working_dir)
            if say is not None:
                workers = sum(wanted.values())
                say(f"starting {workers} workers, at most {window} on their way at once")
            pacing.feed(client, stack, asked, wanted, window, start + pace_seconds, say)
    stack_deploy(stack_file, stack, resolve_image, working_dir)


def _all_running(client: docker.DockerClient, services: list[str]) -> bool:
    """Each named service has a running task (one task list call for all of them)."""
    tasks = client.api.tasks(filters={"service": services, "desired-state": "running"})
    running = {t["ServiceID"] for t in tasks if t.get("Status", {}).get("State") == "running"}
    return len(running) >= len(services)


def scale_service(client: docker.DockerClient, stack: str, service: str, replicas: int) -> None:
    """Scale one service of a stack without touching its running tasks.

    Not the SDK's ``Service.scale``: it resubmits the whole spec with fields
    normalised (an empty DNSConfig appears), Swarm sees a changed task
    template and replaces every task, a rolling restart of the whole DHT.
    ``docker service scale`` changes the replica count and nothing else.
    """
    name = f"{stack}_{service}"
    if not client.api.services(filters={"name": name}):
        raise CqkdError(f"stack '{stack}' has no service '{service}'")
    scale_services({name: replicas})
