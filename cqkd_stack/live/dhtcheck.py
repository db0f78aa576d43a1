"""Prove the DHT works end to end: Alice stores a value, Bob reads it back.

Both go through the nodes' own control sockets (``nodectl``), and Bob's read
always goes to the network (the node never answers from its own storage), so
success means a real Kademlia store and lookup crossed the stack's network.

Alice and Bob may run on any node of the swarm, and a manager's engine can
exec only into its own containers. So each request runs as a short-lived
Swarm job placed on the node of the task it talks to, with that task's
control volume mounted: the stack mounts the
named volume ``control`` (``<stack>_control``, local to each node) at
``/run/cqkd`` and the node listens at ``/run/cqkd/<service>-<slot>.sock``.
The job's output is read back through the manager (``docker service logs``
works for tasks on any node), its last JSON line parsed, and the job removed.

A job is a one-replica ``replicated`` service whose restart policy is
``none``, not a ``replicated-job`` service: on Engine 20.10 (Debian 12's)
removing a ``replicated-job`` service leaves its task in the swarm's store
for good and its exited container on the node, holding the control volume
(moby/moby#42789, #44312; fixed in Moby 24). A replicated task that ends is
not restarted under ``none``, and removing the service removes both.
Jobs carry :data:`JOB_LABEL` so teardown removes one an interrupted run left.

A stack whose socket is in no shareable volume (one deployed before the
template had the volume, or written by hand) is still checked when its task
runs on this engine, by ``docker exec`` as before; on another node it gets
an error saying what to add to the stack.

All of that is the fallback. A stack rendered with the policy's control
range gives Alice and Bob a sealed TCP control port (``CQKD_CONTROL_PORT``,
:mod:`cqkd_stack.node.auth`), published in mode: host on a port Docker
picks: the task's status says which, its node's address says where, and
the key is the stack's Swarm config ``<stack>_control-key``, whose data any
manager reads back through the API. One TCP connection per request from
wherever the CLI runs replaces two scheduled jobs (2.9 s at 1003 tasks,
issue 20). A config and not a secret: a secret cannot be read back through
the API, so only the manager that made it would hold the key (on its
disk); the key's readers are exactly the managers, who can exec into any
task anyway. A request the port cannot carry (a node with no route to it,
a firewall) falls back to the job path, and the result says which ran.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.contract import (
    CONTROL_KEY_VARIABLE,
    CONTROL_PORT_VARIABLE,
    env_for_slot,
)
from ..core.errors import CqkdError
from ..node import nodectl
from ..node.nodectl import DEFAULT_SOCKET, DEFAULT_TIMEOUT
from .inspection import env_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    import docker

NODECTL = ["python3", "-m", "cqkd_stack.nodectl"]
JOB_LABEL = "org.cqkd.control.stack"
CONTROL_DIR = "/run/cqkd"
# The stack template's volume for it; Swarm names it <stack>_control.
CONTROL_VOLUME = "control"
# Mount types another container on the same node can share; a tmpfs cannot be.
SHARED_MOUNTS = ("volume", "bind")
# A job must be placed, started, run nodectl (which gives the node 40 s) and
# end; an unplaceable job (its node down) fails after this.
JOB_SECONDS = DEFAULT_TIMEOUT + 30
# Task states a job's task does not leave.
FINAL_STATES = frozenset({"complete", "failed", "rejected", "shutdown", "orphaned", "remove"})
# Poll the task list this often while a job runs (one cheap call to the manager).
POLL_SECONDS = 0.05
# ``docker service logs`` of a task on another node may trail its end a little.
LOG_SECONDS = 10.0
MAX_SERVICE_NAME = 63
JOB_STOP_GRACE_NS = 1_000_000_000


@dataclass
class DhtCheck:
    key: str
    value: str
    stored_by: str
    read_by: str
    set_seconds: float
    get_seconds: float
    round_trip_seconds: float
    # The swarm nodes (host names) the requests ran on, and how: "job" (a
    # Swarm job beside the task) or "exec" (into a container on this engine).
    stored_on: str = ""
    read_on: str = ""
    via: str = "job"
    # Why a service's sealed control port was not used, when it has one
    # and the check fell back to a job.
    fallback: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Control:
    """Where one running task listens for control requests, and how to get there."""

    service: str
    node_id: str
    container_id: str
    image: str
    socket: str
    # The task's mount that holds the socket, as in its service spec; None
    # when the socket is in the container only (its /tmp).
    mount: dict[str, Any] | None
    # The sealed control port as Docker published it on the task's node
    # (host port); None when the service has none.
    published_port: int | None = None
    # The Swarm config holding the key, as the service mounts it.
    key_config: str | None = None


def socket_mount(mounts: list[dict[str, Any]] | None, socket: str) -> dict[str, Any] | None:
    """The volume (or bind) mount the socket file lives in, the deepest if several."""
    found = None
    for mount in mounts or []:
        target = posixpath.normpath(str(mount.get("Target") or ""))
        if mount.get("Type", "volume") not in SHARED_MOUNTS or not target.startswith("/"):
            continue
        inside = posixpath.dirname(posixpath.normpath(socket))
        if posixpath.commonpath([target, inside]) != target:
            continue
        if found is None or len(target) > len(posixpath.normpath(found["Target"])):
            found = mount
    return found


def control_of(spec: dict[str, Any], task: dict[str, Any]) -> Control:
    """A service spec and one of its running tasks → where that task's socket is."""
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    env = env_for_slot(env_of(spec), int(task.get("Slot") or 1))
    socket = env.get("CQKD_CONTROL_SOCKET") or DEFAULT_SOCKET
    if "{{" in socket:
        raise CqkdError(
            f"{spec.get('Name')}: CQKD_CONTROL_SOCKET={socket} uses a template other than "
            "{{.Task.Slot}}; dht-check cannot tell where the socket is"
        )
    status = task.get("Status", {})
    return Control(
        service=str(spec.get("Name")),
        node_id=str(task.get("NodeID") or ""),
        container_id=str(status.get("ContainerStatus", {}).get("ContainerID") or ""),
        image=str(container.get("Image") or ""),
        socket=socket,
        mount=socket_mount(container.get("Mounts"), socket),
        published_port=published_control_port(env, status),
        key_config=key_config_of(container, env),
    )


