"""The one error type modules raise; only the task layer turns it into output."""

from __future__ import annotations


class CqkdError(Exception):
    """A known failure with a message meant for the operator.

    ``exit_code`` follows the linter convention the CLI uses everywhere:
    1 for invalid input or a failed operation, 2 for a usage problem (a missing
    file, an unreadable policy) that says nothing about the stack itself.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(CqkdError):
    """The command was called wrongly: exit 2, whatever the stacks contain."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
