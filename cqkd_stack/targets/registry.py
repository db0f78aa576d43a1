"""The targets by name: what the command line and the linter dispatch through.

``render --target NAME`` renders with ``TARGETS[NAME]``; ``validate`` reads a
file as the target it declares (or ``--target`` names) and checks it with
that target's loader and rules. Adding a target is one module and one line here.
"""

from __future__ import annotations

from ..core.errors import UsageError
from . import compose, kubernetes, swarm
from .base import Target

# In the order a file's text is asked which it declares (Swarm is the default).
TARGETS: dict[str, Target] = {t.name: t for t in (swarm.TARGET, compose.TARGET, kubernetes.TARGET)}
NAMES = tuple(TARGETS)
DEFAULT = swarm.TARGET.name


def target_named(name: str, allowed: tuple[str, ...] = NAMES) -> Target:
    """The target ``--target NAME`` means; a usage error naming the choices if none."""
    if name not in allowed:
        raise UsageError(f"--target must be one of {', '.join(allowed)}, got '{name}'")
    return TARGETS[name]


def declared_by(text: str) -> Target:
    """The target a file's text says it is for; a Swarm stack file when it says none."""
    return next((t for t in TARGETS.values() if t.declared_by(text)), TARGETS[DEFAULT])