def published_control_port(env: dict[str, str], status: dict[str, Any]) -> int | None:
    """The host port Docker published the task's ``CQKD_CONTROL_PORT`` on; None if none.

    The task status lists host-mode ports (once per address family).
    """
    raw = env.get(CONTROL_PORT_VARIABLE, "").strip()
    if not raw.isdigit():
        return None
    for port in (status.get("PortStatus") or {}).get("Ports") or []:
        if (
            port.get("TargetPort") == int(raw)
            and port.get("Protocol", "tcp") == "tcp"
            and port.get("PublishMode") == "host"
            and port.get("PublishedPort")
        ):
            return int(port["PublishedPort"])
    return None


def key_config_of(container: dict[str, Any], env: dict[str, str]) -> str | None:
    """The name of the config the node reads its key from (the one at CQKD_CONTROL_KEY_FILE)."""
    path = env.get(CONTROL_KEY_VARIABLE, "").strip()
    for config in container.get("Configs") or []:
        if path and (config.get("File") or {}).get("Name") == path:
            return str(config.get("ConfigName") or "") or None
    return None


def node_address(node: dict[str, Any]) -> str:
    """Where a swarm node is reached: its status address, else its manager address's host.

    A manager may report 0.0.0.0 as its status address (it listens on all of
    them); its manager address is then the one others use.
    """
    addr = str((node.get("Status") or {}).get("Addr") or "")
    if addr and addr != "0.0.0.0":
        return addr
    manager = str((node.get("ManagerStatus") or {}).get("Addr") or "")
    return manager.rpartition(":")[0] if ":" in manager else manager


