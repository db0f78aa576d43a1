"""``python -m cqkd_stack.resolver`` and ``from cqkd_stack.resolver import ...``, as documented.

The resolver is ``cqkd_stack.node.resolver`` (it runs in the container, beside
the node); images, stacks and docs/ports.md call it by this shorter name,
which stays, with the names docs/ports.md lists. Importing it costs what
importing the resolver costs.
"""

import sys

from .node.resolver import (
    Resolution,
    ResolverError,
    check_bindable,
    get_dynamic_port,
    main,
    resolve,
)

__all__ = ["Resolution", "ResolverError", "check_bindable", "get_dynamic_port", "main", "resolve"]

if __name__ == "__main__":
    sys.exit(main())
