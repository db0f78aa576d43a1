"""cqkd-stack: a Kademlia DHT network on Docker Swarm, one unique port per task."""

__version__ = "0.1.0"

# The reference node image `invoke setup` builds; the renderer's default.
DEFAULT_NODE_IMAGE = f"cqkd-dht-node:{__version__}"