def last_json(text: str) -> dict[str, Any]:
    """nodectl's reply: the last line of its output, if that is a JSON object; else {}."""
    lines = text.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return reply if isinstance(reply, dict) else {}


def job_name(stack: str, service: str) -> str:
    """``<stack>_dht-check-<service>-<random>``, cut to Swarm's 63 characters."""
    suffix = f"-{secrets.token_hex(3)}"
    return f"{stack}_dht-check-{service}"[: MAX_SERVICE_NAME - len(suffix)] + suffix


def _control(client: docker.DockerClient, stack: str, service: str) -> Control:
    """The running task of a one-replica service, wherever it runs."""
    from docker.errors import NotFound

    name = f"{stack}_{service}"
    try:
        found = client.api.inspect_service(name)
    except NotFound:
        raise CqkdError(f"{name} does not exist; is the stack '{stack}' deployed?") from None
    tasks = client.api.tasks(filters={"service": found["ID"], "desired-state": "running"})
    for task in tasks:
        if task.get("Status", {}).get("State") == "running" and task.get("NodeID"):
            return control_of(found["Spec"], task)
    raise CqkdError(f"{name} has no running task; is the stack deployed and healthy?")


class Nodes:
    """Node ids → host names and addresses, asked once per check; also which node this engine is.

    Also the stack's control key, read once (see the module docstring).
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._nodes: dict[str, dict[str, Any]] | None = None
        self._local: str | None = None
        self._keys: dict[str, bytes | None] = {}
        # Why the network path was not taken, when a service has one.
        self.network_errors: list[str] = []

    def _all(self) -> dict[str, dict[str, Any]]:
        if self._nodes is None:
            self._nodes = {n["ID"]: n for n in self.client.api.nodes()}
        return self._nodes

    def name(self, node_id: str) -> str:
        node = self._all().get(node_id) or {}
        return str(node.get("Description", {}).get("Hostname") or node_id[:12])

    def address(self, node_id: str) -> str:
        return node_address(self._all().get(node_id) or {})

    def key(self, config: str) -> bytes | None:
        """The data of a Swarm config (the control key); None if it cannot be read."""
        if config not in self._keys:
            from docker.errors import APIError, NotFound

            try:
                data = self.client.api.inspect_config(config)["Spec"].get("Data") or ""
                self._keys[config] = base64.b64decode(data) or None
            except (NotFound, APIError, ValueError):
                self._keys[config] = None
        return self._keys[config]

    @property
    def local(self) -> str:
        if self._local is None:
            self._local = str((self.client.info().get("Swarm") or {}).get("NodeID") or "")
        return self._local


def job_spec(control: Control, args: list[str]) -> Any:
    """The job's task: nodectl beside the node's task, as locked down as the node."""
    from docker.types import (
        ContainerSpec,
        DriverConfig,
        Healthcheck,
        Placement,
        RestartPolicy,
        TaskTemplate,
    )

    assert control.mount is not None
    mount = {**control.mount, "ReadOnly": True}
    container = ContainerSpec(
        control.image,
        command=[*NODECTL, "--socket", control.socket, *args],
        mounts=[mount],
        read_only=True,
        cap_drop=["ALL"],
        # The node image's health check would exec into the job every 5 s.
        healthcheck=Healthcheck(test=["NONE"]),
        # Python as PID 1 ignores SIGTERM: a job removed mid-request (Ctrl-C,
        # teardown) would hold the control volume for the 10 s stop timeout.
        init=True,
        stop_grace_period=JOB_STOP_GRACE_NS,
    )
    return TaskTemplate(
        container,
        # nodectl answers once; a failed request is reported, not retried.
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=[f"node.id=={control.node_id}"]),
        # `docker service logs` reads json-file logs through the manager.
        log_driver=DriverConfig("json-file", {"max-size": "1m"}),
    )


def _wait_for_job(client: docker.DockerClient, service_id: str, what: str) -> dict[str, Any]:
    """The job's task once it has ended (complete or failed); an error if it never does."""
    deadline = time.monotonic() + JOB_SECONDS
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        tasks = client.api.tasks(filters={"service": service_id})
        if tasks:
            last = max(tasks, key=lambda t: t.get("CreatedAt", ""))
            if last.get("Status", {}).get("State") in FINAL_STATES:
                return last
        time.sleep(POLL_SECONDS)
    status = last.get("Status", {})
    state = status.get("State", "not created")
    detail = status.get("Err") or status.get("Message") or ""
    raise CqkdError(f"{what} did not finish within {JOB_SECONDS:g} s (task {state}: {detail})")


