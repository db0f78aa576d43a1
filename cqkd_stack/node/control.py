"""The node's control socket: what ``nodectl`` talks to, one JSON line in, one out.

Only Alice, Bob and operators use it, a few times in a node's life, while
every datagram goes through the daemon's loop; so it is a helper the node
holds, not more methods of the node, and what it needs (``json``, ``stat``,
``hashlib`` through :func:`~cqkd_stack.node.wire.digest`) is imported on
first use; sockets are ``_socket``'s and no ``contextlib`` (see daemon.py).
A local client is still not trusted to be well behaved: the
socket is 0600 in a directory nobody else can plant things in, a request is
bounded, and a client that does not read its reply is dropped without ever
holding up the loop. Standard library only, plus the routing module.
"""

from __future__ import annotations

import _socket
import os
import selectors

from .config import (
    ACCEPT_PAUSE,
    CONTROL_WRITE_TIMEOUT,
    MAX_NETWORK_CLIENTS,
    MAX_NETWORK_REQUEST_BYTES,
    MAX_PUBLISHED,
    MAX_REQUEST_BYTES,
    MAX_VALUE_BYTES,
    NETWORK_READ_TIMEOUT,
    OP_TIMEOUT,
)
from .errors import CqkdError
from .routing import Lookup, as_int, value_size
from .wire import digest

# Evaluated by type checkers only (see config.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from .auth import RequestGate
    from .guard import ValueStore
    from .routing import Contact, LookupHost

    class ControlledNode(LookupHost, Protocol):
        """What the control socket needs of its node besides what a lookup needs.

        A protocol rather than the node's class, so this module does not
        import the daemon that imports it.
        """

        published: dict[bytes, Any]
        storage: ValueStore
        selector: selectors.BaseSelector
        stopping: bool

        def status(self) -> dict[str, Any]: ...

        def store_own(self, key: bytes, value: Any) -> bool: ...


class Request:
    """One parsed control request: ``op`` plus, for set/get/holds, a key (and a value)."""

    __slots__ = ("key", "op", "value")

    def __init__(self, op: str, key: str | None = None, value: Any = None) -> None:
        self.op = op
        self.key = key
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.op, self.key, self.value) == (other.op, other.key, other.value)

    def __hash__(self) -> int:
        return hash((self.op, self.key, self.value))

    def __repr__(self) -> str:
        return f"Request({self.op!r}, {self.key!r}, {self.value!r})"


class RequestError(CqkdError):
    """A control request the node cannot act on; its text goes back to the client."""


def parse_request(raw: bytes) -> Request:
    """Check one control request; kept pure so every refusal is unit-testable."""
    import json  # only Alice, Bob and operators use the control socket

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("request must be a JSON object")
    op = data.get("op")
    if op == "status":
        return Request("status")
    if op not in ("set", "get", "holds"):
        raise RequestError(f"unknown op {op!r}; expected set, get, holds or status")
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise RequestError(f"{op} needs a non-empty string 'key'")
    if op in ("get", "holds"):
        return Request(op, key)
    if "value" not in data:
        raise RequestError("set needs a 'value'")
    value = data["value"]
    # What kademlia's storage and msgpack carry; null would read back as "absent".
    if not isinstance(value, (str, int, float, bool)):
        raise RequestError("value must be a string, number or boolean")
    return Request("set", key, value)


