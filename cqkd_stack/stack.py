"""What ``deploy`` and ``scale`` do from start to finish, without printing anything.

The tasks in ``tasks.py`` parse options and show results; the order of the
steps (render once, validate against the live swarm, deploy bootstrap
first, wait for the DHT, read back the port map) lives here so that it can
be used and tested without Invoke.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import deploy as live
from . import distribute, swarm
from .core.contract import TakenSubnet
from .core.documents import read_text
from .core.errors import CqkdError, NotDeployed
from .core.policy import Policy
from .core.process import Progress, Say
from .core.results import Results
from .lint.env_files import working_dir_of
from .lint.stackfile import load_stack
from .lint.validate import validate_texts
from .plan import Plan, deploy_plan, scale_plan, teardown_plan
from .targets.base import RenderOptions
from .targets.swarm import render

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


@dataclass
class DeployOutcome:
    stack: str
    source: str
    waited: live.WaitResult | None = None
    ports: swarm.PortMap | None = None
    # Per node: was the image there, copied, or (registry) left to pull.
    images: list[distribute.NodeImage] = dataclasses.field(default_factory=list)
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


def port_ranges(ports: swarm.PortMap) -> dict[str, str]:
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
        joined = swarm.bootstrap_address(client, options.join_stack) if options.is_batch else None
        node_id, address = (None, joined) if joined else swarm.bootstrap_node(client)
        options = dataclasses.replace(options, bootstrap_host=address, bootstrap_node=node_id)
    if not options.is_batch:
        options = dataclasses.replace(options, join_stack=request.stack)
    # A redeploy keeps its network's subnet: Swarm never changes a live
    # network, and the same options must render the same file (so that
    # deploying twice changes nothing and restarts no task).
    current = swarm.stack_subnet(client, request.stack)

    def free(tasks: int) -> ipaddress.IPv4Network:
        return current if current is not None else swarm.free_subnet(taken, tasks)

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
    joined = swarm.stack_network_names(doc, stack) if doc is not None else set()
    existing = swarm.live_claims(client, policy, exclude_stack=stack, networks=joined)
    results = validate_texts([(source, text)], policy, existing, taken, loaded={source: loaded})
    return results, doc


@dataclass(frozen=True)
class CheckedStack:
    """A stack file that passed validation against the policy and the live swarm."""

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
    taken = swarm.taken_subnets(client, exclude_stack=request.stack)
    source, text = stack_text(client, request, taken)
    results, doc = check_against_swarm(client, request.stack, source, text, request.policy, taken)
    if not results.ok or doc is None:
        raise NotDeployed(results)
    return CheckedStack(source, text, stack_images(doc), doc)


def node_image_ids(
    client: docker.DockerClient, images: tuple[str, ...]
) -> list[distribute.NodeImageId]:
    """Each image's id on every node and on the engine it would come from (read-only)."""
    with swarm.image_source(client) as find:
        return [
            found
            for image in images
            for found in distribute.image_ids_on_nodes(client, image, find(image))
        ]


def plan_deploy(client: docker.DockerClient, request: DeployRequest, checked: CheckedStack) -> Plan:
    """What ``deploy_stack`` would change: the swarm read once, nothing changed."""
    images = (request.local_image,) if request.registry else checked.images
    return deploy_plan(
        request.stack,
        checked.doc,
        swarm.stack_state(client, request.stack),
        request.policy,
        node_image_ids(client, images),
        request.registry,
    )


def images_on_nodes(
    client: docker.DockerClient, images: tuple[str, ...], say: Say
) -> list[distribute.NodeImage]:
    """Each image on every node that may run a task, copied from this machine's engine.

    An image that neither this machine's engine nor the manager has (a
    registry reference in a hand-written stack) is left for the nodes to pull.
    """
    done: list[distribute.NodeImage] = []
    with swarm.image_source(client) as find:
        for image in images:
            source = find(image)
            if source is None:
                if distribute.names_a_registry(image):
                    say(f"{image} is not on this engine: the nodes will pull it")
                    continue
                raise CqkdError(
                    f"the image {image} is on neither this engine nor the manager; "
                    "build it with: cqkd-stack setup"
                )
            done += distribute.ensure_on_nodes(client, image, source, say)
    return done


def push_image(client: docker.DockerClient, image: str, registry: str, say: Say) -> str:
    """Push the local image to ``registry``; the pinned reference the nodes will pull."""
    with swarm.image_source(client) as find:
        source = find(image)
        if source is None:
            raise CqkdError(f"the image {image} does not exist; build it with: cqkd-stack setup")
        say(f"pushing {image} to {registry}")
        pushed = distribute.push_to_registry(source, image, registry)
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
    outcome = DeployOutcome(request.stack, checked.source)
    resolve = "never"
    if request.registry:
        outcome.pushed = push_image(client, request.local_image, request.registry, say)
        outcome.images = distribute.pull_on_nodes(client, outcome.pushed, say)
        resolve = "always"
    else:
        outcome.images = images_on_nodes(client, checked.images, say)
    with tempfile.TemporaryDirectory(prefix="cqkd-") as tmp:
        path = Path(tmp) / f"{request.stack}.stack.yml"
        path.write_text(checked.text)
        say(f"deploying stack '{request.stack}' ({checked.source})")
        # Docker reads env files and relative paths from the given file's folder.
        where = working_dir_of(checked.source)
        live.deploy_bootstrap_first(
            client, path, request.stack, say, resolve_image=resolve, working_dir=where
        )
    if not request.wait:
        return outcome
    outcome.waited = live.wait_until_ready(client, request.stack, request.timeout, progress)
    outcome.ports = swarm.port_map(client, request.stack, request.policy)
    return outcome


@dataclass
class ScaleOutcome:
    stack: str
    service: str
    replicas: int
    waited: live.WaitResult

    def summary(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "service": self.service,
            "replicas": self.replicas,
            "seconds": round(self.waited.seconds, 1),
            "tasks": self.waited.total,
        }


def check_scale(
    client: docker.DockerClient, stack: str, service: str, replicas: int, policy: Policy
) -> None:
    """The new count, judged by the validator's rules on the live service; NotDeployed if not."""
    results = swarm.scale_problems(client, stack, service, replicas, policy)
    if not results.ok:
        raise NotDeployed(results, "nothing was changed")


def plan_scale(client: docker.DockerClient, stack: str, service: str, replicas: int) -> Plan:
    """What ``scale_stack`` would change (after ``check_scale``): nothing is changed."""
    state = swarm.stack_state(client, stack)
    live = next((s for s in state.services if s["Spec"]["Name"] == f"{stack}_{service}"), None)
    image = live["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] if live else ""
    found = node_image_ids(client, (image,)) if image else []
    return scale_plan(stack, service, replicas, state, found)


def plan_teardown(client: docker.DockerClient, stack: str) -> Plan:
    """What ``teardown`` would remove; nothing is removed."""
    return teardown_plan(stack, swarm.stack_state(client, stack))


def scale_stack(
    client: docker.DockerClient,
    stack: str,
    service: str,
    replicas: int,
    timeout: float,
    progress: Progress | None = None,
    say: Say | None = None,
) -> ScaleOutcome:
    """Scale a checked service and wait until the DHT has every task.

    A node that joined since the deploy gets the image first, so that no
    new task waits in "Preparing" for it.
    """
    spec = client.api.inspect_service(f"{stack}_{service}")["Spec"]
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    images_on_nodes(client, (image,), say or (lambda _: None))
    live.scale_service(client, stack, service, replicas)
    waited = live.wait_until_ready(client, stack, timeout, progress)
    return ScaleOutcome(stack, service, replicas, waited)