def _job_output(client: docker.DockerClient, service_id: str) -> tuple[str, str]:
    """(stdout, stderr) of the job, through the manager; waits briefly for a late reply."""
    deadline = time.monotonic() + LOG_SECONDS
    while True:
        out = b"".join(client.api.service_logs(service_id, stdout=True, is_tty=False))
        text = out.decode(errors="replace")
        if last_json(text) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS * 4)
    err = b"".join(client.api.service_logs(service_id, stderr=True, is_tty=False))
    return text, err.decode(errors="replace")


def remove_jobs(client: docker.DockerClient, stack: str) -> int:
    """Remove dht-check jobs an interrupted run left behind (teardown calls this)."""
    from docker.errors import APIError, NotFound

    found = client.api.services(filters={"label": f"{JOB_LABEL}={stack}"})
    for service in found:
        with contextlib.suppress(NotFound, APIError):
            client.api.remove_service(service["ID"])
    return len(found)


def remove_control_volume(client: docker.DockerClient, stack: str, wait: float = 0.0) -> bool:
    """Remove this engine's ``<stack>_control`` once the stack is gone; True if it went.

    ``docker stack rm`` keeps volumes, and the control volume holds nothing
    but sockets. Only that volume is touched (a stack's other volumes may hold
    data), and only on this engine: Engine API 1.41 removes a local volume on
    its own node only, so other nodes keep theirs, empty, for a redeploy.
    A container still being removed (a job's) holds it for a moment: try
    again for up to ``wait`` seconds.
    """
    from docker.errors import APIError, NotFound

    deadline = time.monotonic() + wait
    while True:
        try:
            client.api.remove_volume(f"{stack}_{CONTROL_VOLUME}")
            return True
        except NotFound:
            return False
        except APIError:
            if time.monotonic() >= deadline:
                return False  # still in use
        time.sleep(POLL_SECONDS * 4)


def remove_control_volumes(
    client: docker.DockerClient,
    stack: str,
    others: Iterable[docker.DockerClient] = (),
    wait: float = 0.0,
) -> None:
    """``<stack>_control`` removed on this engine and on the other nodes' (``others``).

    The manager's API removes a local volume on its own node only; teardown
    passes the engines of the labelled nodes (``distribution.other_engines``).
    An unlabelled node keeps its empty volume, which a redeploy reuses.
    """
    for engine in (client, *others):
        remove_control_volume(engine, stack, wait)


def _run_job(
    client: docker.DockerClient, stack: str, control: Control, *args: str
) -> dict[str, Any]:
    """nodectl as a Swarm job on the task's node; its reply with ``exit_code`` added."""
    from docker.errors import APIError, ImageNotFound, NotFound
    from docker.types import ServiceMode

    short = control.service.removeprefix(f"{stack}_")
    what = f"nodectl {args[0]} for {control.service}"
    try:
        created = client.api.create_service(
            job_spec(control, list(args)),
            name=job_name(stack, short),
            labels={JOB_LABEL: stack},
            mode=ServiceMode("replicated", replicas=1),
        )
    except (APIError, ImageNotFound) as exc:
        raise CqkdError(f"cannot start {what} as a Swarm job: {exc}") from None
    service_id = created["ID"]
    try:
        task = _wait_for_job(client, service_id, what)
        out, err = _job_output(client, service_id)
    finally:
        with contextlib.suppress(NotFound, APIError):
            client.api.remove_service(service_id)
    status = task.get("Status", {})
    reply = last_json(out)
    if not reply:
        said = (err or out).strip()[-500:] or status.get("Err") or status.get("Message")
        raise CqkdError(f"{what} (a job on node {control.node_id[:12]}) said: {said}")
    reply["exit_code"] = status.get("ContainerStatus", {}).get("ExitCode", 0)
    return reply


