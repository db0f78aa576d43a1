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


def wanted_control_key(doc: dict[str, Any]) -> str | None:
    """The config the stack file names for its control key (render: ``<stack>_control-key``).

    A file rendered for one stack name may be deployed under another
    (``deploy --file``): the name is the file's, whatever stack deploys it.
    """
    configs = doc.get("configs") or {}
    entry = configs.get(CONTROL_KEY_CONFIG) if isinstance(configs, dict) else None
    if isinstance(entry, dict) and entry.get("external") and isinstance(entry.get("name"), str):
        return str(entry["name"])
    return None


def ensure_control_key(client: docker.DockerClient, stack: str, name: str | None = None) -> bool:
    """Create the key config (default ``<stack>_control-key``) unless it exists; True if created.

    Labelled with ``stack``'s namespace, so that stack's teardown removes it.
    """
    from docker.errors import APIError

    name = name or control_key_config(stack)
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
    """Remove the key configs deploy made for ``stack``; True if one went (teardown calls this).

    A config another stack's services still use stays (Docker refuses).
    """
    from docker.errors import APIError, NotFound

    removed = False
    for config in client.api.configs(filters={"label": f"{KEY_LABEL}={stack}"}):
        with contextlib.suppress(NotFound, APIError):
            client.api.remove_config(config["ID"])
            removed = True
    return removed
