"""The Invoke tasks: the only layer that prints and exits.

Each task is thin: parse options, call the library, show the result. The same
collection serves ``invoke`` in the repository and the installed
``cqkd-stack`` command.

Flags mean the same in every task, and so do their short forms (see
SHORT_FLAGS); every task that reports takes ``--format text|json``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from invoke import Argument, Collection, Context, Exit, Task, task

from .. import DEFAULT_NODE_IMAGE
from ..core.errors import BUG, INVALID, CqkdError, UsageError
from ..core.files import write_atomically
from ..core.policy import Policy, load_policy
from ..core.results import Results
from ..targets.base import RenderOptions
from . import report

F = TypeVar("F", bound=Callable[..., Any])
TEXT_OR_JSON = ("text", "json")
# Options several tasks share say the same, default included.
STACK_HELP = "stack name (default: cqkd, or cqkd.stack in invoke.yaml)"
VERIFY_HELP = (
    "then crawl every task's routing table (as `crawl`); exit 1 if the DHT is "
    "split or a task is unknown (the stack stays as deployed)"
)
POLICY_HELP = (
    "port policy file (default: cqkd.policy in invoke.yaml, else the shipped "
    "stacks/port-policy.yml)"
)
JOIN_STACK_HELP = (
    "for a batch: the deployed stack whose DHT it joins (default: the stack name's default)"
)
# One short flag, one meaning, in every task that has the option.
SHORT_FLAGS = {
    "stack": "s",
    "replicas": "r",
    "policy": "p",
    "format": "f",
    "timeout": "t",
    "output": "o",
    "image": "i",
    "network": "n",
}


class CqkdTask(Task):
    """A task whose short flags come from SHORT_FLAGS, not from the first free letter.

    Invoke's automatic short flags depend on the other options of the same
    task: ``-p`` was --policy in one task and --port-offset in another.

    ``variadic`` names a list parameter that the installed command fills with
    every word after the task's options (``cqkd-stack validate a.yml b.yml``);
    Invoke, which has no such thing, sees the task's ``positional`` one and
    the list as a repeatable option.
    """

    def __init__(self, *args: Any, variadic: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auto_shortflags = False
        self.variadic = variadic
        self._arguments: list[Argument] | None = None

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        """The task's arguments, a fresh copy each call.

        Invoke builds them once per run and consumes the help texts doing so;
        the installed command asks again (for a task's --help, for completion).
        """
        if self._arguments is None:
            self._arguments = super().get_arguments(ignore_unknown_help)
        return copy.deepcopy(self._arguments)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short is not None and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts


def cqkd_task(*args: Any, **kwargs: Any) -> Any:
    return task(*args, klass=CqkdTask, **kwargs)


def operator_errors(func: F) -> F:
    """The one error boundary: known failures become their message and exit code.

    Anything else is a bug of ours, so it gets a different exit code and says so,
    instead of passing for "your stack is invalid".
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CqkdError as exc:
            raise Exit(f"cqkd-stack: error: {exc.message}", code=exc.exit_code) from None
        except (Exit, KeyboardInterrupt, BrokenPipeError):
            raise  # a closed pipe (`| head`) is the Program's to end quietly
        except OSError as exc:
            # The engine's socket, a node's engine: the operation failed (files
            # the operator names are read and written by documents, which say so).
            where = f" ({exc.filename})" if exc.filename else ""
            raise Exit(f"cqkd-stack: error: {exc.strerror or exc}{where}", code=INVALID) from None
        except Exception as exc:  # the boundary: report, never swallow
            if type(exc).__module__.startswith(("docker.", "requests.")):
                # The engine refused or went away: the environment, not a bug of ours.
                raise Exit(
                    f"cqkd-stack: error: the Docker engine said: {exc}", code=INVALID
                ) from None
            raise Exit(
                f"cqkd-stack: unexpected error ({type(exc).__name__}: {exc}); "
                "this is a bug in cqkd-stack, please report it",
                code=BUG,
            ) from exc

    return wrapper  # type: ignore[return-value]


def _setting(c: Context, name: str, given: Any) -> Any:
    """An option given on the command line wins; else invoke.yaml / env config."""
    return given if given not in (None, "") else c.config.cqkd.get(name)


def _policy(c: Context, given: str | None) -> Policy:
    return load_policy(_setting(c, "policy", given))


def _format(value: str, allowed: tuple[str, ...] = TEXT_OR_JSON) -> str:
    """Refuse an unknown --format before anything happens (a usage error)."""
    if value not in allowed:
        raise UsageError(f"--format must be one of {', '.join(allowed)}, got '{value}'")
    return value


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _files(files: str | None, file: list[str]) -> list[str]:
    """The positional file and every ``--file``; a name is never split."""
    return ([files] if files else []) + list(file)


_NO_COMPOSE_DRY_RUN = (
    "--dry-run plans a Swarm stack; for --target compose, `cqkd-stack render --target "
    "compose` shows the file docker-compose would run, and nothing else is planned"
)


def _dry(what: str, dry_run: bool) -> str:
    return f"dry run: {what}; the real run would refuse too" if dry_run else what


def _show_plan(plan: Any, format: str) -> None:
    """The plan on standard output; exit 1 when the real run would refuse (and say why)."""
    from .console import plan_text

    if format == "json":
        _print_json(plan.as_dict())
    else:
        print(plan_text(plan))
    if not plan.ok:
        raise Exit(code=INVALID)


def _refused(results: Results, format: str, what: str) -> Exit:
    """Say why and what was not done; exit 1. JSON is the result (stdout), text a diagnosis."""
    if format == "json":
        print(report.as_json(results))
    else:
        print(report.text(results), file=sys.stderr)
    print(what, file=sys.stderr)
    return Exit(code=1)


@cqkd_task(
    help={
        "replicas": "number of worker tasks (ports 7000 + slot - 1)",
        "output": "write the stack to this file, '-' for standard output "
        "(default: standard output)",
        "image": "image of every DHT service (any image with Python 3 and cqkd-stack)",
        "network": "overlay (default) or host: on host, the unique port keeps workers apart",
        "port-offset": "a second batch of workers beside a first: only workers, shifted ports",
        "policy": POLICY_HELP,
        "subnet": "overlay subnet (default: sized for the task count)",
        "join-stack": JOIN_STACK_HELP,
        "healthcheck": "add Docker's per-task health check (off: readiness is probed)",
        "target": "swarm (default: a stack for docker stack deploy), compose (a "
        "docker-compose file, one service per worker) or kubernetes (StatefulSets)",
        "namespace": "kubernetes: the namespace of every object (default: none, kubectl's)",
        "ordinals-start": "kubernetes: the workers' .spec.ordinals.start (its pod gets 7000)",
    }
)
@operator_errors
def render_stack(
    c: Context,
    replicas: int = 50,
    output: str = "",
    image: str = DEFAULT_NODE_IMAGE,
    network: str = "overlay",
    port_offset: int = 0,
    policy: str = "",
    subnet: str = "",
    join_stack: str = "",
    healthcheck: bool = False,
    target: str = "swarm",
    namespace: str = "",
    ordinals_start: int = 0,
) -> None:
    """Render the CQKD stack (bootstrap, Alice, Bob, N workers) for docker stack deploy.

    With --target compose, a docker-compose file; with --target kubernetes,
    manifests. Each is checked as `validate` would before it is written.
    """
    from ..targets.registry import target_named

    chosen = target_named(target)
    rules = _policy(c, policy)
    options = _render_options(
        c, replicas, image, network, port_offset, subnet, join_stack, healthcheck
    )
    # Kubernetes' own two: every other target refuses them.
    kubernetes = {"namespace": namespace or None, "ordinals_start": ordinals_start}
    options = dataclasses.replace(options, **kubernetes)
    text = chosen.render(rules, options)
    name = "<rendered>" if output in ("", "-") else output
    from ..lint.validate import validate_texts

    results = validate_texts([(name, text)], rules, target=target)
    if not results.ok:
        # Never hand out a stack that would be refused: say why instead.
        raise Exit(report.text(results), code=1)
    if output in ("", "-"):
        _to_stdout(text)
    else:
        write_atomically(Path(output), text)
        print(f"wrote {output}: {replicas} workers", file=sys.stderr)


def _to_stdout(text: str) -> None:
    """The result on standard output, flushed here so a full disk is an error with its exit code."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise UsageError(f"standard output: cannot write: {exc.strerror or exc}") from None


def _render_options(
    c: Context,
    replicas: int,
    image: str,
    network: str,
    port_offset: int,
    subnet: str,
    join_stack: str,
    healthcheck: bool,
) -> RenderOptions:
    """The options `render` and `deploy` share, as every target reads them."""
    return RenderOptions(
        replicas=replicas,
        image=image,
        network=network,
        port_offset=port_offset,
        subnet=subnet or None,
        join_stack=_setting(c, "stack", join_stack),
        healthcheck=healthcheck,
    )


@cqkd_task(
    positional=["files"],
    iterable=["file"],
    variadic="file",
    help={
        "files": "stack file to check ('-' reads standard input); more may follow",
        "file": "another stack file (repeatable)",
        "policy": POLICY_HELP,
        "format": "text (default), json or github",
        "together": "judge the files as one deployment (ports must not collide across them)",
        "target": "read every stack file as swarm (docker stack), compose (docker-compose) "
        "or kubernetes (manifests); default: what each file says it is",
    },
)
@operator_errors
def validate(
    c: Context,
    files: str | None = None,  # None, not "": Invoke fills only positionals still None
    file: list[str] | None = None,
    policy: str = "",
    format: str = "text",
    together: bool = False,
    target: str = "",
) -> None:
    """Check stack files against Docker's schema and the port policy (exit 0/1/2).

    Exit 0 when every file is valid, 1 when any is not, 2 for a usage error.
    Each file is its own stack unless --together is given. Port policies
    among the files are checked as policies; stack templates are skipped.
    """
    names = _files(files, file or [])
    if not names:
        raise UsageError("give at least one stack file to validate ('-' for standard input)")
    _format(format, tuple(report.FORMATS))
    from ..lint.validate import read_sources, validate_texts
    from ..targets.registry import target_named

    sources = read_sources(names)
    results = validate_texts(
        sources,
        _policy(c, policy),
        together=together,
        target=target_named(target).name if target else None,
    )
    print(report.FORMATS[format](results))
    if not results.ok:
        raise Exit(code=1)


# --- live swarm -------------------------------------------------------------
# The Docker SDK is imported inside these tasks only: render and validate run in
# CI linters where a fast start matters and no engine exists.


@cqkd_task(
    help={
        "skip-images": "only install/start the engine and the swarm",
        "mirror": "debootstrap the base image from this mirror URL (default: cqkd.mirror "
        "in invoke.yaml, else the host's own Debian or Ubuntu mirror from its apt sources)",
        "suite": "release of the base image (default: bookworm; on Ubuntu, the host's own)",
        "restart-engine": "restart docker.service to apply setup's drop-in even when that "
        "stops containers that do not come back by themselves",
        "format": "text (default) or json (what the engine and images are, what changed)",
    }
)
@operator_errors
def setup(
    c: Context,
    skip_images: bool = False,
    format: str = "text",
    mirror: str = "",
    suite: str = "",
    restart_engine: bool = False,
) -> None:
    """Install and start the Docker engine, initialise the swarm, build the images (idempotent)."""
    from ..host import engine, images
    from .console import stderr_console

    _format(format)
    console = stderr_console()
    with console.status("checking the Docker engine") as status:

        def say(step: str) -> None:
            status.update(step)
            console.log(step)

        state = engine.ensure_installed(progress=say)
        # A daemon restarting after a crash cleans up every container before it
        # answers: ~1000 took over a minute here. Waiting is on a real condition.
        running = engine.ensure_running(progress=say, timeout=300, restart_engine=restart_engine)
        state = state.update(running)
        state = state.update(engine.ensure_swarm(progress=say))
        state = state.update(engine.ensure_host_settings(progress=say))
        built, spread = None, []
        if not skip_images:
            built = images.ensure_images(
                progress=say,
                mirror=_setting(c, "mirror", mirror),
                suite=_setting(c, "suite", suite),
            )
            spread = _spread_image(built.node_image, say)
    for warning in [*state.warnings, *spread]:
        console.print(f"[yellow]warning: {warning}[/yellow]")
    console.log(
        f"engine {state.server_version} (pid {state.dockerd_pid}), swarm node "
        f"{state.swarm_node_id} at {state.advertise_addr}"
    )
    if built is not None:
        console.log(f"images: {built.base_image}, {built.node_image}")
    changed = [*state.done, *(built.done if built else [])]
    console.log("setup complete: " + ("; ".join(changed) if changed else "nothing to do"))
    if format == "json":
        _print_json(
            {"engine": asdict(state), "images": asdict(built) if built else None, "done": changed}
        )


def _spread_image(image: str, say: Callable[[str], None]) -> list[str]:
    """Copy the image to the swarm's other nodes; what could not be done, as warnings.

    A warning, not a failure: setup's job on this machine is done, and
    ``deploy`` refuses later, naming the node, if it still lacks the image.
    """
    from docker.errors import DockerException

    from ..live.client import local_engine
    from ..live.distribution import ensure_on_nodes

    client = local_engine()
    if client is None:
        return []
    try:
        ensure_on_nodes(client, image, say=say)
    except (CqkdError, DockerException) as exc:
        return [str(exc)]
    finally:
        client.close()
    return []


@cqkd_task(
    help={
        "replicas": "number of worker tasks",
        "network": "overlay (default) or host",
        "stack": STACK_HELP,
        "timeout": "seconds to wait for every task to be running and in the DHT",
        "no-wait": "return once docker stack deploy has accepted the stack",
        "file": "deploy this stack file instead of rendering one (default: none: render)",
        "image": "image of every DHT service",
        "port-offset": "deploy a batch of workers beside the stack given by --join-stack",
        "join-stack": JOIN_STACK_HELP,
        "policy": POLICY_HELP,
        "format": "summary as text (default) or json",
        "subnet": "overlay subnet (default: the first free one in 10.213.0.0/16)",
        "healthcheck": "add Docker's per-task health check (off: readiness is probed)",
        "registry": "push the image to HOST/REPO and deploy it from there (default: copy "
        "the image to every node whose engine has the org.cqkd.engine label)",
        "target": "swarm (default) or compose: docker-compose on this host, one service "
        "and one published port per worker (the stack name is the compose project)",
        "dry-run": "render and validate against the live swarm, print what would change "
        "(services, replicas, ports, images to copy, tasks that stop) and change nothing",
        "verify": VERIFY_HELP,
        "pace": "start a new stack's workers at most N tasks a node at a time, raising "
        "them with docker service scale as tasks run (default 0: all at once, as "
        "docker stack deploy does); for hosts that drown when Swarm starts hundreds "
        "of tasks a node together",
    }
)
@operator_errors
def deploy(
    c: Context,
    replicas: int = 50,
    network: str = "overlay",
    stack: str = "",
    timeout: int = 600,
    no_wait: bool = False,
    file: str = "",
    image: str = DEFAULT_NODE_IMAGE,
    port_offset: int = 0,
    join_stack: str = "",
    policy: str = "",
    format: str = "text",
    subnet: str = "",
    healthcheck: bool = False,
    registry: str = "",
    target: str = "swarm",
    dry_run: bool = False,
    verify: bool = False,
    pace: int = 0,
) -> None:
    """Validate, deploy the DHT stack, and wait until every task answers in the DHT.

    With --dry-run, the same rendering and checks against the live swarm, then
    the plan instead of the deploy: nothing on the swarm changes.
    """
    from ..core.errors import NotDeployed
    from ..live.client import connect
    from ..live.deploy import DeployRequest, check_stack, deploy_stack
    from ..live.distribution import registry_reference
    from ..live.inspection import stack_exists
    from ..live.plan import plan_deploy
    from ..targets.registry import target_named
    from .console import print_port_map, stderr_console, with_progress

    _format(format)
    name = _setting(c, "stack", stack)
    compose = target_named(target, ("swarm", "compose")).name == "compose"
    if registry and compose:
        raise UsageError("--registry is for Swarm nodes; the compose target runs on this host")
    if registry and file:
        raise UsageError(
            "--registry applies to a rendered stack; with --file, write the "
            "registry reference into the file's image: lines"
        )
    _verify_usage(verify, dry_run, no_wait, compose)
    _pace_usage(pace, no_wait, compose)
    pushed = registry_reference(registry, image) if registry else image
    options = _render_options(
        c, replicas, pushed, network, port_offset, subnet, join_stack, healthcheck
    )
    if compose:
        if dry_run:
            raise UsageError(_NO_COMPOSE_DRY_RUN)
        _deploy_compose(name, _policy(c, policy), options, file, timeout, not no_wait, format)
        return
    request = DeployRequest(
        name, _policy(c, policy), options, file, timeout, not no_wait, registry, image, pace
    )
    console = stderr_console()
    client = connect()
    if pace and stack_exists(client, name):
        raise UsageError(
            f"--pace starts a new stack's workers; stack '{name}' is deployed already "
            "(a redeploy asks Swarm for its changes at once; `scale` adds workers)"
        )
    try:
        checked = check_stack(client, request)
    except NotDeployed as refused:
        raise _refused(refused.results, format, _dry(refused.what, dry_run)) from None
    if dry_run:
        _show_plan(plan_deploy(client, request, checked), format)
        return
    outcome = with_progress(
        console,
        "starting",
        lambda progress: deploy_stack(client, request, checked, console.log, progress),
    )
    summary = outcome.summary()
    crawled = _crawl_after(client, name, console) if verify else None
    if format == "json":
        _print_json(summary | ({"crawl": crawled.as_dict()} if crawled else {}))
        _verified(crawled, name)
        return
    if outcome.waited is None:
        console.log(f"stack '{name}' accepted; not waiting (--no-wait)")
        return
    print_port_map(console, outcome.ports)
    ranges = ", ".join(f"{service} {rng}" for service, rng in summary["port_ranges"].items())
    waited = outcome.waited
    console.print(
        f"[green]stack '{name}': {waited.total} tasks running after "
        f"{waited.running_seconds or 0:.1f} s, all in the DHT after {waited.seconds:.1f} s"
        f"[/green]; ports: {ranges}"
    )
    _show_verified(crawled, name)


def _pace_usage(pace: int, no_wait: bool, compose: bool) -> None:
    """--pace raises a new Swarm stack's workers as they start: refused where it cannot."""
    if pace < 0:
        raise UsageError(f"--pace takes a number of tasks a node, 1 or more (0: off); got {pace}")
    if not pace:
        return
    if no_wait:
        raise UsageError("--pace waits for the workers' tasks to start; --no-wait does not wait")
    if compose:
        raise UsageError("--pace paces Swarm's task starts; the compose target has no Swarm")


def _verify_usage(verify: bool, dry_run: bool, no_wait: bool, compose: bool = False) -> None:
    """--verify crawls the stack once it is ready: refused where there is nothing to crawl."""
    if not verify:
        return
    if dry_run:
        raise UsageError("--verify crawls the deployed stack; --dry-run deploys nothing")
    if no_wait:
        raise UsageError("--verify crawls once every task is in the DHT; --no-wait does not wait")
    if compose:
        raise UsageError("--verify crawls a Swarm stack; run `cqkd-stack probe` for compose")


def _crawl_after(client: Any, stack: str, console: Any) -> Any:
    """The crawl --verify asks for, of the stack as it is now."""
    from ..live.crawl import crawl_stack
    from ..live.inspection import port_map

    console.log(f"crawling every routing table of stack '{stack}' (--verify)")
    return crawl_stack(client, stack, port_map(client, stack).tasks)


def _show_verified(crawled: Any, stack: str) -> None:
    """The crawl's table after the deploy's or scale's own lines; exit 1 if not one DHT."""
    if crawled is None:
        return
    from rich.console import Console

    from .console import print_crawl

    print_crawl(Console(), crawled)
    _verified(crawled, stack)


def _verified(crawled: Any, stack: str) -> None:
    if crawled is not None and not crawled.ok:
        sys.stderr.write(
            f"stack '{stack}' is deployed, but its crawl failed (split or unknown tasks): "
            "see above; it was left as it is\n"
        )
        raise Exit(code=1)


@cqkd_task(
    help={
        "stack": STACK_HELP,
        "format": "text (default; 'table' too), json, or prometheus (the text exposition "
        "format; exits 0, the health is in cqkd_port_map_healthy)",
        "policy": POLICY_HELP,
    }
)
@operator_errors
def ports(c: Context, stack: str = "", format: str = "text", policy: str = "") -> None:
    """The live port map: slot, task, node, address, port, state; duplicates and gaps flagged."""
    from ..live.client import connect
    from ..live.inspection import port_map
    from .console import print_port_map

    if _format(format, (*TEXT_OR_JSON, "table", "prometheus")) == "table":
        format = "text"
    rules = _policy(c, policy)
    result = port_map(connect(), _setting(c, "stack", stack), rules)
    if format == "prometheus":
        from .metrics import exposition

        # A scrape or a textfile collector reads the health from the metrics;
        # a non-zero exit would only lose them.
        sys.stdout.write(exposition(result, rules))
        return
    if format == "json":
        _print_json(result.as_dict())
    else:
        from rich.console import Console

        print_port_map(Console(), result)
    if not result.healthy:
        raise Exit(code=1)


def _probe(client: Any, stack: str) -> Any:
    from ..live.inspection import port_map
    from ..live.readiness import probe_stack

    rows = port_map(client, stack).tasks
    return probe_stack(client, stack, rows)


def _probe_dict(result: Any) -> dict[str, Any]:
    return asdict(result) | {"ok": result.ok}


@cqkd_task(
    name="dht-check",
    help={
        "stack": STACK_HELP,
        "format": "text (default) or json",
        "all": "also probe every DHT task at its address and port (as the probe task)",
        "target": "swarm (default) or compose (the stack name is the compose project)",
        "kill-holders": "prove a value outlives its holders: Alice stores it under a key she "
        "is not among the closest nodes to, every other task that holds it is killed "
        "(SIGKILL; Swarm starts fresh, empty ones), and Bob reads until it is back "
        "(republished by Alice) or --timeout passes; needs docker exec and kill on every "
        "node running a DHT task (this engine's, or an org.cqkd.engine label)",
        "timeout": "with --kill-holders: seconds Bob may take to read the value again after "
        "the kill (default: Alice's CQKD_REPUBLISH_INTERVAL + 2 health rounds + 30)",
        "via": "auto (default: Alice's and Bob's sealed control ports when the stack has "
        "them, else Swarm jobs), network (only the control ports) or job (only Swarm jobs)",
    },
)
@operator_errors
def dht_check(
    c: Context,
    stack: str = "",
    format: str = "text",
    all: bool = False,
    target: str = "swarm",
    kill_holders: bool = False,
    timeout: int = 0,
    via: str = "auto",
) -> None:
    """Alice stores a value in the DHT and Bob reads it back through the network.

    With --kill-holders, the holders of Alice's value are killed first and Bob
    reads until it is back: exit 1 if it is not back within --timeout.
    """
    from ..live.client import connect
    from ..live.dhtcheck import check_stack_dht as check
    from ..targets.registry import target_named

    _format(format)
    compose = target_named(target, ("swarm", "compose")).name == "compose"
    if compose and all:
        raise UsageError("--all probes a Swarm stack; deploy --target compose probes every node")
    if compose and kill_holders:
        raise UsageError("--kill-holders kills Swarm tasks; a compose project has none")
    if timeout and not kill_holders:
        raise UsageError("--timeout is the wait of --kill-holders")
    if timeout < 0:
        raise UsageError("--timeout must be a number of seconds (0: the default)")
    from ..live.dhtcheck import VIAS

    if via not in VIAS:
        raise UsageError(f"--via must be one of {', '.join(VIAS)}, got '{via}'")
    if via != "auto" and (compose or kill_holders):
        raise UsageError("--via chooses how a Swarm stack's Alice and Bob are reached")
    name = _setting(c, "stack", stack)
    client = connect()
    if kill_holders:
        _kill_holders_check(client, name, format, timeout, all)
        return
    if compose:
        from ..live.compose_project import check_project_dht

        result = check_project_dht(client, name)
    else:
        result = check(client, name, via=via)
    probed = _probe(client, name) if all else None
    stored_on = f" (node {result.stored_on})" if result.stored_on else ""
    read_on = f" (node {result.read_on})" if result.read_on else ""
    _print_check(
        result,
        f"ok: {result.stored_by} stored {result.key}{stored_on}, "
        f"{result.read_by} read it back through the DHT{read_on}; "
        f"round trip {result.round_trip_seconds * 1000:.0f} ms "
        f"(set {result.set_seconds * 1000:.0f} ms, get {result.get_seconds * 1000:.0f} ms "
        f"in the nodes; by {result.via})"
        + (
            f"; the control port was not usable: {'; '.join(result.fallback)}"
            if getattr(result, "fallback", None)
            else ""
        ),
        probed,
        format,
    )
    if probed is not None and not probed.ok:
        raise Exit(code=1)


def _print_check(result: Any, text: str, probed: Any, format: str) -> None:
    """A dht-check's outcome, with the probe's when --all asked for it: JSON or text."""
    if format == "json":
        out: dict[str, Any] = asdict(result)
        if probed is not None:
            out["probe"] = _probe_dict(probed)
        _print_json(out)
        return
    print(text)
    if probed is not None:
        from .console import probe_text

        print(probe_text(probed))


def _kill_holders_check(client: Any, name: str, format: str, timeout: int, all: bool) -> None:
    """dht-check --kill-holders: progress on stderr, the outcome on stdout, exit 1 on failure."""
    from ..live.holders import check_survival
    from .console import stderr_console, survival_text, with_progress

    console = stderr_console()
    result = with_progress(
        console,
        "kill-holders",
        lambda progress: check_survival(client, name, timeout=timeout, progress=progress),
    )
    probed = _probe(client, name) if all else None
    _print_check(result, survival_text(result), probed, format)
    if not result.ok or (probed is not None and not probed.ok):
        raise Exit(code=1)


@cqkd_task(
    help={
        "stack": STACK_HELP,
        "format": "text (default) or json",
    }
)
@operator_errors
def probe(c: Context, stack: str = "", format: str = "text") -> None:
    """Kademlia-ping every DHT task at its own address and port, all in one round.

    Exit 1 if any task is silent or has no contacts.
    """
    from ..live.client import connect
    from .console import probe_text

    _format(format)
    result = _probe(connect(), _setting(c, "stack", stack))
    if format == "json":
        _print_json(_probe_dict(result))
    else:
        print(probe_text(result))
    if not result.ok:
        raise Exit(code=1)


@cqkd_task(
    help={
        "stack": STACK_HELP,
        "format": "text (default), json or prometheus (exit 0: the metrics carry the health)",
        "lookups": "nodes that replay lookups over the crawled tables (default: 10)",
        "keys": "random keys each of those nodes looks up (default: 10)",
    }
)
@operator_errors
def crawl(
    c: Context, stack: str = "", format: str = "text", lookups: int = 10, keys: int = 10
) -> None:
    """Read every DHT task's routing table: one network? every task known? lookups agree?

    Exit 1 if the contact graph has more than one component or a running task
    is listed by no other task.
    """
    from ..live.client import connect
    from ..live.crawl import crawl_stack
    from ..live.inspection import port_map

    _format(format, (*TEXT_OR_JSON, "prometheus"))
    if lookups < 0 or keys < 0:
        raise UsageError("--lookups and --keys must be 0 or more")
    client = connect()
    name = _setting(c, "stack", stack)
    report_crawl(
        crawl_stack(client, name, port_map(client, name).tasks, lookups=lookups, keys=keys), format
    )


def report_crawl(result: Any, format: str) -> None:
    """A crawl on stdout in its format; exit 1 when split or a task is unknown (not for metrics)."""
    if format == "prometheus":
        from .metrics import crawl_exposition

        sys.stdout.write(crawl_exposition(result))
        return
    if format == "json":
        _print_json(result.as_dict())
    else:
        from rich.console import Console

        from .console import print_crawl

        print_crawl(Console(), result)
    if not result.ok:
        raise Exit(code=1)


@cqkd_task(
    help={
        "replicas": "new number of worker tasks",
        "stack": STACK_HELP,
        "service": "service to scale (default: worker)",
        "timeout": "seconds to wait for the new tasks",
        "policy": POLICY_HELP,
        "format": "text (default) or json",
        "dry-run": "render and validate against the live swarm, print what would change "
        "(services, replicas, ports, images to copy, tasks that stop) and change nothing",
        "verify": VERIFY_HELP,
    }
)
@operator_errors
def scale(
    c: Context,
    replicas: int = 0,
    stack: str = "",
    service: str = "worker",
    timeout: int = 600,
    policy: str = "",
    format: str = "text",
    dry_run: bool = False,
    verify: bool = False,
) -> None:
    """Scale the workers after checking the new count against the policy; existing ports stay.

    With --dry-run, the same checks, then the plan: nothing is scaled.
    """
    from ..core.errors import NotDeployed
    from ..live.client import connect
    from ..live.deploy import check_scale, scale_stack
    from ..live.plan import plan_scale
    from .console import stderr_console, with_progress

    _format(format)
    if replicas < 1:
        raise UsageError("give --replicas N (1 or more)")
    _verify_usage(verify, dry_run, no_wait=False)
    console = stderr_console()
    name = _setting(c, "stack", stack)
    rules = _policy(c, policy)
    client = connect()
    try:
        groups = check_scale(client, name, service, replicas, rules)
    except NotDeployed as refused:
        raise _refused(refused.results, format, _dry(refused.what, dry_run)) from None
    if dry_run:
        _show_plan(plan_scale(client, name, service, replicas, groups), format)
        return
    outcome = with_progress(
        console,
        "scaling",
        lambda progress: scale_stack(
            client, name, service, replicas, timeout, progress, console.log, groups
        ),
    )
    crawled = _crawl_after(client, name, console) if verify else None
    if format == "json":
        _print_json(outcome.summary() | ({"crawl": crawled.as_dict()} if crawled else {}))
        _verified(crawled, name)
        return
    spread = (
        " (" + ", ".join(f"{n} {c}" for n, c in outcome.groups.items()) + ")"
        if len(outcome.groups) > 1
        else ""
    )
    console.print(
        f"[green]{name}_{service}: {replicas} replicas{spread}; "
        f"all {outcome.waited.total} DHT tasks of the stack running and in the DHT[/green]"
    )
    _show_verified(crawled, name)


@cqkd_task(
    help={
        "stack": STACK_HELP,
        "timeout": "seconds to wait for containers and network to go",
        "format": "text (default) or json",
        "target": "swarm (default) or compose: remove the compose project of that name "
        "(its containers, networks and volumes, found by docker-compose's labels)",
        "dry-run": "print what would be removed (services, tasks that stop, networks, "
        "volumes) and remove nothing",
    }
)
@operator_errors
def teardown(
    c: Context,
    stack: str = "",
    timeout: int = 600,
    format: str = "text",
    target: str = "swarm",
    dry_run: bool = False,
) -> None:
    """Remove the stack, wait until its tasks are gone, then remove its network.

    With --dry-run, what would be removed: nothing is.
    """
    from ..live.client import connect
    from ..live.plan import plan_teardown
    from ..live.teardown import stack_rm
    from ..targets.registry import target_named
    from .console import stderr_console, with_progress

    _format(format)
    compose = target_named(target, ("swarm", "compose")).name == "compose"
    if compose and dry_run:
        raise UsageError(_NO_COMPOSE_DRY_RUN)
    console = stderr_console()
    name = _setting(c, "stack", stack)
    client = connect()
    if dry_run:
        _show_plan(plan_teardown(client, name), format)
        return
    if compose:
        from ..live.compose_project import check_project_name, down

        removed = down(client, check_project_name(name))
        if format == "json":
            _print_json({"project": name, "target": "compose"} | asdict(removed))
        else:
            console.print(
                f"[green]project '{name}' removed: {removed.containers} containers, "
                f"networks {', '.join(removed.networks) or '-'}, volumes "
                f"{', '.join(removed.volumes) or '-'} in {removed.seconds:.1f} s[/green]"
            )
        return
    result = with_progress(
        console,
        "removing",
        lambda progress: stack_rm(client, name, timeout, progress),
    )
    if format == "json":
        _print_json({"stack": name} | asdict(result) | {"complete": result.complete})
    if not result.complete:
        left = "; ".join(f"{kind}: {', '.join(v)}" for kind, v in result.left.items() if v)
        raise Exit(
            f"cqkd-stack: error: stack '{name}' not fully removed after {timeout} s: {left}",
            code=1,
        )
    if format == "text":
        console.print(
            f"[green]stack '{name}' removed ({len(result.removed_services)} services) "
            f"in {result.seconds:.1f} s; no container or network left[/green]"
        )


def _deploy_compose(
    project: str,
    rules: Policy,
    options: RenderOptions,
    file: str,
    timeout: int,
    wait: bool,
    format: str,
) -> None:
    from ..core.errors import NotDeployed
    from ..live import compose_project
    from ..live.client import connect
    from ..targets.compose import render_compose
    from .console import stderr_console, with_progress

    if file:
        from ..lint.validate import read_sources

        [(name, text)] = read_sources([file])
    else:
        name, text = "<rendered>", render_compose(rules, options)
    console = stderr_console()
    client = connect()
    try:
        outcome = with_progress(
            console,
            "starting",
            lambda progress: compose_project.deploy(
                client, text, name, project, rules, timeout, wait, console.log, progress
            ),
        )
    except NotDeployed as refused:
        raise _refused(refused.results, format, refused.what) from None
    summary = outcome.summary()
    if format == "json":
        _print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"project {project}: {len(outcome.nodes)} DHT nodes")
    for column in ("service", "role", "host port"):
        table.add_column(column)
    for node in outcome.nodes:
        table.add_row(node.service, node.role, f"{node.port}/{node.protocol}")
    console.print(table)
    ready = (
        ""
        if outcome.ready is None
        else (f", all answering at their host ports after {outcome.ready.seconds:.1f} s")
    )
    console.print(
        f"[green]project '{project}': {len(outcome.nodes)} nodes up in "
        f"{outcome.up_seconds:.1f} s{ready}[/green]; take it down with "
        f"cqkd-stack teardown --target compose -s {project}"
    )


