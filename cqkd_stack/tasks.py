"""The Invoke tasks: the only layer that prints and exits.

Each task is thin: parse options, call the library, show the result. The same
collection serves ``invoke`` in the repository and the installed
``cqkd-stack`` command.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from invoke import Collection, Context, Exit, task

from . import DEFAULT_NODE_IMAGE, report
from .documents import read_text, write_atomically
from .errors import CqkdError
from .policy import Policy, load_policy
from .render import RenderOptions, dht_tasks, render
from .validate import validate_files, validate_texts

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

F = TypeVar("F", bound=Callable[..., Any])
UNEXPECTED = 3


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
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as exc:  # the boundary: report, never swallow
            if type(exc).__module__.startswith(("docker.", "requests.")):
                # The engine refused or went away: the environment, not a bug of ours.
                raise Exit(f"cqkd-stack: error: the Docker engine said: {exc}", code=1) from None
            raise Exit(
                f"cqkd-stack: unexpected error ({type(exc).__name__}: {exc}); "
                "this is a bug in cqkd-stack, please report it",
                code=UNEXPECTED,
            ) from exc

    return wrapper  # type: ignore[return-value]


def _setting(c: Context, name: str, given: Any) -> Any:
    """An option given on the command line wins; else invoke.yaml / env config."""
    return given if given not in (None, "") else c.config.cqkd.get(name)


def _policy(c: Context, given: str | None) -> Policy:
    return load_policy(_setting(c, "policy", given))


def _files(files: str, file: list[str]) -> list[str]:
    """Positional files may be one string with commas or spaces; ``--file`` repeats."""
    return [f for f in files.replace(",", " ").split() if f] + list(file)


@task(
    help={
        "replicas": "number of worker tasks (ports 7000 + slot - 1)",
        "output": "write the stack here instead of standard output",
        "image": "image of every DHT service (any image with Python 3 and cqkd-stack)",
        "network": "overlay (default) or host: on host, the unique port keeps workers apart",
        "port-offset": "a second batch of workers beside a first: only workers, shifted ports",
        "policy": "port policy file (default: the shipped stacks/port-policy.yml)",
        "subnet": "overlay subnet (default: sized for the task count)",
        "join-stack": "for a batch: the deployed stack whose DHT it joins",
        "healthcheck": "add Docker's per-task health check (off: readiness is probed)",
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
) -> None:
    """Render the CQKD stack (bootstrap, Alice, Bob, N workers) for docker stack deploy."""
    rules = _policy(c, policy)
    options = RenderOptions(
        replicas=replicas,
        image=image,
        network=network,
        port_offset=port_offset,
        subnet=subnet or None,
        join_stack=_setting(c, "stack", join_stack),
        healthcheck=healthcheck,
    )
    text = render(rules, options)
    name = output or "<rendered>"
    results = validate_texts([(name, text)], rules)
    if not results.ok:
        # Never hand out a stack that would be refused: say why instead.
        raise Exit(report.text(results), code=1)
    if output:
        write_atomically(Path(output), text)
        print(f"wrote {output}: {replicas} workers", file=sys.stderr)
    else:
        sys.stdout.write(text)


@task(
    positional=["files"],
    iterable=["file"],
    auto_shortflags=False,
    help={
        "files": "stack file(s) to check; several may be given separated by commas",
        "file": "another stack file (repeatable)",
        "policy": "port policy file (default: the shipped stacks/port-policy.yml)",
        "format": "text (default), json or github",
    },
)
@operator_errors
def validate(
    c: Context,
    files: str | None = None,
    file: list[str] | None = None,
    policy: str = "",
    format: str = "text",
) -> None:
    """Check stack files against the schema and port policy (exit 0 ok, 1 invalid, 2 usage)."""
    names = _files(files or "", file or [])
    if not names:
        raise Exit("cqkd-stack: error: give at least one stack file to validate", code=2)
    if format not in report.FORMATS:
        choices = ", ".join(report.FORMATS)
        raise Exit(f"cqkd-stack: error: --format must be one of {choices}", code=2)
    results = validate_files(names, _policy(c, policy))
    print(report.FORMATS[format](results))
    if not results.ok:
        raise Exit(code=1)


# --- live swarm -------------------------------------------------------------
# The Docker SDK is imported inside these tasks only: render and validate run in
# CI linters where a fast start matters and no engine exists.


def _console() -> Console:
    """Progress and summaries go to stderr, so --format json stays clean on stdout."""
    from rich.console import Console

    return Console(stderr=True, log_path=False)


def _progress_bar(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _wait_with_bar(console: Console, label: str, wait: Callable[[Any], Any]) -> Any:
    """Run a waiting function, drawing its (done, total, note) reports as a bar."""
    with _progress_bar(console) as bar:
        handle = bar.add_task(label, total=None)

        def report_progress(done: int, total: int, note: str) -> None:
            bar.update(handle, completed=done, total=total or None, description=f"{label}: {note}")

        return wait(report_progress)


@task(
    help={
        "skip-images": "only install/start the engine and the swarm",
    }
)
@operator_errors
def setup(c: Context, skip_images: bool = False) -> None:
    """Install and start the Docker engine, initialise the swarm, build the images (idempotent)."""
    from . import engine, images

    console = _console()
    with console.status("checking the Docker engine") as status:

        def say(step: str) -> None:
            status.update(step)
            console.log(step)

        state = engine.ensure_installed(progress=say)
        # A daemon restarting after a crash cleans up every container before it
        # answers: ~1000 took over a minute here. Waiting is on a real condition.
        state = state.update(engine.ensure_running(progress=say, timeout=300))
        state = state.update(engine.ensure_swarm(progress=say))
        state = state.update(engine.ensure_host_settings(progress=say))
        built = images.ensure_images(progress=say) if not skip_images else None
    for warning in state.warnings:
        console.print(f"[yellow]warning: {warning}[/yellow]")
    console.log(
        f"engine {state.server_version} (pid {state.dockerd_pid}), swarm node "
        f"{state.swarm_node_id} at {state.advertise_addr}"
    )
    if built is not None:
        console.log(f"images: {built.base_image}, {built.node_image}")
    changed = [*state.done, *(built.done if built else [])]
    console.log("setup complete: " + ("; ".join(changed) if changed else "nothing to do"))


@task(
    help={
        "replicas": "number of worker tasks",
        "network": "overlay (default) or host",
        "stack": "stack name (default: cqkd, or cqkd.stack in invoke.yaml)",
        "timeout": "seconds to wait for every task to be running and in the DHT",
        "no-wait": "return once docker stack deploy has accepted the stack",
        "file": "deploy this stack file instead of rendering one",
        "image": "image of every DHT service",
        "port-offset": "deploy a batch of workers beside the stack given by --join-stack",
        "join-stack": "for a batch: the deployed stack whose DHT it joins",
        "policy": "port policy file",
        "format": "summary as text (default) or json",
        "subnet": "overlay subnet (default: the first free one in 10.213.0.0/16)",
        "healthcheck": "add Docker's per-task health check (off: readiness is probed)",
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
) -> None:
    """Validate, deploy the DHT stack, and wait until every task answers in the DHT."""
    from . import deploy as live
    from . import swarm

    console = _console()
    name = _setting(c, "stack", stack)
    rules = _policy(c, policy)
    client = swarm.connect()
    manager_address = client.info()["Swarm"].get("NodeAddr") or "127.0.0.1"
    taken = swarm.taken_subnets(client, exclude_stack=name)
    if file:
        source, text = file, read_text(Path(file))
    else:
        options = RenderOptions(
            replicas=replicas,
            image=image,
            network=network,
            port_offset=port_offset,
            bootstrap_host=manager_address,
            join_stack=_setting(c, "stack", join_stack) if port_offset else name,
            healthcheck=healthcheck,
        )
        if not subnet and network == "overlay" and not port_offset:
            subnet = str(swarm.free_subnet(taken, dht_tasks(rules, options)))
        options = dataclasses.replace(options, subnet=subnet or None)
        source, text = f"<rendered for stack {name}>", render(rules, options)
    # Ports that other stacks on the same networks hold count as claims too;
    # this stack's own services are being replaced, so they do not.
    doc = yaml.safe_load(text)
    joined = swarm.stack_network_names(doc, name) if isinstance(doc, dict) else set()
    existing = swarm.live_claims(client, exclude_stack=name, networks=joined)
    results = validate_texts([(source, text)], rules, existing, taken)
    if not results.ok:
        raise Exit(report.text(results) + "\nnothing was deployed", code=1)
    with tempfile.TemporaryDirectory(prefix="cqkd-") as tmp:
        path = Path(tmp) / f"{name}.stack.yml"
        path.write_text(text)
        console.log(f"deploying stack '{name}' ({source})")
        live.deploy_bootstrap_first(client, doc, path, name, console.log)
    if no_wait:
        console.log(f"stack '{name}' accepted; not waiting (--no-wait)")
        return
    waited = _wait_with_bar(
        console,
        "starting",
        lambda progress: live.wait_until_ready(client, name, timeout, progress),
    )
    ports = swarm.port_map(client, name, rules)
    summary = {
        "stack": name,
        "seconds": round(waited.seconds, 1),
        "running_seconds": _rounded(waited.running_seconds),
        "joined_seconds": _rounded(waited.joined_seconds),
        "tasks": waited.total,
        "port_ranges": _port_ranges(ports),
    }
    if format == "json":
        print(json.dumps(summary | {"ports": ports.as_dict()}, indent=2))
        return
    _print_port_table(console, ports)
    ranges = ", ".join(f"{service} {rng}" for service, rng in summary["port_ranges"].items())
    console.print(
        f"[green]stack '{name}': {waited.total} tasks running after "
        f"{waited.running_seconds or 0:.1f} s, all in the DHT after {waited.seconds:.1f} s"
        f"[/green]; ports: {ranges}"
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def _port_ranges(ports: Any) -> dict[str, str]:
    by_service: dict[str, list[int]] = {}
    for row in ports.tasks:
        if row.port is not None:
            by_service.setdefault(row.service, []).append(row.port)
    return {s: f"{min(p)}-{max(p)}" if len(p) > 1 else str(p[0]) for s, p in by_service.items()}


def _print_port_table(console: Console, ports: Any) -> None:
    from rich.table import Table

    table = Table(title=f"stack {ports.stack}: {len(ports.tasks)} tasks")
    for column in ("slot", "task", "node", "address", "port", "state"):
        table.add_column(column, justify="right" if column in ("slot", "port") else "left")
    for row in ports.tasks:
        state = row.state + (f" ({row.error})" if row.error else "")
        flag = " [red]DUPLICATE[/red]" if row.duplicate else ""
        table.add_row(
            str(row.slot), row.task, row.node, row.address or "-", f"{row.port}{flag}", state
        )
    console.print(table)
    usage = Table(title="port ranges")
    for column in ("role", "range", "used", "total", "free"):
        usage.add_column(column)
    for role in ports.roles:
        usage.add_row(role.role, role.range, str(role.used), str(role.total), str(role.free))
    console.print(usage)
    for service, slots in ports.missing_slots.items():
        console.print(f"[yellow]{service}: missing slots {_compact(slots)}[/yellow]")
    if ports.duplicate_ports:
        console.print(f"[red]duplicate ports: {_compact(ports.duplicate_ports)}[/red]")


def _compact(numbers: list[int]) -> str:
    """1,2,3,7 → 1-3, 7: a thousand missing slots must fit on a line."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@task(
    help={
        "stack": "stack name",
        "format": "table (default) or json",
        "policy": "port policy file",
    }
)
@operator_errors
def ports(c: Context, stack: str = "", format: str = "table", policy: str = "") -> None:
    """The live port map: slot, task, node, address, port, state; duplicates and gaps flagged."""
    from . import swarm

    if format not in ("table", "json"):
        raise Exit("cqkd-stack: error: --format must be table or json", code=2)
    client = swarm.connect()
    result = swarm.port_map(client, _setting(c, "stack", stack), _policy(c, policy))
    if format == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        from rich.console import Console

        _print_port_table(Console(), result)
    if not result.healthy:
        raise Exit(code=1)


