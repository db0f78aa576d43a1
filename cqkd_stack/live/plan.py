"""What ``deploy``, ``scale`` and ``teardown`` would do, as data, without doing it.

``--dry-run`` renders and validates against the live swarm exactly as the
real run does, then asks this module what would change: which services are
created, updated or removed (with their replicas and ports), which images
are copied to which nodes, and how many tasks start, stop or are replaced.
Everything here is a pure function of what was read from the swarm once
(``inspection.StackState``, ``distribution.NodeImageId``), so it is unit-tested
without an engine; ``plan_deploy``, ``plan_scale`` and ``plan_teardown`` below are
the thin wrappers that read.

A task is *replaced* when its service's image or environment changes:
Swarm then restarts every task of it, one at a time (the rendered stacks
use ``update_config: {order: stop-first}``). Other spec changes (resources,
mounts, labels) are not predicted; ``docker stack deploy`` decides them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.contract import group_node_label, key_values
from ..core.policy import Policy
from ..lint.rules import check_service
from .client import image_source
from .deploy import CheckedStack, DeployRequest, bootstrap_only
from .distribution import NodeImageId, image_ids_on_nodes, names_a_registry
from .groups import GroupResize, group_nodes, pinned_groups
from .inspection import StackState, env_of, port_rule, stack_state
from .teardown import DRAIN_STEP

if TYPE_CHECKING:
    import docker

# What happens to a service.
CREATE, UPDATE, SCALE, UNCHANGED, KEPT, REMOVE = (
    "create",
    "update",
    "scale",
    "unchanged",
    "kept",
    "remove",
)


@dataclass
class ServicePlan:
    """One service: what happens to it, its replicas before and after, its ports."""

    service: str
    action: str
    replicas: int | None  # after; None for a global service or a removed one
    current: int | None = None  # before; None when it does not exist yet
    ports: list[str] = field(default_factory=list)  # "7000-7049/udp" (DHT ports)
    published: list[str] = field(default_factory=list)  # "8080/tcp"
    image: str = ""
    changed: list[str] = field(default_factory=list)  # "image", "environment"
    starting: int = 0  # new tasks
    stopping: int = 0  # running tasks that stop for good
    replaced: int = 0  # running tasks restarted with the new spec
    # teardown: more tasks than DRAIN_STEP are stepped down first.
    stepped: bool = False


@dataclass
class ImagePlan:
    """One image on one node: ``present``, ``copy``, ``pull``, or ``cannot`` (and why)."""

    image: str
    node: str
    action: str
    error: str = ""


@dataclass
class Plan:
    """Everything a run would change; ``problems`` are why it would refuse to start."""

    operation: str
    stack: str
    services: list[ServicePlan] = field(default_factory=list)
    images: list[ImagePlan] = field(default_factory=list)
    networks_created: list[str] = field(default_factory=list)  # "cqkd_dht 10.213.0.0/24"
    networks_removed: list[str] = field(default_factory=list)
    volumes_removed: list[str] = field(default_factory=list)
    containers_removed: int = 0
    # Host-network worker groups: "node-2 org.cqkd.group.cqkd=2" for each label to set.
    nodes_labelled: list[str] = field(default_factory=list)
    pushed: str = ""  # --registry: where the image would be pushed
    bootstrap_first: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def totals(self) -> dict[str, int]:
        return {
            "starting": sum(s.starting for s in self.services),
            "stopping": sum(s.stopping for s in self.services),
            "replaced": sum(s.replaced for s in self.services),
        }

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``--format json`` prints it."""
        return {"dry_run": True, **asdict(self), "tasks": self.totals(), "ok": self.ok}


def deploy_plan(
    stack: str,
    doc: dict[str, Any],
    state: StackState,
    policy: Policy,
    images: list[NodeImageId],
    registry: str = "",
) -> Plan:
    """What ``docker stack deploy`` of ``doc`` (validated, interpolated) would change.

    ``docker stack deploy`` runs without ``--prune``: a live service the file
    no longer has is left as it is (``kept``).
    """
    plan = Plan("deploy", stack, images=image_plans(images, registry), pushed=registry)
    plan.problems += [f"{i.image} on {i.node}: {i.error}" for i in plan.images if i.error]
    live = {s["Spec"]["Name"]: s for s in state.services}
    running = state.running_per_service()
    for name, service in (doc.get("services") or {}).items():
        full = f"{stack}_{name}"
        plan.services.append(
            _service_plan(full, name, service, live.get(full), running.get(full, 0), policy)
        )
    for full in sorted(set(live) - {s.service for s in plan.services}):
        current = port_rule(live[full]).replicas
        plan.services.append(ServicePlan(full, KEPT, current, current))
    existing = {n["Name"] for n in state.networks}
    declared = doc.get("networks") or {}
    for key in sorted(_own_networks(doc)):
        engine_name = (declared.get(key) or {}).get("name", f"{stack}_{key}")
        if engine_name not in existing:
            subnet = _subnet(declared.get(key) or {})
            plan.networks_created.append(f"{engine_name} {subnet}".strip())
    plan.bootstrap_first = not state.services and bootstrap_only(doc) is not None
    return plan


