"""``python -m cqkd_stack``: the same program as the installed ``cqkd-stack``."""

from .cli.main import program

program.run()
