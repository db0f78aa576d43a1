"""``python3 -m cqkd_stack.probe``, as readiness and the tests run it in a node image's container.

The code is ``cqkd_stack.node.probe``; this name stays for the images and
stacks that call it so.
"""

import sys

from .node.probe import main

if __name__ == "__main__":
    sys.exit(main())
