"""What runs inside every DHT container: the resolver, the node, nodectl and the probe.

Standard library only, plus ``umsgpack`` for the node and ``rpcudp`` for the
probe: 1000+ containers each pay for what these modules import, so nothing
here imports any other part of ``cqkd_stack``; every other room may import
this one. This file imports nothing, so ``import cqkd_stack.node.resolver``
costs the resolver alone.
"""