def exec_nodectl(client: docker.DockerClient, control: Control, *args: str) -> dict[str, Any]:
    """nodectl by ``docker exec``: only for a socket no job can reach, on this engine."""
    container = client.containers.get(control.container_id)
    code, output = container.exec_run([*NODECTL, "--socket", control.socket, *args])
    text = output.decode(errors="replace").strip()
    reply = last_json(text)
    if not reply:
        raise CqkdError(f"nodectl {' '.join(args[:1])} in {container.name} said: {text or code}")
    reply["exit_code"] = code
    return reply


def request_path(control: Control) -> str:
    """How a request reaches the task: its sealed control port, a job, or exec here."""
    if control.published_port is not None and control.key_config:
        return "network"
    return "job" if control.mount is not None else "exec"


def nodectl_payload(args: tuple[str, ...]) -> dict[str, Any]:
    """nodectl's command line (``set KEY VALUE``, ``get KEY``...) as the request it sends."""
    op, *rest = args
    payload: dict[str, Any] = {"op": op}
    if rest:
        payload["key"] = rest[0]
    if op == "set":
        payload["value"] = rest[1]
    return payload


# A node that does not accept a connection in this long is not reachable
# from here; the job path is tried instead.
CONNECT_SECONDS = 3.0


def network_nodectl(control: Control, address: str, key: bytes, *args: str) -> dict[str, Any]:
    """nodectl's request over the sealed control port; its reply as a job's would be.

    ``reached`` is False when no sealed answer came back (nothing listening,
    no route, a refused request): the caller may try another path.
    """
    assert control.published_port is not None
    payload = nodectl_payload(args)
    start = time.monotonic()
    reply = nodectl.network_request(
        address, control.published_port, key, payload, DEFAULT_TIMEOUT, CONNECT_SECONDS
    )
    reply.setdefault("seconds", round(time.monotonic() - start, 4))
    reply["exit_code"] = nodectl.exit_code(payload["op"], reply)
    return reply


def _request(
    client: docker.DockerClient, stack: str, nodes: Nodes, control: Control, *args: str
) -> dict[str, Any]:
    if request_path(control) == "network":
        assert control.key_config is not None
        key, address = nodes.key(control.key_config), nodes.address(control.node_id)
        if key is not None and address:
            reply = network_nodectl(control, address, key, *args)
            if reply.pop("reached", True):
                reply["via"] = "network"
                return reply
            nodes.network_errors.append(f"{control.service}: {reply.get('error')}")
    if control.mount is not None:
        reply = _run_job(client, stack, control, *args)
        reply["via"] = "job"
        return reply
    if control.node_id == nodes.local:
        reply = exec_nodectl(client, control, *args)
        reply["via"] = "exec"
        return reply
    raise CqkdError(unreachable(control, nodes.name(control.node_id)))


def unreachable(control: Control, node: str) -> str:
    """What to add to a stack whose node dht-check cannot reach from here."""
    return (
        f"{control.service} listens at {control.socket}, inside its container only, and runs "
        f"on node {node}, not on this engine: dht-check reaches a node on another swarm node "
        "through a volume. Add to the service's volumes "
        f"`{{type: volume, source: {CONTROL_VOLUME}, target: {CONTROL_DIR}}}`, "
        f"to the stack a top-level `volumes: {{{CONTROL_VOLUME}: {{}}}}`, to the environment "
        f"`CQKD_CONTROL_SOCKET: {CONTROL_DIR}/<service>-{{{{.Task.Slot}}}}.sock` "
        "(as `cqkd-stack render` writes them), and deploy it again"
    )