def _service_plan(
    full: str,
    name: str,
    service: dict[str, Any],
    live: dict[str, Any] | None,
    running: int,
    policy: Policy,
) -> ServicePlan:
    deploy = service.get("deploy") or {}
    replicas = None
    if deploy.get("mode", "replicated") == "replicated":
        value = deploy.get("replicas", 1)
        replicas = value if isinstance(value, int) and not isinstance(value, bool) else 1
    _, claims = check_service(full, name, service, policy)
    out = ServicePlan(
        full,
        CREATE,
        replicas,
        ports=[f"{c.ports}/{c.protocol}" for c in claims if not c.published],
        published=[f"{c.ports}/{c.protocol}" for c in claims if c.published],
        image=str(service.get("image") or ""),
    )
    if live is None:
        out.starting = replicas or 0
        return out
    out.current = port_rule(live).replicas
    out.changed = changed_fields(service, live)
    wanted = running if replicas is None else replicas
    out.starting = max(0, wanted - (out.current if out.current is not None else running))
    out.stopping = max(0, running - wanted)
    if out.changed:
        out.action, out.replaced = UPDATE, min(running, wanted)
    elif replicas != out.current:
        out.action = SCALE
    else:
        out.action = UNCHANGED
    return out


def changed_fields(service: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Of what makes Swarm replace a service's tasks, what differs: image, environment."""
    spec = live["Spec"]
    current_image = spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")
    wanted_image = str(service.get("image") or "")
    if "@" not in wanted_image:  # deployed by tag; the engine may have pinned its digest
        current_image = current_image.split("@", 1)[0]
    changed = []
    if current_image != wanted_image:
        changed.append("image")
    if _environment(service.get("environment")) != env_of(spec):
        changed.append("environment")
    return changed


def _environment(value: Any) -> dict[str, str]:
    """A stack file's environment as Docker puts it in the spec (``true``, not ``True``)."""
    if isinstance(value, dict):
        value = {
            k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in value.items()
        }
    return key_values(value)


def _own_networks(doc: dict[str, Any]) -> set[str]:
    """Keys of the networks ``docker stack deploy`` creates for this file (not external ones)."""
    declared = doc.get("networks") or {}
    used = set()
    for service in (doc.get("services") or {}).values():
        joined = service.get("networks") or ["default"]
        used |= set(joined if isinstance(joined, list) else list(joined))
    return {key for key in used if not (declared.get(key) or {}).get("external")}


def _subnet(network: dict[str, Any]) -> str:
    for config in (network.get("ipam") or {}).get("config") or []:
        try:
            return str(ipaddress.ip_network(str(config.get("subnet", ""))))
        except ValueError:
            continue
    return ""


def image_plans(images: list[NodeImageId], registry: str = "") -> list[ImagePlan]:
    """Per image and node, what the run would do to put the image there.

    Copied where the node's image id differs from the source's; pulled by a
    node when the image names a registry nobody here has (or ``--registry``
    is given); a node that can be neither checked nor reached is a problem.
    """
    plans = []
    for found in images:
        if registry:
            reachable = found.reachable or found.local
            action = "pull" if reachable else "left to swarm"
            if found.source_id is None:
                plans.append(ImagePlan(found.image, found.node, "cannot", _NOT_BUILT))
            else:
                plans.append(ImagePlan(found.image, found.node, action))
        elif found.source_id is None:
            if names_a_registry(found.image):
                plans.append(ImagePlan(found.image, found.node, "pull"))
            else:
                plans.append(ImagePlan(found.image, found.node, "cannot", _NOT_BUILT))
        elif found.error:
            plans.append(ImagePlan(found.image, found.node, "cannot", found.error))
        elif found.image_id == found.source_id:
            plans.append(ImagePlan(found.image, found.node, "present"))
        else:
            plans.append(ImagePlan(found.image, found.node, "copy"))
    return plans


_NOT_BUILT = "the image is on neither this engine nor the manager; build it with: cqkd-stack setup"


def scale_plan(
    stack: str,
    service: str,
    replicas: int,
    state: StackState,
    images: list[NodeImageId],
    groups: GroupResize | None = None,
) -> Plan:
    """What ``docker service scale`` of one (checked) service would change.

    With ``groups``, each worker group's count: the ones created among them.
    """
    plan = Plan("scale", stack, images=image_plans(images))
    plan.problems += [f"{i.image} on {i.node}: {i.error}" for i in plan.images if i.error]
    counts = groups.counts if groups is not None else {service: replicas}
    created = groups.create if groups is not None else ()
    running = state.running_per_service()
    for name, count in counts.items():
        full = f"{stack}_{name}"
        live = (
            groups.shapes[name]
            if groups is not None and name in created
            else next((s for s in state.services if s["Spec"]["Name"] == full), None)
        )
        if live is None:
            plan.problems.append(f"stack '{stack}' has no service '{name}'")
            continue
        rule = port_rule(live)
        current = None if name in created else rule.replicas
        if not count:
            plan.services.append(
                ServicePlan(
                    full,
                    REMOVE,
                    None,
                    current,
                    image=_image_of(live),
                    stopping=running.get(full, 0),
                )
            )
            continue
        first, last = rule.port(1), rule.port(count)
        known = rule.dht and first is not None and last is not None
        ports = [f"{first}-{last}"] if known else []
        plan.services.append(
            ServicePlan(
                full,
                CREATE if name in created else UNCHANGED if count == current else SCALE,
                count,
                current,
                ports=[f"{p}/{rule.protocol}" for p in ports],
                image=_image_of(live),
                starting=max(0, count - (current or 0)),
                stopping=max(0, running.get(full, 0) - count),
            )
        )
    return plan


def teardown_plan(stack: str, state: StackState) -> Plan:
    """What ``teardown`` would remove: every service and task, the networks, the volumes."""
    plan = Plan("teardown", stack)
    if not (state.services or state.containers or state.networks):
        plan.problems.append(f"no stack named '{stack}' is deployed; nothing to remove")
        return plan
    running = state.running_per_service()
    for live in sorted(state.services, key=lambda s: s["Spec"]["Name"]):
        name, rule = live["Spec"]["Name"], port_rule(live)
        plan.services.append(
            ServicePlan(
                name,
                REMOVE,
                None,
                rule.replicas,
                image=_image_of(live),
                stopping=running.get(name, 0),
                stepped=(rule.replicas or 0) > DRAIN_STEP,
            )
        )
    plan.networks_removed = sorted(n["Name"] for n in state.networks)
    plan.volumes_removed = sorted(state.volumes)
    plan.containers_removed = len(state.containers)
    return plan


def _image_of(service: dict[str, Any]) -> str:
    return str(service["Spec"].get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", ""))


def node_image_ids(client: docker.DockerClient, images: tuple[str, ...]) -> list[NodeImageId]:
    """Each image's id on every node and on the engine it would come from (read-only)."""
    with image_source(client) as find:
        return [
            found for image in images for found in image_ids_on_nodes(client, image, find(image))
        ]


def plan_deploy(client: docker.DockerClient, request: DeployRequest, checked: CheckedStack) -> Plan:
    """What ``deploy_stack`` would change: the swarm read once, nothing changed."""
    images = (request.local_image,) if request.registry else checked.images
    plan = deploy_plan(
        request.stack,
        checked.doc,
        stack_state(client, request.stack),
        request.policy,
        node_image_ids(client, images),
        request.registry,
    )
    groups = pinned_groups(checked.doc, request.stack)
    label = group_node_label(request.stack)
    plan.nodes_labelled = [
        f"{p.hostname} {label}={p.group}"
        for p in (group_nodes(client, request.stack, groups) if groups else [])
        if not p.labelled
    ]
    return plan


def plan_scale(
    client: docker.DockerClient,
    stack: str,
    service: str,
    replicas: int,
    groups: GroupResize | None = None,
) -> Plan:
    """What ``scale_stack`` would change (after ``check_scale``): nothing is changed."""
    state = stack_state(client, stack)
    live = next((s for s in state.services if s["Spec"]["Name"] == f"{stack}_{service}"), None)
    image = live["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] if live else ""
    found = node_image_ids(client, (image,)) if image else []
    return scale_plan(stack, service, replicas, state, found, groups)


def plan_teardown(client: docker.DockerClient, stack: str) -> Plan:
    """What ``teardown`` would remove; nothing is removed."""
    return teardown_plan(stack, stack_state(client, stack))