# --- a multi-node swarm on this machine ------------------------------------------


def _local_engine() -> Any:
    """The engine on this machine: the cluster's nodes are its containers, whatever
    DOCKER_HOST or ``--host`` point the other tasks at."""
    from ..live.client import local_engine

    client = local_engine()
    if client is None:
        raise CqkdError("the Docker engine on this machine does not answer; run: cqkd-stack setup")
    return client


@cqkd_task(
    name="up",
    help={
        "nodes": "number of Docker-in-Docker nodes (containers NAME-1..N)",
        "managers": "how many of them are swarm managers (node 1 always is)",
        "name": "cluster name: of its containers, bridge network and docker context",
        "image": "image to load into every node (copied where its id differs)",
        "format": "text (default) or json",
    },
)
@operator_errors
def cluster_up(
    c: Context,
    nodes: int = 3,
    managers: int = 1,
    name: str = "cqkd-cluster",
    image: str = DEFAULT_NODE_IMAGE,
    format: str = "text",
) -> None:
    """Start a swarm of Docker-in-Docker nodes on this machine, with the node image on each."""
    from ..host import cluster
    from .console import stderr_console

    _format(format)
    console = stderr_console()
    client = _local_engine()
    try:
        with console.status(f"cluster {name}") as status:

            def say(step: str) -> None:
                status.update(step)
                console.log(step)

            result = cluster.cluster_up(client, nodes, name, image, progress=say, managers=managers)
    finally:
        client.close()
    if format == "json":
        _print_json(asdict(result))
        return
    for node in result.nodes:
        console.log(f"{node.container}: {node.engine_url} {node.role} {node.node_id}")
    console.log("done: " + ("; ".join(result.done) if result.done else "nothing to do"))
    steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result.timings.items())
    console.print(f"[green]cluster '{name}': {len(result.nodes)} nodes Ready[/green] ({steps})")
    console.print(
        f"use it: DOCKER_HOST={result.manager_url} cqkd-stack deploy ...\n"
        f"    or: cqkd-stack --host {result.manager_url} deploy ...\n"
        f"    or: docker context use {name}\n"
        f"remove it: cqkd-stack cluster down --name {name}"
    )


