"""Where a rendered network runs: one module per target, each with the same surface.

``swarm`` (a stack for ``docker stack deploy``), ``compose`` (a docker-compose
file, one service per worker) and ``kubernetes`` (StatefulSets). Each renders
its file from the policy and the shared options, and reads and checks a file
of its kind; ``registry`` names them for the command line and the linter.
Targets import ``core/`` and ``node/`` only: the linter loads through them.
"""
