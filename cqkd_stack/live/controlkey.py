"""The stack's control key: a Swarm config that deploy creates and teardown removes.

Alice's and Bob's sealed control port (``cqkd_stack.node.auth``) checks every
request with this key, and ``dht-check`` reads it back from whichever manager
it runs on. Why a config rather than a secret: Swarm never gives a secret's
data back through the API, so the key would live only on the disk of the
manager that created it, and dht-check from any other manager could not
seal a request. A config's data is readable by exactly the managers, who
can exec into any task (and read the key there) anyway: it widens nobody's
reach. The node gets it as a file, 0400, owned by its user.

The key is 32 random bytes made here, never written to disk by the CLI,
never in an environment variable, a label or the stack file (which names
the config only). Configs cannot change, so a redeploy keeps the key the
stack has. It carries the stack's namespace label, so ``docker stack rm``
removes it as it does the stack's own configs; teardown removes it too.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..core.contract import CONTROL_KEY_CONFIG, STACK_LABEL, control_key_config
from ..core.errors import CqkdError
from ..node.auth import new_key

if TYPE_CHECKING:
    import docker

# Marks a config as the toolkit's key (not one an operator named alike).
KEY_LABEL = "org.cqkd.control-key"


def wants_control_key(doc: dict[str, Any], stack: str) -> bool:
    """Whether the stack file names this stack's control key config (as render writes it)."""
    configs = doc.get("configs") or {}
    entry = configs.get(CONTROL_KEY_CONFIG) if isinstance(configs, dict) else None
    return (
        isinstance(entry, dict)
        and bool(entry.get("external"))
        and entry.get("name") == control_key_config(stack)
    )


def ensure_control_key(client: docker.DockerClient, stack: str) -> bool:
    """Create ``<stack>_control-key`` with a fresh key unless it exists; True if created."""
    from docker.errors import APIError

    name = control_key_config(stack)
    # The name filter matches prefixes too: compare the whole name.
    if any(c["Spec"]["Name"] == name for c in client.api.configs(filters={"name": name})):
        return False
    try:
        client.api.create_config(name, new_key(), labels={STACK_LABEL: stack, KEY_LABEL: stack})
    except APIError as exc:
        if exc.response is not None and exc.response.status_code == 409:
            return False  # another deploy made it a moment ago: use that one
        raise CqkdError(f"cannot create the control key config {name}: {exc}") from None
    return True


def remove_control_key(client: docker.DockerClient, stack: str) -> bool:
    """Remove the stack's key config if it is ours; True if it went (teardown calls this)."""
    from docker.errors import APIError, NotFound

    name = control_key_config(stack)
    for config in client.api.configs(filters={"label": f"{KEY_LABEL}={stack}"}):
        if config["Spec"]["Name"] == name:
            with contextlib.suppress(NotFound, APIError):
                client.api.remove_config(config["ID"])
                return True
    return False
