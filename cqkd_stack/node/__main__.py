"""``python3 -m cqkd_stack.node``: the node image's entrypoint (see ``daemon``)."""

import sys

from .daemon import main

sys.exit(main())
