"""What runs inside every DHT container: the resolver, the node, nodectl and the probe.

The node is split by job so each can be read alone: ``config`` (the
environment, every limit), ``routing`` (the table and lookups), ``daemon``
(the loop, UDP RPCs, serving, joining; ``python -m cqkd_stack.node`` runs
its ``main``), ``control`` (the control socket) and ``guard`` (what bounds a
peer's cost).

Standard library only, plus ``umsgpack`` for the node and ``rpcudp`` for the
probe: 1000+ containers each pay for what these modules import, so nothing
here imports any other part of ``cqkd_stack``; every other room may import
this one. This file imports nothing, so ``import cqkd_stack.node.resolver``
costs the resolver alone.
"""