class ControlClient:
    """One control connection: the request line being read, then the operation."""

    __slots__ = ("buffer", "conn", "lookup", "nonce", "out", "replied", "timer")

    def __init__(self, conn: _socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        # The authenticated request's nonce (network port): the reply is sealed over it.
        self.nonce = ""
        self.out = b""  # the reply not yet written
        self.lookup: Lookup | None = None
        self.replied = False
        self.timer: list[Any] | None = None


def open_control_socket(path: str) -> _socket.socket:
    """Listen on ``path`` with mode 0600, in a directory nobody else can plant things in.

    With the umask alone (umask 000) any local user could connect; in a
    shared directory such as ``/tmp`` another user could take the path first
    and answer ``nodectl`` with forged values. So: the directory is created
    (0700) if missing, and must be a real directory owned by us or root that
    no one else can write to, sticky bit or not; the socket is bound under
    umask 077.
    """
    import stat

    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise CqkdError(f"cannot open control socket {path}: {exc}") from None
    mode = info.st_mode
    if not stat.S_ISDIR(mode):
        raise CqkdError(f"control socket directory {folder} is not a directory (a link?)")
    if info.st_uid not in (0, os.geteuid()):
        raise CqkdError(f"control socket directory {folder} belongs to uid {info.st_uid}, not us")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CqkdError(
            f"control socket directory {folder} is writable by others "
            f"(mode {stat.S_IMODE(mode):o}): another user could take or replace the "
            "socket; give it a directory of its own, e.g. /tmp/cqkd/control.sock"
        )
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise CqkdError(f"cannot open control socket {path}: {exc}") from None
    if existing is not None:
        if existing.st_uid != os.geteuid() or not stat.S_ISSOCK(existing.st_mode):
            raise CqkdError(
                f"control socket path {path} is already taken by something that is not "
                "our socket; refusing to use it"
            )
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    control = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        control.bind(path)
        os.chmod(path, 0o600)
        control.listen(16)
    except OSError as exc:
        control.close()
        raise CqkdError(f"cannot open control socket {path}: {exc}") from None
    finally:
        os.umask(old_mask)
    control.setblocking(False)
    return control


def open_network_listener(interface: str, port: int) -> _socket.socket:
    """Listen on TCP ``interface:port`` for sealed control requests (Alice and Bob only).

    TCP, not UDP: the handshake proves the client's address receives before
    the node sends it a byte, and a reply (a status) may be larger than a
    datagram a client could be sure to get.
    """
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind((interface, port))
        listener.listen(16)
    except OSError as exc:
        listener.close()
        raise CqkdError(f"cannot listen on TCP {interface}:{port} for control: {exc}") from None
    listener.setblocking(False)
    return listener


class ControlServer:
    """A listening control socket and its clients, on the node's loop.

    Every step is a callback of the node's selector and every wait a timer
    of the node's: a client that sends half a line, a request that crawls the
    network, or a reply nobody reads never stops the node from answering RPCs.

    The same server serves the Unix socket (:meth:`unix`: the path's mode is
    the access check) and the network control port (:meth:`network`: every
    request sealed, see :mod:`cqkd_stack.node.auth`). On the network anybody
    may connect, so there a request is smaller, must arrive within
    ``NETWORK_READ_TIMEOUT``, at most ``MAX_NETWORK_CLIENTS`` are served at a
    time (more are closed at once), and whatever does not open with the key
    is answered by closing the connection, never by a reply.
    """

    __slots__ = (
        "accept_paused",
        "clients",
        "gate",
        "listener",
        "max_clients",
        "node",
        "path",
        "read_timeout",
        "request_bytes",
    )

    def __init__(
        self,
        node: ControlledNode,
        listener: _socket.socket,
        path: str | None = None,
        gate: RequestGate | None = None,
    ) -> None:
        self.node = node
        self.path = path
        self.listener = listener
        self.gate = gate
        self.accept_paused = False
        self.clients: set[ControlClient] = set()
        network = gate is not None
        self.max_clients = MAX_NETWORK_CLIENTS if network else None
        self.read_timeout = NETWORK_READ_TIMEOUT if network else OP_TIMEOUT
        self.request_bytes = MAX_NETWORK_REQUEST_BYTES if network else MAX_REQUEST_BYTES

    @classmethod
    def unix(cls, node: ControlledNode, path: str) -> ControlServer:
        return cls(node, open_control_socket(path), path)

    @classmethod
    def network(cls, node: ControlledNode, interface: str, port: int, key: bytes) -> ControlServer:
        from .auth import RequestGate

        return cls(node, open_network_listener(interface, port), gate=RequestGate(key))

    def close(self) -> None:
        """Stop listening and take the path away, so ``nodectl`` fails at once, not on a timeout."""
        self.listener.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def on_accept(self) -> None:
        try:
            # ``_socket``'s accept: the new connection's descriptor, made a
            # socket object here (``socket.socket.accept`` does the same).
            fd, _ = self.listener._accept()
        except BlockingIOError:
            return
        except OSError:
            # EMFILE/ENFILE: the pending connection stays queued and the
            # listener stays readable, so watching it now would spin the loop.
            self._pause_accept()
            return
        conn = _socket.socket(fileno=fd)
        if self.max_clients is not None and len(self.clients) >= self.max_clients:
            conn.close()
            return
        conn.setblocking(False)
        client = ControlClient(conn)
        self.clients.add(client)
        client.timer = self.node.later(self.read_timeout, lambda: self._client_timed_out(client))
        self.node.selector.register(conn, selectors.EVENT_READ, lambda: self._on_client(client))

    def _on_client(self, client: ControlClient) -> None:
        try:
            chunk = client.conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        client.buffer += chunk
        end = client.buffer.find(b"\n")
        limit = self.request_bytes
        if end == -1 and chunk and len(client.buffer) <= limit:
            return  # more to come
        self.node.selector.unregister(client.conn)
        if end > limit or (end == -1 and len(client.buffer) > limit):
            if self.gate is not None:
                self._drop(client)  # an unauthenticated peer hears nothing
                return
            self._reply(client, {"ok": False, "error": f"request longer than {limit} bytes"})
            return
        line = client.buffer if end == -1 else client.buffer[: end + 1]
        client.buffer = b""
        if self.gate is not None:
            from .auth import AuthError

            try:
                line, client.nonce = self.gate.open(line)
            except AuthError:
                self._drop(client)
                return
            # Authenticated: the operation now has the whole OP_TIMEOUT.
            self.node.cancel(client.timer)
            client.timer = self.node.later(OP_TIMEOUT, lambda: self._client_timed_out(client))
        try:
            self._execute(client, parse_request(line))
        except CqkdError as exc:
            self._reply(client, {"ok": False, "error": exc.message})
        except Exception as exc:  # a bug must not kill the node, and the client hears back
            self._reply(client, {"ok": False, "error": f"internal error: {exc!r}"})

    def _pause_accept(self) -> None:
        if self.accept_paused:
            return
        self.accept_paused = True
        try:
            self.node.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass

        def resume() -> None:
            self.accept_paused = False
            if not self.node.stopping:
                self.node.selector.register(self.listener, selectors.EVENT_READ, self.on_accept)

        self.node.later(ACCEPT_PAUSE, resume)

    def _client_timed_out(self, client: ControlClient) -> None:
        if client.lookup is not None:
            client.lookup.cancel()
            self._reply(
                client, {"ok": False, "error": f"no answer from the network within {OP_TIMEOUT:g}s"}
            )
        else:
            self._drop(client)

    def _drop(self, client: ControlClient) -> None:
        if client.replied:
            return
        client.replied = True
        self._close(client)

    def _reply(self, client: ControlClient, reply: dict[str, Any]) -> None:
        if client.replied:
            return
        import json

        try:
            line = json.dumps(reply)
        except (TypeError, ValueError):  # another node stored bytes, say, under the key
            line = json.dumps({"ok": False, "error": "the value found is not JSON data"})
        client.replied = True
        if self.gate is not None:
            from .auth import seal_reply

            client.out = seal_reply(self.gate.key, client.nonce, line.encode())
        else:
            client.out = line.encode() + b"\n"
        self.node.cancel(client.timer)
        # Written as the client reads, never waited for: a client that does
        # not read its reply used to stall the whole node for 2 s.
        client.timer = self.node.later(CONTROL_WRITE_TIMEOUT, lambda: self._close(client))
        try:
            self.node.selector.unregister(client.conn)
        except (KeyError, ValueError):
            pass
        self._on_writable(client)

    def _on_writable(self, client: ControlClient) -> None:
        try:
            sent = client.conn.send(client.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(client)  # the client went away; nobody is left to tell
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)
            return
        try:
            self.node.selector.unregister(client.conn)
        except (KeyError, ValueError):
            pass
        self.node.selector.register(
            client.conn, selectors.EVENT_WRITE, lambda: self._on_writable(client)
        )

    def _close(self, client: ControlClient) -> None:
        self.node.cancel(client.timer)
        self.clients.discard(client)
        try:
            self.node.selector.unregister(client.conn)
        except (KeyError, ValueError):
            pass
        client.conn.close()

    def _execute(self, client: ControlClient, request: Request) -> None:
        node = self.node
        if request.op == "status":
            self._reply(client, node.status())
            return
        key = request.key
        assert key is not None
        target = digest(key)
        if request.op == "holds":
            # Read-only and local: no lookup, nothing sent to the network.
            age = node.storage.age(target)
            reply = {"ok": True, "key": key, "holds": age is not None}
            reply["published"] = target in node.published
            if age is not None:
                # When it came: a copy stored after a kill is a republish, not a survivor.
                reply["stored_seconds_ago"] = round(age, 3)
            self._reply(client, reply)
            return
        if request.op == "get":
            if not len(node.table):
                raise RequestError("this node has no neighbours to ask")

            def found(value: Any, nodes: list[Contact]) -> None:
                self._reply(client, {"ok": True, "key": key, "value": value})

            client.lookup = Lookup(node, target, True, found).start()
            return
        if not len(node.table):
            raise RequestError("this node has no neighbours to store on")
        value = request.value
        if value_size(value) is None:
            raise RequestError(
                f"value is larger than the {MAX_VALUE_BYTES} msgpack bytes a node holds"
            )

        def located(_: Any, nodes: list[Contact]) -> None:
            self._store_on(client, key, target, value, nodes)

        client.lookup = Lookup(node, target, False, located).start()

    def _store_on(
        self, client: ControlClient, key: str, target: bytes, value: Any, nodes: list[Contact]
    ) -> None:
        """Store on the k closest other nodes, and here too if we are closer than the farthest."""
        node = self.node
        if not nodes:
            self._reply(
                client, {"ok": True, "key": key, "stored": False, "replicas": 0, "local": False}
            )
            return
        goal = as_int(target)
        farthest = max(as_int(c[0]) ^ goal for c in nodes)
        local = node.table.own ^ goal < farthest
        if local:
            node.store_own(target, value)
        node.published.pop(target, None)
        node.published[target] = value
        while len(node.published) > MAX_PUBLISHED:
            del node.published[next(iter(node.published))]
        acked = [0]
        left = [len(nodes)]

        def stored(ok: bool, data: Any) -> None:
            acked[0] += 1 if ok else 0
            left[0] -= 1
            if left[0] == 0:
                self._reply(
                    client,
                    {
                        "ok": True,
                        "key": key,
                        "stored": acked[0] > 0,
                        "replicas": acked[0],
                        "local": local,
                    },
                )

        for contact in nodes:
            node.rpc(contact, "store", [node.id, target, value], stored)
