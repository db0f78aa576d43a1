"""cqkd-stack: a Kademlia DHT network on Docker Swarm, one unique port per task."""

__version__ = "0.1.0"