@task(
    name="dht-check",
    help={
        "stack": "stack name",
        "format": "text (default) or json",
        "all": "also probe every DHT task at its address and port (as the probe task)",
    },
)
@operator_errors
def dht_check(c: Context, stack: str = "", format: str = "text", all: bool = False) -> None:
    """Alice stores a value in the DHT and Bob reads it back through the network."""
    from . import swarm
    from .dhtcheck import dht_check as check

    name = _setting(c, "stack", stack)
    client = swarm.connect()
    result = check(client, name)
    report_ = _probe(client, name) if all else None
    if format == "json":
        out: dict[str, Any] = asdict(result)
        if report_ is not None:
            out["probe"] = _probe_dict(report_)
        print(json.dumps(out, indent=2))
    else:
        print(
            f"ok: {result.stored_by} stored {result.key}, {result.read_by} read it back "
            f"through the DHT; round trip {result.round_trip_seconds * 1000:.0f} ms "
            f"(set {result.set_seconds * 1000:.0f} ms, get {result.get_seconds * 1000:.0f} ms)"
        )
        if report_ is not None:
            print(_probe_text(report_))
    if report_ is not None and not report_.ok:
        raise Exit(code=1)


def _probe(client: Any, stack: str) -> Any:
    from . import swarm
    from .readiness import probe_stack

    rows = swarm.port_map(client, stack).tasks
    return probe_stack(client, stack, rows)


