"""Put the node image on every swarm node that may run a task, before a deploy.

Swarm never ships an image: each node's agent pulls it, and with no
registry a task on a node without the image sits in "Preparing" (then
"No such image") for good. Two ways to get it there:

* **copy** (air-gapped clusters, the default): stream ``docker save`` from an
  engine that has the image into ``docker load`` on each node's engine,
  only where the node's image id differs. A node's engine is found through
  its swarm label :data:`ENGINE_LABEL` (``tcp://ADDR:2375``, ``ssh://HOST``,
  anything the Docker SDK accepts); labels live in the swarm, so any
  manager finds them. The engine the toolkit talks to needs no label.
* **registry** (``--registry HOST/REPO``): tag, push, and deploy the pushed
  reference pinned by digest, so every node pulls the very same image.

A node that can get the image neither way is named before anything is
deployed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import CqkdError, UsageError
from ..core.process import Say
from .client import engine_client, image_id
from .inspection import ENGINE_LABEL, SwarmNode, nodes_that_run_tasks

if TYPE_CHECKING:
    import docker

# Copies run side by side, each its own save stream: bounded so a big
# cluster does not make the source engine serialise dozens of saves at once.
_PARALLEL_COPIES = 4
# docker save streams in chunks; 1 MiB keeps memory flat whatever the image size.
_CHUNK = 1024 * 1024


@dataclass
class NodeImage:
    """One node: ``present``, ``copied``, ``pulled``, ``left to swarm`` or ``failed``."""

    node: str
    node_id: str
    engine: str
    action: str
    seconds: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def other_engines(manager: docker.DockerClient) -> Iterator[list[docker.DockerClient]]:
    """Clients of every other node's engine that is labelled and answers, closed afterwards.

    What a node's own engine sees (its containers, its local volumes) the
    manager's API does not show; teardown asks these.
    """
    from docker.errors import APIError

    clients = []
    try:
        for node in nodes_that_run_tasks(manager):
            if node.local or not node.engine:
                continue
            with contextlib.suppress(CqkdError):
                clients.append(engine_client(node.engine))
    except APIError:
        pass  # not a manager: nothing more to ask
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def _chunks(client: docker.DockerClient, image: str) -> Iterator[bytes]:
    yield from client.api.get_image(image, chunk_size=_CHUNK)


def copy_image(source: docker.DockerClient, target: docker.DockerClient, image: str) -> bool:
    """``docker save | docker load`` from source to target; False when target already has it.

    The save is streamed into the load: nothing is held in memory or on disk
    whatever the image's size. The id is compared after the load, so a
    truncated stream is an error, not a node left with a broken image.
    """
    wanted = image_id(source, image)
    if wanted is None:
        raise CqkdError(f"the image {image} is not on the source engine; build it with: setup")
    if image_id(target, image) == wanted:
        return False
    result = target.api.load_image(_chunks(source, image))
    for line in result or []:
        if isinstance(line, dict) and line.get("error"):
            raise CqkdError(f"loading {image} failed: {line['error']}")
    got = image_id(target, image)
    if got != wanted:
        raise CqkdError(f"after loading, {image} is {got or 'missing'}, expected {wanted}")
    return True


def _copy_to(source: docker.DockerClient, node: SwarmNode, image: str) -> NodeImage:
    start = time.monotonic()
    outcome = NodeImage(node.hostname, node.node_id, node.engine, "present")
    try:
        target = engine_client(node.engine)
        try:
            if copy_image(source, target, image):
                outcome.action = "copied"
        finally:
            target.close()
    except CqkdError as exc:
        outcome.action, outcome.error = "failed", str(exc)
    outcome.seconds = round(time.monotonic() - start, 1)
    return outcome


def ensure_on_nodes(
    manager: docker.DockerClient,
    image: str,
    source: docker.DockerClient | None = None,
    say: Say | None = None,
) -> list[NodeImage]:
    """The image on every node that may run a task, copied where its id differs.

    ``source`` is the engine the image is copied from (default: the manager).
    Raises CqkdError naming every node that does not have it afterwards.
    """
    source = source or manager
    wanted = image_id(source, image)
    if wanted is None:
        raise CqkdError(f"the image {image} does not exist; build it with: cqkd-stack setup")
    results: list[NodeImage] = []
    remote: list[SwarmNode] = []
    for node in nodes_that_run_tasks(manager):
        if node.local:
            results.append(_local(manager, source, node, image))
        elif node.engine:
            remote.append(node)
        else:
            results.append(
                NodeImage(
                    node.hostname,
                    node.node_id,
                    "",
                    "failed",
                    error=(
                        f"no {ENGINE_LABEL} label, so the image cannot be checked or copied "
                        f"there; add one (docker node update --label-add "
                        f"{ENGINE_LABEL}=tcp://ADDR:2375 {node.hostname}) or deploy with "
                        f"--registry HOST/REPO"
                    ),
                )
            )
    if remote and say is not None:
        say(f"checking {image} on {len(remote)} more node(s)")
    with ThreadPoolExecutor(max_workers=_PARALLEL_COPIES) as pool:
        results += list(pool.map(lambda n: _copy_to(source, n, image), remote))
    failed = [r for r in results if r.action == "failed"]
    if failed:
        lines = "\n".join(f"  {r.node}: {r.error}" for r in failed)
        raise CqkdError(f"{image} cannot reach {len(failed)} node(s), nothing deployed:\n{lines}")
    if say is not None:
        copied = [r.node for r in results if r.action == "copied"]
        if copied:
            say(f"copied {image} to {', '.join(copied)}")
    return results


def _local(
    manager: docker.DockerClient,
    source: docker.DockerClient,
    node: SwarmNode,
    image: str,
) -> NodeImage:
    start = time.monotonic()
    outcome = NodeImage(node.hostname, node.node_id, "", "present")
    if source is not manager:
        try:
            if copy_image(source, manager, image):
                outcome.action = "copied"
        except CqkdError as exc:
            outcome.action, outcome.error = "failed", str(exc)
    elif image_id(manager, image) is None:
        outcome.action, outcome.error = "failed", "the image is not on this engine"
    outcome.seconds = round(time.monotonic() - start, 1)
    return outcome


@dataclass(frozen=True)
class NodeImageId:
    """What one node holds of one image, and what the engine it would be copied from holds.

    Read without changing anything: the input of a dry run's image plan.
    """

    image: str
    node: str
    node_id: str
    local: bool
    # The id on the engine the image would be copied from; None: on neither
    # this machine's engine nor the manager.
    source_id: str | None
    # The id on the node; None: absent, or not known (see ``error``).
    image_id: str | None
    reachable: bool
    error: str = ""


def image_ids_on_nodes(
    manager: docker.DockerClient, image: str, source: docker.DockerClient | None
) -> list[NodeImageId]:
    """The image's id on every node that may run a task, read as ``ensure_on_nodes`` reads it."""
    source_id = image_id(source, image) if source is not None else None

    def check(node: SwarmNode) -> NodeImageId:
        found = NodeImageId(image, node.hostname, node.node_id, node.local, source_id, None, True)
        if node.local:
            return dataclasses.replace(found, image_id=image_id(manager, image))
        if not node.engine:
            return dataclasses.replace(
                found,
                reachable=False,
                error=f"no {ENGINE_LABEL} label, so the image cannot be checked or copied there",
            )
        try:
            target = engine_client(node.engine)
        except CqkdError as exc:
            return dataclasses.replace(found, reachable=False, error=exc.message)
        try:
            return dataclasses.replace(found, image_id=image_id(target, image))
        finally:
            target.close()

    nodes = nodes_that_run_tasks(manager)
    with ThreadPoolExecutor(max_workers=_PARALLEL_COPIES) as pool:
        return list(pool.map(check, nodes))


