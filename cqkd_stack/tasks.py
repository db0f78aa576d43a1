"""The Invoke tasks: the only layer that prints and exits.

Each task is thin: parse options, call the library, show the result. The same
collection serves ``invoke`` in the repository and the installed
``cqkd-stack`` command.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Context, Exit, task

from . import DEFAULT_NODE_IMAGE, report
from .errors import CqkdError
from .policy import Policy, load_policy
from .render import RenderOptions, render
from .validate import validate_files, validate_texts

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
    )
    text = render(rules, options)
    name = output or "<rendered>"
    results = validate_texts([(name, text)], rules)
    if not results.ok:
        # Never hand out a stack that would be refused: say why instead.
        raise Exit(report.text(results), code=1)
    if output:
        Path(output).write_text(text)
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


ns = Collection()
ns.add_task(render_stack, name="render")
ns.add_task(validate)
ns.configure({"cqkd": {"stack": "cqkd", "policy": None}})