def store_value(client: docker.DockerClient, stack: str, service: str, key: str, value: str) -> str:
    """``service`` (e.g. Alice) stores ``key`` in the DHT; the node it ran on, or CqkdError."""
    control, nodes = _control(client, stack, service), Nodes(client)
    stored = _request(client, stack, nodes, control, "set", key, value)
    if not stored.get("ok") or stored["exit_code"] != 0:
        raise CqkdError(f"{service} could not store {key}: {stored.get('error', stored)}")
    return nodes.name(control.node_id)


def read_value(client: docker.DockerClient, stack: str, service: str, key: str) -> Any:
    """What ``service`` (e.g. Bob) reads for ``key`` from the network; None if no node has it.

    A lookup that fails (no neighbours, no answer in time) is a CqkdError
    with the node's reason, not a None that looks like a missing value.
    """
    control = _control(client, stack, service)
    got = _request(client, stack, Nodes(client), control, "get", key)
    if not got.get("ok"):
        raise CqkdError(f"{service} could not look up {key}: {got.get('error', got)}")
    return got.get("value")


Request = Callable[..., dict[str, Any]]


def used(reply: dict[str, Any], control: Control) -> str:
    """The path a reply came by (``via``, set by the request), else the control's own."""
    return str(reply.get("via") or request_path(control))


def round_trip(
    writer: Control, reader: Control, request: Request, alice: str, bob: str
) -> DhtCheck:
    """``writer`` (named ``alice``) stores a random value, ``reader`` (``bob``) reads it back.

    ``request(control, *nodectl_args)`` carries each request to its node:
    a Swarm job or ``docker exec`` here, ``docker exec`` for a compose project.
    """
    key = f"cqkd-check-{secrets.token_hex(6)}"
    value = secrets.token_hex(16)
    start = time.monotonic()
    stored = request(writer, "set", key, value)
    if not stored.get("ok") or stored["exit_code"] != 0:
        raise CqkdError(f"{alice} could not store {key}: {stored.get('error', stored)}")
    got = request(reader, "get", key)
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
        via="+".join(sorted({used(stored, writer), used(got, reader)}, reverse=True)),
    )


VIAS = ("auto", "network", "job")


def check_stack_dht(
    client: docker.DockerClient,
    stack: str,
    alice: str = "alice",
    bob: str = "bob",
    via: str = "auto",
) -> DhtCheck:
    """Alice stores a random value, Bob reads it back through the DHT.

    ``via="auto"``: through their sealed control ports when the stack has
    them, else Swarm jobs (or exec on this engine). ``"job"`` skips the
    control ports (to compare, or to rule them out); ``"network"`` refuses
    a stack without them.
    """
    if via not in VIAS:
        raise CqkdError(f"via must be one of {', '.join(VIAS)}, got {via!r}")
    writer, reader = _control(client, stack, alice), _control(client, stack, bob)
    if via == "job":
        writer = dataclasses.replace(writer, published_port=None)
        reader = dataclasses.replace(reader, published_port=None)
    elif via == "network":
        for control in (writer, reader):
            if request_path(control) != "network":
                raise CqkdError(
                    f"{control.service} has no published control port and key (a stack "
                    "deployed before them, or without the policy's control range)"
                )
    nodes = Nodes(client)

    def request(control: Control, *args: str) -> dict[str, Any]:
        return _request(client, stack, nodes, control, *args)

    check = round_trip(writer, reader, request, alice, bob)
    check.stored_on, check.read_on = nodes.name(writer.node_id), nodes.name(reader.node_id)
    check.fallback = nodes.network_errors
    if via == "network" and check.fallback:
        raise CqkdError(f"the control port was not usable: {'; '.join(check.fallback)}")
    return check
