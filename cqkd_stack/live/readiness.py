"""Is every task of a stack in the DHT? Asked over Kademlia, not with Docker health checks.

A task is ready when it answers at ``address : port`` (its slot's port) and,
unless it is a bootstrap node, reports at least one contact: the fact the
toolkit exists for, observed from the stack's own network. One probe process
per poll round asks every task at once, so waiting on 1000 tasks costs one
process a round instead of an exec per task per health interval (which kept
the load above 120 on 2 cores and held tasks out of DNS until their first
check passed).

An overlay's addresses are not reachable from the host, so the probe runs
in the network namespace of one of the stack's own tasks on this engine,
the bootstrap node's by preference, rather than joining the network
itself: measured at 1003 tasks, a fresh container on the overlay had to ARP
for every address, each ARP broadcast was copied to all ~1003 ports of the
overlay's bridge, the kernel dropped up to two million packets a round, and
a round took 5-8 s with answers missing; from the bootstrap's namespace,
whose neighbours every task already knows, the same round took 1.1-1.7 s
with no drop and every answer. It also needs no attachment through the
swarm manager, which timed out while Swarm was starting 1000 tasks.

Where this process may enter a namespace (root) and has the probe's rpcudp
(the ``node`` extra), the probe runs here, over a socket made in that
task's namespace (live/namespace.py): no container to start, no Python to
start in it, no exec, which at 1003 tasks cost more than the round.
Otherwise a container of the node image shares the task's namespace, and
where no task of the stack runs on this engine it attaches to the network.
Host-mode stacks are probed from the host network. A probe container is
started once per wait and removed afterwards; it carries
:data:`PROBE_LABEL` so teardown can
remove one a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import DEFAULT_NODE_IMAGE
from ..core.contract import HASH_LABEL
from ..core.errors import CqkdError
from .inspection import NetworkNames, ServicePortRule, TaskPort, port_rule, stack_filter
from .namespace import Namespace, is_container_process

if TYPE_CHECKING:
    import docker

PROBE_LABEL = "org.cqkd.probe.stack"
# A wait round asks only the tasks not yet ready; a lost datagram just waits
# for the next round, so one attempt with a short timeout keeps rounds short.
WAIT_RPC_TIMEOUT = 1.0
# A one-off probe (the `probe` task) must not call a live task silent: at
# 1003 tasks, with 2 attempts of 1 s, 7 live tasks went unanswered in one of
# five rounds (and 13 of a bare stack's 1001), so it gets three of 1.5 s.
CHECK_RPC_TIMEOUT = 1.5
CHECK_ATTEMPTS = 3
# Starting the probe container can time out while the manager is busy.
START_ATTEMPTS = 3


@dataclass(frozen=True)
class ProbedTask:
    """One DHT task to ask, with what the operator needs to find it."""

    service: str
    role: str | None
    slot: int | None
    address: str | None
    port: int | None
    state: str

    @property
    def text(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def askable(self) -> bool:
        return self.state == "running" and bool(self.address) and self.port is not None

    def ready(self, answer: Any) -> bool:
        """Answered, and in the DHT (a bootstrap node is the DHT's first member)."""
        if not isinstance(answer, dict):
            return False
        if self.role == "bootstrap":
            return True
        return (answer.get("neighbours") or 0) > 0


def targets_of(rows: list[TaskPort]) -> list[ProbedTask]:
    return [ProbedTask(r.service, r.role, r.slot, r.address, r.port, r.state) for r in rows]


def dht_services(
    client: docker.DockerClient, stack: str
) -> list[tuple[ServicePortRule, dict[str, Any]]]:
    """The stack's DHT services with their port rules, bootstrap first; one API call.

    An error if the stack has no service at all: nothing to wait on or probe.
    """
    services = client.api.services(filters=stack_filter(stack))
    if not services:
        raise CqkdError(f"no stack named '{stack}' is deployed (no service has that namespace)")
    dht = [(rule, s) for rule, s in ((port_rule(s), s) for s in services) if rule.dht]
    return sorted(dht, key=lambda pair: pair[0].role != "bootstrap")


def stack_network(client: docker.DockerClient, stack: str) -> str:
    """The network the stack's DHT services share: its overlay, an external one, or host."""
    names = NetworkNames(client)
    joined: set[str] = set()
    for _, service in dht_services(client, stack):
        joined |= names.of_service(service)
    joined.discard("ingress")
    if not joined or "host" in joined:
        return "host"
    own = f"{stack}_dht"
    return own if own in joined else sorted(joined)[0]


@dataclass
class Round:
    """One probe round: the answer per target text, and how long it took."""

    answers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # How it was asked: "in-process" (this process, in a task's network
    # namespace or on the host network) or "container" (a probe container).
    method: str = ""


class ProbeUnavailable(CqkdError):
    """The probe container could not be started (yet); the reason is the engine's."""


class Prober:
    """A probe on a stack's network that answers one round per call: here, or in a container.

    Use as a context manager: the container is removed on exit, also after
    an error or Ctrl-C. It is started at the first round that has something
    to ask, in the network namespace of a local task of the stack (``via``,
    see the module's docstring); if that task stops, the next round starts
    a new probe beside another one. Attaching a container to a swarm overlay
    instead goes through the manager and the node's agent; while they start
    1000 tasks that attach timed out here ("attaching to network failed:
    context deadline exceeded"), so it is only tried when ``attach`` allows,
    and a round whose container cannot start raises ProbeUnavailable for
    the next round to try again.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        stack: str,
        image: str = DEFAULT_NODE_IMAGE,
        network: str | None = None,
        allow_in_process: bool = True,
    ) -> None:
        self.client = client
        self.allow_in_process = allow_in_process
        self.stack = stack
        self.image = image
        self.network = network or stack_network(client, stack)
        self.container: Any = None
        # Probing from this process instead: on the host network, or from
        # a local task's network namespace (see live/namespace.py).
        self.in_process = False
        self.namespace: Namespace | None = None
        # The task container whose network namespace the probe shares, if any.
        self.via: str | None = None
        self.via_role: str | None = None

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, attach: bool = True) -> None:
        """Start the probe container if it is not running; ProbeUnavailable if it cannot.

        ``attach=False`` refuses to join the overlay through the manager when
        no local task's namespace can be shared.
        """
        from docker.errors import APIError, ImageNotFound

        if self.started:
            if self.via is not None and not self._running(self.via):
                self.close()  # its namespace went with the task; start beside another one
            elif self.via is None or self.via_role == "bootstrap":
                return
        found = None if self.network == "host" else self._local_task()
        if self.started:  # beside a task that is not the bootstrap
            if not found or found[1] != "bootstrap":
                return
            self.close()  # the bootstrap runs now: every task already knows it
        via, role = found if found else (None, None)
        if self._enter(via):
            self.via, self.via_role = via, role
            return
        if self.network == "host":
            net: dict[str, Any] = {"network_mode": "host"}
        elif via is not None:
            net = {"network_mode": f"container:{via}"}
        elif attach:
            net = {"network": self.network}
        else:
            raise ProbeUnavailable(f"no task of stack '{self.stack}' runs on this engine yet")
        self.image = self._usable_image()
        container = None
        try:
            # Created, then started: a container whose start fails (a full
            # network, an allocation timeout) still exists and is removed here.
            container = self.client.containers.create(
                self.image,
                ["sleep", "infinity"],
                entrypoint=[],
                init=True,
                name=f"{self.stack}_probe_{secrets.token_hex(3)}",
                labels={PROBE_LABEL: self.stack},
                # Closing kills it and the engine removes it: the caller
                # does not wait for the removal (0.2 s at 1000 tasks).
                auto_remove=True,
                # The node image's health check would exec into it every 5 s.
                healthcheck={"test": ["NONE"]},
                # As the nodes run: no capability, nothing written.
                read_only=True,
                cap_drop=["ALL"],
                **net,
            )
            container.start()
        except ImageNotFound:
            raise CqkdError(
                f"the probe needs the image {self.image}; build it with: cqkd-stack setup"
            ) from None
        except APIError as exc:
            if container is not None:
                remove_container(container)
            where = f"beside task container {via[:12]}" if via else f"on network {self.network}"
            raise ProbeUnavailable(
                f"cannot start a probe container {where}: {exc.explanation}"
            ) from None
        self.container, self.via, self.via_role = container, via, role

    @property
    def started(self) -> bool:
        return self.container is not None or self.in_process

    def _enter(self, via: str | None) -> bool:
        """Probe from this process if it can: on the host network, or in ``via``'s namespace.

        It cannot without the ``node`` extra (the probe speaks Kademlia
        through rpcudp) or without the privilege to enter a namespace; then
        a probe container does it, as before. What the tasks answer is
        parsed here as in the container: by rpcudp and umsgpack, for the
        message ids this probe sent, within the round's deadline.
        """
        from docker.errors import APIError, NotFound

        if not self.allow_in_process or (self.network != "host" and via is None):
            return False
        try:
            import rpcudp  # noqa: F401
        except ImportError:
            return False
        if via is not None:
            try:
                found = self.client.api.inspect_container(via)
                pid = int(found["State"]["Pid"])
                if not is_container_process(pid, str(found["Id"])):
                    return False  # not this machine's process: a remote or nested engine
                namespace = Namespace(pid)
            except (OSError, KeyError, TypeError, ValueError, APIError, NotFound):
                return False
            try:
                namespace.udp_socket().close()  # EPERM without CAP_SYS_ADMIN
            except OSError:
                namespace.close()
                return False
            self.namespace = namespace
        self.in_process = True
        return True

    def _usable_image(self) -> str:
        """The probe's image, else the stack's own (pulled if it names a registry).

        A stack deployed with ``--registry`` runs an image this manager may
        not hold under the local name; its nodes pulled it, so can we.
        """
        from docker.errors import APIError

        from .client import image_id
        from .distribution import names_a_registry

        if image_id(self.client, self.image):
            return self.image
        for _, service in dht_services(self.client, self.stack):
            ref = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            if image_id(self.client, ref):
                return str(ref)
            if names_a_registry(ref):
                try:
                    self.client.images.pull(ref)
                except APIError as exc:
                    raise ProbeUnavailable(f"cannot pull {ref} for the probe: {exc}") from None
                return str(ref)
        return self.image

    def close(self) -> None:
        from docker.errors import APIError, NotFound

        if self.container is not None:
            try:
                self.container.kill()
            except (NotFound, APIError):
                remove_container(self.container)  # not running: auto-removal will not happen
        if self.namespace is not None:
            self.namespace.close()
        self.container, self.via, self.via_role = None, None, None
        self.in_process, self.namespace = False, None

    def _running(self, container_id: str) -> bool:
        from docker.errors import APIError, NotFound

        try:
            state = self.client.api.inspect_container(container_id).get("State") or {}
        except (NotFound, APIError):
            return False
        return bool(state.get("Running")) and not state.get("Restarting")

    def _local_task(self) -> tuple[str, str | None] | None:
        """A running DHT task container of the stack on this engine and its role, bootstrap first.

        The bootstrap's namespace is the best place: every task has spoken to
        it, so its neighbour table knows every address and every task knows
        its own. Another task's works too, with an ARP broadcast per address
        it has not met yet.
        """
        for rule, service in dht_services(self.client, self.stack):
            label = f"com.docker.swarm.service.id={service['ID']}"
            found = self.client.api.containers(filters={"label": label, "status": "running"})
            for container in found:
                networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
                if self.network in networks:
                    return str(container["Id"]), rule.role
        return None

    def round(
        self,
        targets: list[ProbedTask],
        rpc_timeout: float = WAIT_RPC_TIMEOUT,
        attempts: int = 1,
        attach: bool = True,
    ) -> Round:
        """Ask every askable target once, concurrently; the others are left out."""
        texts = sorted({t.text for t in targets if t.askable})
        if not texts:
            return Round()
        self.start(attach)
        if self.in_process:
            return self._round_here(texts, rpc_timeout, attempts)
        command = [
            "python3",
            "-m",
            "cqkd_stack.probe",
            "--joined",
            "--rpc-timeout",
            str(rpc_timeout),
            "--attempts",
            str(attempts),
            "--timeout",
            str(rpc_timeout * attempts * 2 + 5),
            *texts,
        ]
        start = time.monotonic()
        answers = self.run_in_container(command, "the probe")
        return Round(answers, time.monotonic() - start, "container")

    def run_in_container(self, command: list[str], what: str) -> dict[str, Any]:
        """``command`` run in the probe container; the JSON object its last stdout line is.

        The probe and the crawler print one JSON object on their last line
        and say why they failed on stderr; the error quotes that (or stdout,
        or the exit code), cut to its last 500 characters.
        """
        code, (out, err) = self.container.exec_run(command, demux=True)
        text = (out or b"").decode(errors="replace").strip()
        try:
            answers = json.loads(text.splitlines()[-1]) if text else None
        except json.JSONDecodeError:
            answers = None
        if not isinstance(answers, dict):
            detail = (err or b"").decode(errors="replace").strip() or text or f"exit {code}"
            raise CqkdError(f"{what} in {self.container.name} failed: {detail[-500:]}")
        return answers

    def _round_here(self, texts: list[str], rpc_timeout: float, attempts: int) -> Round:
        """The probe's round in this process, over a socket in the task's namespace."""
        import asyncio
        import logging

        from ..node import probe as node_probe

        # rpcudp logs every unanswered ping at ERROR; the answers already say so.
        logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
        targets = [node_probe.parse_target(text) for text in texts]
        start = time.monotonic()
        try:
            sock = self.namespace.udp_socket() if self.namespace is not None else None
            answers = asyncio.run(
                node_probe.probe(
                    targets,
                    timeout=rpc_timeout * attempts * 2 + 5,
                    rpc_timeout=rpc_timeout,
                    attempts=attempts,
                    joined=True,
                    sock=sock,
                )
            )
        except OSError as exc:
            self.close()  # the next round starts again, beside a task that runs
            raise ProbeUnavailable(f"cannot probe from task {self.via or 'host'}: {exc}") from None
        return Round(answers, time.monotonic() - start, "in-process")


def ignores_probe(client: docker.DockerClient, stack: str) -> bool:
    """Do all the stack's DHT tasks run this project's node, which never keeps the probe?

    A stock Kademlia node adds whoever pings it to its routing table, the
    probe included, so probing it while it is still joining changes what is
    being measured; such stacks are probed only once every task runs. This
    project's node image carries its build-inputs label and ignores the
    probe's id.
    """
    from docker.errors import APIError, NotFound

    for _, service in dht_services(client, stack):
        image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
        try:
            labels = client.api.inspect_image(image).get("Config", {}).get("Labels") or {}
        except (NotFound, APIError):
            return False
        if HASH_LABEL not in labels:
            return False
    return True


def remove_container(container: Any) -> None:
    from docker.errors import APIError, NotFound

    with contextlib.suppress(NotFound, APIError):
        container.remove(force=True)


def remove_probes(client: docker.DockerClient, stack: str) -> int:
    """Remove probe containers a crashed or interrupted run left on a stack's network."""
    from docker.errors import APIError, NotFound

    found = client.api.containers(all=True, filters={"label": f"{PROBE_LABEL}={stack}"})
    for container in found:
        with contextlib.suppress(NotFound, APIError):
            client.api.remove_container(container["Id"], force=True)
    return len(found)


@dataclass
class ProbeReport:
    """Every DHT task of a stack asked once: the `probe` task's result."""

    stack: str
    total: int
    answered: int
    joined: int
    seconds: float
    round_seconds: float
    # "in-process" or "container": see Round.method.
    method: str = ""
    silent: list[dict[str, Any]] = field(default_factory=list)
    not_joined: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.silent and not self.not_joined


def _row(target: ProbedTask) -> dict[str, Any]:
    return {
        "service": target.service,
        "slot": target.slot,
        "address": target.address,
        "port": target.port,
        "state": target.state,
    }


def start_with_retries(prober: Prober) -> None:
    """Start a one-off probe; the manager may be too busy for the first tries."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            prober.start()
            return
        except ProbeUnavailable:
            if attempt == START_ATTEMPTS:
                raise
            time.sleep(attempt)


def probe_stack(
    client: docker.DockerClient,
    stack: str,
    rows: list[TaskPort],
    image: str = DEFAULT_NODE_IMAGE,
) -> ProbeReport:
    """Ask every DHT task of the stack once; a task that is not running counts as silent."""
    start = time.monotonic()
    targets = targets_of(rows)
    with Prober(client, stack, image) as prober:
        start_with_retries(prober)
        result = prober.round(targets, CHECK_RPC_TIMEOUT, CHECK_ATTEMPTS)
    answered = [t for t in targets if t.askable and result.answers.get(t.text)]
    joined = [t for t in answered if t.ready(result.answers.get(t.text))]
    joined_set = {id(t) for t in joined}
    answered_set = {id(t) for t in answered}
    return ProbeReport(
        stack=stack,
        total=len(targets),
        answered=len(answered),
        joined=len(joined),
        seconds=time.monotonic() - start,
        round_seconds=result.seconds,
        method=result.method,
        silent=[_row(t) for t in targets if id(t) not in answered_set],
        not_joined=[_row(t) for t in answered if id(t) not in joined_set],
    )
