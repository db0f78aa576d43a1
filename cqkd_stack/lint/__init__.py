"""The linter: text in, results out. A stack file read as ``docker stack deploy`` reads it
(``stackfile``, with ``interpolation`` and ``env_files``), then the port rules (``rules``),
through each target's own reader and rules for the other targets (``validate``).
It imports ``targets/``, ``core/`` and ``node/`` only, and talks to no engine.
"""
