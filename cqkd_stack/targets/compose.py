"""The CQKD network as a docker-compose file: one service per worker, each port published.

A host without Swarm has no ``{{.Task.Slot}}``, so nothing can give the
tasks of one service different ports. The compose target writes what an
operator would otherwise write by hand: worker N is its own service with
``WORKER_ID=N`` and its port ``7000 + N - 1`` published on the host as UDP,
beside the bootstrap node and the special nodes. Each service's environment
comes from the same Swarm template and policy as ``render``, with the slot
filled in, so the resolver in each container computes the port the file
publishes.

The file is checked like a stack, by the same port rules (the linter's),
after docker-compose 1.29.2's own schema (``schemas/compose-v1``), since that
tool, not ``docker stack``, reads it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from jsonschema import Draft201909Validator
from jsonschema.exceptions import ValidationError

from .. import __version__
from ..core.contract import (
    ROLE_LABEL,
    TakenSubnet,
    env_for_slot,
    fill_slot,
    key_values,
    resolve_slot,
    role_of,
    service_role,
)
from ..core.documents import (
    LoadedStack,
    closest_branch,
    humanise,
    load_schema,
    matches_pattern,
    non_string_keys,
    parse_yaml_nodes,
)
from ..core.errors import InvalidInput, UsageError
from ..core.policy import Policy
from ..core.results import PathParts, Problem, json_path
from ..node.resolver import ResolverError
from .base import BRIDGE_MAX_CONTAINERS, RenderOptions, Target, refuse_kubernetes_options
from .swarm import render_document

TARGET_KEY = "x-cqkd-target"
NAME = "compose"
SCHEMA = "compose-v1/compose_spec.json"
EXPECTED = "a compose file with services"
# A compose-target file has one service per worker. Reading YAML costs ~10
# us a node written in the file, and checking a distinct service ~0.3 ms:
# 1500 distinct services took ~1 s to refuse. So the nodes written are
# bounded lower than a stack's (MAX_EXPANDED_NODES) while aliases may expand
# further: `render` writes what every worker shares once, under an anchor
# merged into each worker (15,270 nodes written for 1000 workers, ~57,000
# expanded). A file written without anchors holds ~400 services.
MAX_COMPOSE_NODES = 20_000
MAX_COMPOSE_EXPANDED = 100_000
# Services, checked before the schema: each distinct service costs ~0.3 ms
# of schema and port checks, so a file of small services under the node
# bound could otherwise take seconds to refuse. The default policy's ranges
# hold 1122 DHT nodes; twice the worker range leaves room for other services.
MAX_COMPOSE_SERVICES = 2048
# Memory per container. The node process holds ~3.7 MiB of anonymous memory
# once joined (docs/operations.md); the limit is the cgroup's (page cache
# included) and leaves room for a busy routing table. The bootstrap and the
# special nodes answer for the whole network (every join; Alice's and Bob's
# control requests), so they get twice as much.
WORKER_MEMORY = "64m"
NODE_MEMORY = "128m"
# Workers wait for the bootstrap's health check; check it often, so they do not wait long.
BOOTSTRAP_HEALTH_INTERVAL = "2s"
_TARGET_LINE = re.compile(rf"^{TARGET_KEY}\s*:\s*[\"']?{NAME}\b", re.MULTILINE)


def is_compose_target(text: str) -> bool:
    """Does this text declare itself a compose-target file (the key ``render`` writes)?"""
    return _TARGET_LINE.search(text) is not None


def worker_service(slot: int) -> str:
    """The compose service of worker ``slot``: ``worker-7`` publishes 7006."""
    return f"worker-{slot}"


def _check_options(options: RenderOptions) -> None:
    if options.network != "overlay":
        raise UsageError(
            "--network host is a Swarm option; the compose target publishes every "
            "worker's port on the host from its own network namespace"
        )
    if options.is_batch:
        raise UsageError(
            "--port-offset makes a Swarm batch; with --target compose render one file "
            "with every worker (--replicas N)"
        )
    if options.subnet:
        raise UsageError(
            "--subnet sizes a Swarm overlay; the compose target's bridge network takes "
            "a subnet from Docker's default pools"
        )
    if options.healthcheck:
        raise UsageError(
            "--healthcheck: the compose target always checks the bootstrap (workers wait "
            "for it) and no other node"
        )


def render_compose_document(policy: Policy, options: RenderOptions) -> dict[str, Any]:
    """The compose file as data: the Swarm stack's services, one per task."""
    refuse_kubernetes_options(options)
    _check_options(options)
    # No sealed control port: dht-check reaches a compose project's nodes by
    # docker exec on this one host, and compose has no Swarm configs for the key.
    swarm = render_document(dataclasses.replace(policy, control=None), options, groups=False)
    services: dict[str, Any] = {}
    roles = {name: service_role(s, template=True) for name, s in swarm["services"].items()}
    bootstraps = [name for name, role in roles.items() if role == "bootstrap"]
    for name, service in swarm["services"].items():
        role = roles[name]
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        for slot in range(1, replicas + 1):
            own = worker_service(slot) if replicas > 1 else name
            try:
                services[own] = _container(service, role, slot, replicas > 1, bootstraps, policy)
            except ResolverError as exc:
                # Each service has a fixed port, so what Swarm would refuse
                # at scale time is refused here, before any file is written.
                raise InvalidInput(f"--replicas {options.replicas}: service {own}: {exc}") from None
    return {
        TARGET_KEY: NAME,
        "services": services,
        # Not internal, unlike the Swarm overlay: ports cannot be published
        # from an internal network.
        "networks": {name: {"driver": "bridge"} for name in swarm.get("networks") or {}},
        **({"volumes": swarm["volumes"]} if swarm.get("volumes") else {}),
    }


