"""What every participant in the DHT agrees on, importable at no cost.

The node runs in 1000+ containers and must not pay for the probe's imports
(asyncio, rpcudp), nor the probe for the node's; both import this module,
which uses the standard library only.
"""

from __future__ import annotations

# sha1(b"cqkd-stack probe"): the one node id every probe uses. Kademlia adds
# every pinger to its routing table, so a probe with a random id would leave a
# dead contact in all 1000 nodes, and each node's next lookup would wait out
# an RPC timeout on it. Our node never adds this id; a stock kademlia node
# adds it once, not once per run. Written out so importing this module does
# not load hashlib (OpenSSL) in every container.
PROBE_NODE_ID = bytes.fromhex("646a075745527b4e829a273fdc7b8e5cc3068bfa")

# Where the node listens for ``nodectl`` unless CQKD_CONTROL_SOCKET says
# otherwise. A directory of its own, which the node creates with mode 0700:
# a socket directly in a shared /tmp could be taken first by another user.
# The same path for every user, since the host names it for a container
# whose user it does not know (``dht-check``).
DEFAULT_CONTROL_SOCKET = "/tmp/cqkd/control.sock"


def digest(key: str) -> bytes:
    """A key's place in the DHT: sha1 of its UTF-8 text, as ``kademlia.utils.digest``.

    Here because the host's ``dht-check --kill-holders`` must draw keys as the
    node places them. ``hashlib`` loads OpenSSL; only the control socket's
    set/get/holds and that check need it.
    """
    import hashlib

    return hashlib.sha1(key.encode("utf8")).digest()


def split_host_port(text: str, form: str = "host:port") -> tuple[str, int]:
    """``"10.0.1.5:7003"`` or ``"[::1]:7000"`` → (host, port).

    Raises ValueError whose text completes "<item> ...", so each caller can
    name what it was parsing (a target, a BOOTSTRAP_NODES item).
    """
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip().removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"is not {form}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("has no numeric port") from None
    if not 1 <= port <= 65535:
        raise ValueError("has a port outside 1-65535")
    return host, port