def _probe_dict(result: Any) -> dict[str, Any]:
    return asdict(result) | {"ok": result.ok}


def _probe_text(result: Any) -> str:
    lines = [
        f"{result.answered}/{result.total} DHT tasks answered at their address and port, "
        f"{result.joined} in the DHT; probe round {result.round_seconds:.2f} s, "
        f"{result.seconds:.2f} s in all"
    ]
    for label, rows in (("silent", result.silent), ("answering, no contacts", result.not_joined)):
        by_service: dict[str, list[int]] = {}
        for row in rows:
            by_service.setdefault(row["service"], []).append(row["slot"] or 0)
        for service, slots in sorted(by_service.items()):
            lines.append(f"{label}: {service} slots {_compact(slots)}")
    return "\n".join(lines)


@task(
    help={
        "stack": "stack name",
        "format": "text (default) or json",
    }
)
@operator_errors
def probe(c: Context, stack: str = "", format: str = "text") -> None:
    """Kademlia-ping every DHT task at its own address and port, all in one round.

    Exit 1 if any task is silent or has no contacts.
    """
    from . import swarm

    if format not in ("text", "json"):
        raise Exit("cqkd-stack: error: --format must be text or json", code=2)
    result = _probe(swarm.connect(), _setting(c, "stack", stack))
    print(json.dumps(_probe_dict(result), indent=2) if format == "json" else _probe_text(result))
    if not result.ok:
        raise Exit(code=1)