def _container(
    service: dict[str, Any],
    role: str | None,
    slot: int,
    numbered: bool,
    bootstraps: list[str],
    policy: Policy,
) -> dict[str, Any]:
    """One task of a Swarm service as a compose service, its slot written in."""
    out = {k: copy.deepcopy(v) for k, v in service.items() if k != "deploy"}
    if "hostname" in out:
        out["hostname"] = fill_slot(str(out["hostname"]), slot)
    env = env_for_slot(key_values(service.get("environment")), slot)
    if role is None:
        out["environment"] = env
        return out
    if numbered:
        # WORKER_ID, the compose design's name for the slot, instead of Swarm's TASK_SLOT.
        env.pop("TASK_SLOT", None)
        env["WORKER_ID"] = str(slot)
    out["environment"] = env
    port = resolve_slot(env, slot).port
    out["ports"] = [f"{port}:{port}/{policy.protocol}"]
    out["labels"] = {ROLE_LABEL: role}
    out["mem_limit"] = WORKER_MEMORY if role == "worker" else NODE_MEMORY
    # Swarm's restart_policy any: a DHT node is meant to run until taken down.
    out["restart"] = "unless-stopped"
    if role == "bootstrap":
        out["healthcheck"] = {"interval": BOOTSTRAP_HEALTH_INTERVAL}
    else:
        # Only the bootstrap's health gates anything; a check per worker
        # would be an exec per worker per interval for nothing.
        out["healthcheck"] = {"disable": True}
        out["depends_on"] = {b: {"condition": "service_healthy"} for b in bootstraps}
    return out


# libyaml's emitter when PyYAML has it: a thousand small documents in a fraction of the time.
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
WORKER_ANCHOR = "worker"
WORKER_ENV_ANCHOR = "worker-environment"


def _block(data: dict[str, Any], indent: int) -> str:
    """``data`` as YAML block lines at ``indent`` spaces; "" for nothing."""
    if not data:
        return ""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    pad = " " * indent
    return "".join(pad + line + "\n" for line in text.splitlines())