@cqkd_task(
    name="down",
    help={"name": "cluster name", "format": "text (default) or json"},
)
@operator_errors
def cluster_down(c: Context, name: str = "cqkd-cluster", format: str = "text") -> None:
    """Remove the cluster's nodes, bridge network and docker context (idempotent)."""
    from ..host import cluster
    from .console import stderr_console

    _format(format)
    console = stderr_console()
    client = _local_engine()
    try:
        removed = cluster.cluster_down(client, name, progress=console.log)
    finally:
        client.close()
    if format == "json":
        _print_json({"name": name} | asdict(removed))
        return
    console.print(
        f"[green]cluster '{name}' removed[/green]: {len(removed.containers)} nodes, "
        f"{len(removed.networks)} networks, context {removed.context or '-'} "
        f"in {removed.seconds:.1f} s"
    )


@cqkd_task(help={"pytest-args": "extra arguments for pytest, e.g. '-k render' (default: none)"})
def test(c: Context, pytest_args: str = "") -> None:
    """Lint, set up the engine and images, then run the unit and end-to-end tests."""
    from ..host import engine

    c.run(f"{sys.executable} -m ruff check .", pty=False)
    setup(c)
    engine.ensure_installed(commands=engine.TEST_COMMANDS)
    c.run(f"{sys.executable} -m pytest -ra {pytest_args}", pty=False)


ns = Collection()
ns.add_task(setup)
ns.add_task(render_stack, name="render")
ns.add_task(validate)
ns.add_task(deploy)
ns.add_task(ports)
ns.add_task(dht_check)
ns.add_task(probe)
ns.add_task(crawl)
ns.add_task(scale)
ns.add_task(teardown)
ns.add_task(test)
# `cqkd-stack cluster.up` (and `cluster up`: cli.main joins the two words).
ns.add_collection(Collection("cluster", up=cluster_up, down=cluster_down))
# Every setting a task reads with ``_setting``: invoke.yaml may set these and
# only these (settings.py refuses any other key under ``cqkd:``).
ns.configure({"cqkd": {"stack": "cqkd", "policy": None, "mirror": None, "suite": None}})