@task(
    help={
        "replicas": "new number of worker tasks",
        "stack": "stack name",
        "service": "service to scale (default: worker)",
        "timeout": "seconds to wait for the new tasks",
        "policy": "port policy file",
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
) -> None:
    """Scale the workers after checking the new count against the policy; existing ports stay."""
    from . import deploy as live
    from . import swarm

    if replicas < 1:
        raise Exit("cqkd-stack: error: give --replicas N (1 or more)", code=2)
    console = _console()
    name = _setting(c, "stack", stack)
    rules = _policy(c, policy)
    client = swarm.connect()
    problems = swarm.scale_problems(client, name, service, replicas, rules)
    if problems:
        raise Exit("\n".join(problems) + "\nnothing was changed", code=1)
    live.scale_service(client, name, service, replicas)
    waited = _wait_with_bar(
        console,
        "scaling",
        lambda progress: live.wait_until_ready(client, name, timeout, progress),
    )
    console.print(
        f"[green]{name}_{service}: {replicas} replicas; "
        f"all {waited.total} DHT tasks of the stack running and in the DHT[/green]"
    )


@task(
    help={
        "stack": "stack name",
        "timeout": "seconds to wait for containers and network to go",
    }
)
@operator_errors
def teardown(c: Context, stack: str = "", timeout: int = 600) -> None:
    """Remove the stack, wait until its tasks are gone, then remove its network."""
    from . import deploy as live
    from . import swarm

    console = _console()
    name = _setting(c, "stack", stack)
    client = swarm.connect()
    result = _wait_with_bar(
        console,
        "removing",
        lambda progress: live.stack_rm(client, name, timeout, progress),
    )
    if not result.complete:
        left = "; ".join(f"{kind}: {', '.join(v)}" for kind, v in result.left.items() if v)
        raise Exit(
            f"cqkd-stack: error: stack '{name}' not fully removed after {timeout} s: {left}",
            code=1,
        )
    console.print(
        f"[green]stack '{name}' removed ({len(result.removed_services)} services) "
        f"in {result.seconds:.1f} s; no container or network left[/green]"
    )


@task(help={"pytest-args": "extra arguments for pytest, e.g. '-k render'"})
def test(c: Context, pytest_args: str = "") -> None:
    """Lint, set up the engine and images, then run the unit and end-to-end tests."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    setup(c)
    c.run(f"{sys.executable} -m pytest -ra {pytest_args}", pty=False)


ns = Collection()
ns.add_task(setup)
ns.add_task(render_stack, name="render")
ns.add_task(validate)
ns.add_task(deploy)
ns.add_task(ports)
ns.add_task(dht_check)
ns.add_task(probe)
ns.add_task(scale)
ns.add_task(teardown)
ns.add_task(test)
ns.configure({"cqkd": {"stack": "cqkd", "policy": None}})