def _shared(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The entries every one of ``items`` has, with the same value."""
    first, rest = items[0], items[1:]
    return {k: v for k, v in first.items() if all(k in o and o[k] == v for o in rest)}


def _workers_text(workers: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(anchors, services): what all workers share is written once and merged into each.

    A thousand copies of the same twenty lines made a 650 kB file that took
    ~1 s to read back; with YAML merge keys (which docker-compose reads) each
    worker is five lines, and the file ~140 kB.
    """
    items = list(workers.values())
    base = _shared(items)
    base_env = _shared([i.get("environment") or {} for i in items])
    base.pop("environment", None)
    anchors = (
        f"x-{WORKER_ANCHOR}: &{WORKER_ANCHOR}\n{_block(base, 2)}"
        f"x-{WORKER_ENV_ANCHOR}: &{WORKER_ENV_ANCHOR}\n{_block(base_env, 2)}"
    )
    parts = []
    for name, service in workers.items():
        own = {k: v for k, v in service.items() if k not in base and k != "environment"}
        env = service.get("environment") or {}
        own_env = {k: v for k, v in env.items() if k not in base_env}
        parts.append(
            f"  {name}:\n    <<: *{WORKER_ANCHOR}\n{_block(own, 4)}"
            f"    environment:\n      <<: *{WORKER_ENV_ANCHOR}\n{_block(own_env, 6)}"
        )
    return anchors, "".join(parts)


def parallel_limit(services: int) -> int:
    """COMPOSE_PARALLEL_LIMIT that keeps docker-compose 1.29 from deadlocking.

    Its `up` runs one thread per service and, inside each, one per container,
    and both kinds take a slot of one process-wide pool (64 by default). When
    more than 64 services are in flight at once, every slot is held by a
    service thread waiting for a container thread that can never start
    (docker/compose#5864). Seen here with 100 workers, 2 times in 6 `up`s:
    it stopped at 27 and 36 containers, py-spy showing 64 threads in
    ``Service._execute_convergence_create``. A pool with room for both
    levels of every service cannot fill up.
    """
    return 2 * services + 8


def render_compose(policy: Policy, options: RenderOptions) -> str:
    """The compose file: what ``render_compose_document`` holds, workers written compactly."""
    doc = render_compose_document(policy, options)
    services = doc["services"]
    workers = {n: s for n, s in services.items() if role_of({}, s.get("labels", {})) == "worker"}
    others = {n: s for n, s in services.items() if n not in workers}
    anchors, worker_text = _workers_text(workers) if len(workers) > 1 else ("", "")
    if not worker_text:
        others = services
    rest = {k: v for k, v in doc.items() if k not in (TARGET_KEY, "services")}
    limit = parallel_limit(len(services))
    header = (
        f"# Rendered by cqkd-stack {__version__} for docker-compose: {options.replicas} "
        f"workers, one service each, policy {policy.source}.\n"
        "# Validate before use: cqkd-stack validate FILE; run (the limit keeps docker-compose\n"
        f"# 1.29 from deadlocking past 64 services): COMPOSE_PARALLEL_LIMIT={limit} "
        "docker-compose -p NAME -f FILE up -d\n"
        "# What every worker shares is under x-worker and merged into each (<<: *worker).\n"
    )
    return (
        header
        + _block({TARGET_KEY: NAME}, 0)
        + anchors
        + "services:\n"
        + _block(others, 2)
        + worker_text
        + _block(rest, 0)
    )


# --- reading and checking a compose file ---------------------------------------


class _ServiceSchema:
    """docker-compose's schema, checked service by service with repeated values checked once.

    A file with one service per worker repeats the same values a thousand
    times (image, volumes, limits...); jsonschema took ~0.9 s on 1003
    services. A service is valid when the service schema without its
    ``properties`` accepts it and each property's value is valid on its own,
    which holds because no property name matches the schema's only pattern
    (``^x-``). So each distinct (key, value) is validated once: ~0.2 s.
    """

    def __init__(self) -> None:
        root = load_schema(SCHEMA)
        self.document = Draft201909Validator(root)
        service = root["definitions"]["service"]
        shallow = {**service, "properties": dict.fromkeys(service["properties"], True)}
        # evolve() keeps the root's resolver, so each property's $ref still resolves.
        self.shallow = self.document.evolve(schema=shallow)
        self.properties = {
            k: self.document.evolve(schema=v) for k, v in service["properties"].items()
        }
        self.seen: dict[tuple[str, str], list[ValidationError]] = {}

    def errors(self, doc: dict[str, Any]) -> Iterator[tuple[PathParts, ValidationError]]:
        """(path in the document, error) for every schema error of ``doc``."""
        services = doc.get("services")
        if not isinstance(services, dict):
            yield from ((tuple(e.absolute_path), e) for e in self.document.iter_errors(doc))
            return
        outline = {**doc, "services": {name: {} for name in services}}
        yield from ((tuple(e.absolute_path), e) for e in self.document.iter_errors(outline))
        for name, service in services.items():
            at = ("services", name)
            for error in self.shallow.iter_errors(service):
                yield (*at, *error.absolute_path), error
            if not isinstance(service, dict):
                continue
            for key, value in service.items():
                validator = self.properties.get(key)
                if validator is None:
                    continue
                memo = (key, json.dumps(value, sort_keys=True, default=repr))
                found = self.seen.get(memo)
                if found is None:
                    found = self.seen[memo] = list(validator.iter_errors(value))
                for error in found:
                    yield (*at, key, *error.absolute_path), error


def load_compose(text: str, file: str) -> LoadedStack:
    """A compose file as docker-compose 1.29.2's schema sees it; lines kept for problems."""
    parsed = parse_yaml_nodes(
        text, file, EXPECTED, max_nodes=MAX_COMPOSE_NODES, max_expanded=MAX_COMPOSE_EXPANDED
    )
    if parsed.data is None:
        return LoadedStack(None, parsed.problems, _root=parsed.root)
    loaded = LoadedStack(None, [], _root=parsed.root)
    bad_keys = list(non_string_keys(parsed.data, ()))
    loaded.problems += [
        Problem(file, json_path(parts), message, loaded.locate(json_path(parts)))
        for parts, message in bad_keys
    ]
    if bad_keys:  # no schema can say anything about such a document
        return loaded
    services = parsed.data.get("services")
    if isinstance(services, dict) and len(services) > MAX_COMPOSE_SERVICES:
        loaded.problems.append(
            Problem(
                file,
                "$.services",
                f"{len(services):,} services; a compose file is checked up to "
                f"{MAX_COMPOSE_SERVICES:,} (one per DHT node, and others beside them): "
                "refused as too large to check",
                loaded.locate("$.services"),
            )
        )
        return loaded
    for parts, error in _ServiceSchema().errors(parsed.data):
        if error.context:
            chosen = closest_branch(error)
            parts = (*parts, *list(chosen.absolute_path)[len(error.absolute_path) :])
            error = chosen
        path = json_path(parts)
        line = loaded.locate(json_path((*parts, *_unknown_keys(error)[:1])))
        loaded.problems.append(Problem(file, path, humanise(error), line))
    if not loaded.problems:
        loaded.doc = parsed.data
    return loaded


def _unknown_keys(error: ValidationError) -> list[str]:
    """The keys an additionalProperties error is about: the line to point at is theirs."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return []
    known = error.schema.get("properties", {})
    return [k for k in error.instance if k not in known and not matches_pattern(error.schema, k)]


def compose_problems(
    doc: dict[str, Any],
    file: str,
    policy: Policy | None = None,
    taken: Sequence[TakenSubnet] = (),
) -> list[Problem]:
    """What docker-compose would trip on that no schema says, for a CQKD network.

    The compose target's own rules (the registry's ``problems``): they need
    neither the policy nor the engine's subnets (a bridge takes its own).
    """
    problems: list[Problem] = []
    services: dict[str, Any] = doc.get("services") or {}
    if not services:
        return [Problem(file, "$.services", "no services: a compose file needs at least one")]
    for name, service in services.items():
        env = key_values(service.get("environment"))
        labels = key_values(service.get("labels"))
        dht = "CQKD_ROLE" in env or ROLE_LABEL in labels
        scale = service.get("scale", 1)
        if dht and isinstance(scale, int) and scale > 1:
            problems.append(
                Problem(
                    file,
                    json_path(["services", name, "scale"]),
                    f"scale: {scale} starts {scale} containers with one environment, so one "
                    "port: give each worker its own service (cqkd-stack render --target "
                    "compose --replicas N writes them)",
                )
            )
        depends = service.get("depends_on") or []
        for other in depends if isinstance(depends, list) else list(depends):
            if other not in services:
                problems.append(
                    Problem(
                        file,
                        json_path(["services", name, "depends_on", other]),
                        f"depends on service '{other}', which the file does not define",
                    )
                )
    problems += _bridge_problems(doc, file)
    return problems


def _bridge_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """A bridge network holds at most 1023 containers; the next one cannot start."""
    networks = doc.get("networks") or {}
    joined: dict[str, int] = {}
    for service in (doc.get("services") or {}).values():
        if "network_mode" in service:
            continue
        names = service.get("networks") or ["default"]
        for name in names if isinstance(names, list) else list(names):
            joined[name] = joined.get(name, 0) + 1
    problems = []
    for name, count in joined.items():
        network = networks.get(name) or {}
        if network.get("external") or network.get("driver", "bridge") != "bridge":
            continue
        if count > BRIDGE_MAX_CONTAINERS:
            where = ["networks", name] if name in networks else ["services"]
            problems.append(
                Problem(
                    file,
                    json_path(where),
                    f"{count} services join bridge network '{name}', but a Linux bridge "
                    f"holds at most {BRIDGE_MAX_CONTAINERS} containers: spread them over "
                    "several networks or deploy on Swarm",
                )
            )
    return problems


TARGET = Target(
    name=NAME,
    render=render_compose,
    declared_by=is_compose_target,
    load=load_compose,
    problems=compose_problems,
    note="a docker-compose file (compose target), checked as one",
)
