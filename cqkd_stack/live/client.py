"""The one way to a Docker engine: a swarm manager, this machine's engine, a node's engine.

Every client the toolkit opens is made here, and here the SDK's failure to
reach an engine becomes a ``CqkdError`` that says where it looked and what
to do; past this module an unreachable engine is never a traceback. The
docker CLI (for ``docker stack``, which the SDK lacks) is found here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import CqkdError
from ..core.process import run

if TYPE_CHECKING:
    import docker

LOCAL_SOCKET = "unix:///var/run/docker.sock"


def _client_kwargs() -> tuple[str, dict[str, Any]]:
    """(where, DockerClient arguments) as the docker CLI chooses its engine.

    ``DOCKER_HOST`` (also set by ``cqkd-stack --host``) first, then the
    context in ``DOCKER_CONTEXT`` or the CLI's current one (``docker context
    use``), so ``docker stack deploy`` and the SDK always talk to the same
    manager. The SDK alone honours neither context setting.
    """
    from docker.context import ContextAPI
    from docker.errors import ContextNotFound

    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], {}
    name = os.environ.get("DOCKER_CONTEXT") or None
    try:
        context = ContextAPI.get_context(name)
    except ContextNotFound:
        context = None
    if context is None:
        raise CqkdError(f"no docker context named {name!r}; list them with: docker context ls")
    if context.Name == "default":
        return context.Host or "the local engine", {}
    return f"{context.Host} (context {context.Name})", {
        "base_url": context.Host,
        "tls": context.TLSConfig or False,
    }


def connect() -> docker.DockerClient:
    """A client for a swarm manager (every stack operation needs one), or what to do."""
    import docker
    from docker.errors import DockerException

    where, kwargs = _client_kwargs()

    def client_of(version: str) -> docker.DockerClient:
        if kwargs:
            return docker.DockerClient(timeout=120, version=version, **kwargs)
        return docker.from_env(timeout=120, version=version)

    try:
        # The SDK's "auto" asks GET /version, which dockerd answers by running
        # runc and docker-init (tens of ms on a busy host, more at 1000
        # tasks); the ping that proves the engine is up says the same
        # version in its API-Version header, as the docker CLI reads it.
        pinger = client_of(MINIMUM_API_VERSION)
        version = engine_api_version(pinger)
        pinger.close()
        client = client_of(version)
    except DockerException as exc:
        remote = bool(kwargs) or "DOCKER_HOST" in os.environ
        fix = "is that manager up?" if remote else "start it with: cqkd-stack setup"
        raise CqkdError(f"cannot reach the Docker engine at {where} ({exc}); {fix}") from None
    require_manager(client)
    return client


# The oldest API the SDK speaks, enough for a ping; every call after it uses the engine's own.
MINIMUM_API_VERSION = "1.24"


def engine_api_version(client: docker.DockerClient) -> str:
    """The engine's API version from its ping (``auto`` if it does not say: GET /version then).

    Raises DockerException (the SDK's, so ``connect`` words it) if the engine does not answer OK.
    """
    from docker.errors import APIError, DockerException

    try:
        response = client.api.get(f"{client.api.base_url}/_ping", timeout=client.api.timeout)
    except Exception as exc:  # the transport's own errors (socket, TLS, SSH)
        raise DockerException(str(exc)) from None
    if response.status_code != 200 or response.text != "OK":
        raise APIError(f"ping answered {response.status_code} {response.text[:200]!r}")
    return response.headers.get("API-Version") or "auto"


def local_engine() -> docker.DockerClient | None:
    """The engine on this machine (where ``setup`` builds images), if it answers."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.DockerClient(base_url=LOCAL_SOCKET, timeout=600)
        client.ping()
    except (DockerException, OSError):
        return None
    return client


@contextlib.contextmanager
def image_source(
    manager: docker.DockerClient,
) -> Iterator[Callable[[str], docker.DockerClient | None]]:
    """A lookup: the engine to take an image from, this machine's first, else the manager.

    ``setup`` builds on this machine, so its copy is the one to spread even
    when ``--host`` names another manager that holds an older one.
    """
    local = local_engine()

    def find(image: str) -> docker.DockerClient | None:
        return next((e for e in (local, manager) if e is not None and image_id(e, image)), None)

    try:
        yield find
    finally:
        if local is not None:
            local.close()


def require_manager(client: docker.DockerClient) -> None:
    """Stacks need a swarm manager; say so before anything else fails obscurely.

    GET /swarm answers only on a manager (503 elsewhere: no swarm, or a
    worker); GET /info would say the same, but dockerd counts every container
    and runs runc and docker-init to answer it.
    """
    from docker.errors import APIError

    try:
        client.api.inspect_swarm()
    except APIError as exc:
        if exc.status_code == 503:
            raise CqkdError(
                "this engine is not a swarm manager; initialise one with: cqkd-stack setup"
            ) from None
        raise CqkdError(f"the swarm manager did not answer: {exc.explanation or exc}") from None


# Loading ~200 MB into a busy engine can take minutes; the default 60 s cuts it off.
_ENGINE_TIMEOUT = 600


def engine_client(url: str) -> docker.DockerClient:
    """A client of a node's engine, or a CqkdError naming the URL."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.DockerClient(base_url=url, timeout=_ENGINE_TIMEOUT)
        client.ping()
    except (DockerException, OSError) as exc:
        raise CqkdError(f"cannot reach the engine at {url}: {exc}") from None
    return client


def image_id(client: docker.DockerClient, image: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        return str(client.images.get(image).id)
    except ImageNotFound:
        return None


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise CqkdError("the docker CLI is not installed; `docker stack` needs it")
    return path


def scale_services(counts: Mapping[str, int]) -> None:
    """``docker service scale --detach`` of services by full name, in one call; returns at once.

    The CLI, not the SDK's ``update_service``: it changes the replica count
    alone, against the spec's current version, as an operator's own command.
    """
    pairs = [f"{name}={count}" for name, count in counts.items()]
    if pairs:
        what = f"docker service scale {' '.join(pairs)}"
        run([docker_cli(), "service", "scale", "--detach", *pairs], what)
