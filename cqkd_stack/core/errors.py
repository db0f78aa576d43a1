"""The kinds of the one error type modules raise, and the exit codes they map to.

``CqkdError`` itself is defined in ``node.errors``, so that the code in the
container can raise it without importing anything up here; it is the same
class under both names.

Every task and every target follows one rule, the linters' (check-jsonschema,
pre-commit): what went wrong decides the code, not which task or target
found it. ``EXIT_CODES`` is that rule as the command's ``--help`` prints it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..node.errors import CqkdError

if TYPE_CHECKING:
    from .results import Results


OK = 0
# The input was read and fails its checks (a stack, policy or file that is
# invalid, a port-policy refusal such as 1001 workers in a 1000-port range),
# or the swarm did not do what was asked (a wait timed out, the engine refused).
INVALID = 1
# The command was called wrongly or its input cannot be read: an unknown task
# or option, a bad option value, a missing or unreadable file, a directory
# given as a file, an output that cannot be written, a broken invoke.yaml.
USAGE = 2
# A bug in cqkd-stack: an error none of the above explains.
BUG = 3

EXIT_CODES = (
    (OK, "done: what was asked holds (valid, deployed, answering)"),
    (
        INVALID,
        "refused or failed: the input is invalid (a stack, policy or file that fails its "
        "checks, a port-policy refusal) or the swarm did not do it (a timeout, the "
        "engine's error); a refusal changes nothing",
    ),
    (
        USAGE,
        "usage or unreadable input: an unknown task or option, a bad option value, a "
        "missing or unreadable file, a directory given as a file, an output that cannot "
        "be written (a full disk), a broken invoke.yaml; nothing is changed",
    ),
    (BUG, "a bug in cqkd-stack: please report it"),
)


class InvalidInput(CqkdError):
    """The input was read and fails its checks, or the policy refuses it: exit ``INVALID``.

    The same refusal exits the same whatever finds it: 1001 workers in a
    1000-port range is this from ``render`` for Swarm, compose and Kubernetes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=INVALID)


class UsageError(CqkdError):
    """The command was called wrongly, or its input cannot be read: exit ``USAGE``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=USAGE)


class NotDeployed(CqkdError):
    """The stack failed validation against the policy and the live swarm: nothing changed."""

    def __init__(self, results: Results, what: str = "nothing was deployed") -> None:
        super().__init__(what, exit_code=INVALID)
        self.results = results
        self.what = what
