"""``python3 -m cqkd_stack.nodectl``, as ``dht-check`` runs it in a node image's container.

The code is ``cqkd_stack.node.nodectl``; this name stays for the images and
stacks that call it so.
"""

import sys

from .node.nodectl import main

if __name__ == "__main__":
    sys.exit(main())
