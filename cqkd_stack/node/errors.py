"""The one error type of the package, defined where the container's code can have it.

The node raises it for a bad environment or a socket it cannot open, and every
other room raises it (or ``cqkd_stack.core.errors``' kinds of it) for a known
failure. It lives in ``node/``, which imports nothing else of ours, so that
the code in 1000+ containers raises the same error without importing the
rest; ``core.errors`` adds the exit codes and the kinds the command tells apart.
"""

from __future__ import annotations


class CqkdError(Exception):
    """A known failure with a message meant for the operator (exit ``INVALID`` by default).

    ``INVALID`` is ``core.errors.INVALID``, written out here (1) so that this
    module needs no other; a unit test keeps the two equal.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
