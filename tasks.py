"""Repository entry point for ``invoke``: the tasks live in the package.

Keeping them in ``cqkd_stack.cli.tasks`` means the installed ``cqkd-stack``
command and ``invoke`` in this checkout run exactly the same code.
"""

from cqkd_stack.cli.tasks import ns  # noqa: F401
