"""Talk to a running node's control socket: ``set``, ``get``, ``holds`` and ``status``.

``dht-check`` runs this as a short Swarm job beside the node (sharing the
volume that holds its socket) and parses the last line of its output, so
every outcome, including a node that is not running, is printed as one JSON
line on stdout with the elapsed ``seconds`` added. Standard library only: it
must run in any image that has the package, without kademlia.

Exit codes: 0 when the node said ``ok`` (for ``set``: and at least one node
stored the value; for ``get``: and a value was found; for ``holds``: and this
node's own store has the key), 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from .wire import DEFAULT_CONTROL_SOCKET

DEFAULT_SOCKET = DEFAULT_CONTROL_SOCKET
# The node gives up on a network operation after 30 s; wait a little longer so
# its own, more specific error reaches the user instead of ours.
DEFAULT_TIMEOUT = 40.0


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process that listens on a connected Unix socket (Linux), else None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None
    return uid


def request(path: str, payload: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Send one request and return the node's reply; connection problems become replies too.

    Turning every failure into ``{"ok": false, "error": ...}`` keeps the output
    contract (one JSON line) intact for callers that parse it.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            owner = _peer_uid(sock)
            if owner is not None and owner not in (0, os.geteuid()):
                # In a shared directory another user may have taken the path
                # first: its answers would be forged values.
                return {
                    "ok": False,
                    "error": f"the process at {path} runs as uid {owner}, "
                    "neither root nor us; not talking to it",
                }
            sock.sendall(json.dumps(payload).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        return {"ok": False, "error": f"no control socket at {path}; is the node running?"}
    except TimeoutError:
        return {"ok": False, "error": f"the node did not answer within {timeout:g}s"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot talk to the node at {path}: {exc}"}
    text = b"".join(chunks).decode("utf-8", errors="replace").strip()
    if not text:
        return {"ok": False, "error": "the node closed the connection without a reply"}
    try:
        reply = json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return {"ok": False, "error": f"the node sent something that is not JSON: {text[:200]!r}"}
    if not isinstance(reply, dict):
        return {"ok": False, "error": f"the node sent an unexpected reply: {text[:200]!r}"}
    return reply


# A sealed reply (a status, a value of at most 512 bytes) is far below this.
MAX_REPLY_BYTES = 64 * 1024


def network_request(
    host: str,
    port: int,
    key: bytes,
    payload: dict[str, Any],
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
) -> dict[str, Any]:
    """One sealed request to a node's network control port; its reply, checked with ``key``.

    As :func:`request`, every failure is a reply with ``ok: false``; a reply
    that is not sealed with the key over this request's nonce is refused, so
    whatever answers at that address cannot pass off its own values. The
    node closes the connection without a word on a request it refuses
    (wrong key, stale clock, replay): that reads here as "closed without a
    reply", with the likely causes named. A failure before any sealed
    answer (no connection, nothing said) also carries ``reached: false``,
    so a caller can try another way to the node.
    """
    from .auth import AuthError, open_reply, seal_request

    line, nonce = seal_request(key, payload)
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.create_connection((host, port), timeout=connect_timeout or timeout) as sock:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
            while size <= MAX_REPLY_BYTES and (chunk := sock.recv(65536)):
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        error = f"{host}:{port} did not answer within {timeout:g}s"
        return {"ok": False, "error": error, "reached": False}
    except OSError as exc:
        error = f"cannot talk to the node at {host}:{port}: {exc}"
        return {"ok": False, "error": error, "reached": False}
    if not chunks:
        return {
            "ok": False,
            "error": f"the node at {host}:{port} closed the connection without a reply "
            "(a wrong key, a clock more than 30 s off, or not a cqkd node)",
            "reached": False,
        }
    try:
        return open_reply(key, nonce, b"".join(chunks))
    except AuthError as exc:
        return {"ok": False, "error": f"refusing the answer from {host}:{port}: {exc.message}"}


def exit_code(op: str, reply: dict[str, Any]) -> int:
    """0 only for a useful answer, so shell callers can just test ``$?``."""
    if not reply.get("ok"):
        return 1
    if op == "get" and reply.get("value") is None:
        return 1
    if op == "set" and not reply.get("stored"):
        return 1
    if op == "holds" and not reply.get("holds"):
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m cqkd_stack.nodectl",
        description="Send one request to a running cqkd node's control socket.",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get("CQKD_CONTROL_SOCKET") or DEFAULT_SOCKET,
        help="control socket path (default: $CQKD_CONTROL_SOCKET or %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for the reply (default: %(default)s)",
    )
    ops = parser.add_subparsers(dest="op", required=True, metavar="{set,get,holds,status}")
    setter = ops.add_parser("set", help="store VALUE under KEY in the DHT")
    setter.add_argument("key")
    setter.add_argument("value")
    getter = ops.add_parser("get", help="look KEY up in the network (never the local store)")
    getter.add_argument("key")
    holder = ops.add_parser(
        "holds", help="whether this node's own store has KEY (asks no other node)"
    )
    holder.add_argument("key")
    ops.add_parser("status", help="role, port, node id and neighbour count")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    payload: dict[str, Any] = {"op": args.op}
    if args.op in ("set", "get", "holds"):
        payload["key"] = args.key
    if args.op == "set":
        payload["value"] = args.value
    start = time.monotonic()
    reply = request(args.socket, payload, args.timeout)
    reply["seconds"] = round(time.monotonic() - start, 4)
    print(json.dumps(reply), flush=True)
    return exit_code(args.op, reply)


if __name__ == "__main__":
    sys.exit(main())