def names_a_registry(image: str) -> bool:
    """``registry.example:5000/x`` or ``localhost/x``: a name nodes can pull, as Docker reads it."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def registry_reference(registry: str, image: str) -> str:
    """``HOST/REPO:TAG``: the local image's tag under the registry's repository.

    Docker rules: a tag is what follows the last colon after the last slash.
    """
    if not registry or "@" in registry or ":" in registry.rsplit("/", 1)[-1]:
        raise UsageError(f"--registry takes HOST/REPO without a tag or digest, not {registry!r}")
    if "/" not in registry:
        raise UsageError(
            f"--registry takes HOST/REPO, e.g. registry.example:5000/cqkd, not {registry!r}"
        )
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    return f"{registry}:{tag}"


def push_to_registry(source: docker.DockerClient, image: str, registry: str) -> str:
    """Tag ``image`` as ``registry:TAG``, push it; the reference pinned by digest.

    A digest, not a tag, goes into the stack: every node pulls byte for byte
    the image that was pushed, even if the tag moves meanwhile.
    """
    from docker.errors import APIError

    tag = registry_reference(registry, image).rsplit(":", 1)[1]
    if image_id(source, image) is None:
        raise CqkdError(f"the image {image} does not exist; build it with: cqkd-stack setup")
    source.images.get(image).tag(registry, tag)
    digest = ""
    try:
        for line in source.api.push(registry, tag, stream=True, decode=True):
            if line.get("error"):
                raise CqkdError(f"pushing {registry}:{tag} failed: {line['error']}")
            digest = (line.get("aux") or {}).get("Digest", digest)
    except APIError as exc:
        raise CqkdError(f"pushing {registry}:{tag} failed: {exc.explanation}") from None
    if not digest:
        raise CqkdError(f"the registry did not return a digest for {registry}:{tag}")
    return f"{registry}:{tag}@{digest}"


def pull_on_nodes(
    manager: docker.DockerClient, pushed: str, say: Say | None = None
) -> list[NodeImage]:
    """Every reachable node pulls the pushed image (``HOST/REPO:TAG@DIGEST``) now.

    Swarm would pull it at each task's start, except on engines that run
    with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`` (what ``setup`` and
    ``cluster up`` give an air-gapped node): Debian's engine then never
    pulls, and tasks fail with "No such image". Nodes whose engine is not
    labelled are left to Swarm's own pull.
    """
    from docker.errors import APIError

    name, _, digest = pushed.partition("@")
    by_digest = f"{name.rsplit(':', 1)[0]}@{digest}"
    results = []
    for node in nodes_that_run_tasks(manager):
        start = time.monotonic()
        outcome = NodeImage(node.hostname, node.node_id, node.engine, "pulled")
        if not node.local and not node.engine:
            outcome.action = "left to swarm"
            results.append(outcome)
            continue
        try:
            target = manager if node.local else engine_client(node.engine)
            try:
                target.images.pull(by_digest)
            finally:
                if target is not manager:
                    target.close()
        except (CqkdError, APIError) as exc:
            outcome.action, outcome.error = "failed", str(exc)
        outcome.seconds = round(time.monotonic() - start, 1)
        results.append(outcome)
    failed = [r for r in results if r.action == "failed"]
    if failed:
        lines = "\n".join(f"  {r.node}: {r.error}" for r in failed)
        raise CqkdError(f"{len(failed)} node(s) cannot pull {pushed}, nothing deployed:\n{lines}")
    if say is not None:
        say(f"{by_digest} pulled on {sum(r.action == 'pulled' for r in results)} node(s)")
    return results
