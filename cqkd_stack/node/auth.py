"""Authenticated control requests over the network: what Alice's and Bob's TCP port speaks.

The Unix control socket is reached only by processes on the same node (a
``dht-check`` job beside the task); the network control port lets the CLI
on any manager reach the node directly, with one TCP connection instead of
two scheduled Swarm jobs. Anyone on the host network or the overlay can
connect to that port, so every request is sealed with the stack's key
(HMAC-SHA256, checked with :func:`hmac.compare_digest`) and carries a
timestamp and a random nonce: a request older or newer than
:data:`MAX_SKEW` seconds, or whose nonce was already seen, is refused, so a
captured request cannot be played again. A refused request gets no reply
at all (the node only closes the connection): an unauthenticated peer
learns nothing and cannot make the node send it anything. The reply is
sealed too, over the request's nonce, so the CLI knows it is this stack's
node that answered this request and not a replay of an older answer.

One line each way, ``<64 hex digits of MAC> <JSON>\\n``; the MAC covers a
domain prefix (request and reply prefixes differ, so a reply can never be
sent back as a request) and exactly the JSON bytes received, so nothing is
parsed before it is authenticated. Standard library only (the node's rule);
``hmac`` and ``hashlib`` are imported by whoever seals or opens, which on a
node is only Alice and Bob.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

from .errors import CqkdError

# Evaluated by type checkers only (see config.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REQUEST_PREFIX = b"cqkd-control-request\x00"
REPLY_PREFIX = b"cqkd-control-reply\x00"
MAC_HEX = 64
# A request's timestamp may differ from the node's clock by at most this.
MAX_SKEW = 30.0
# Nonces remembered (each for 2 * MAX_SKEW): an honest CLI sends two requests
# a check, so a full cache means someone with the key is flooding; the node
# then refuses new requests rather than forgetting nonces it must remember.
MAX_NONCES = 4096
# The key the CLI makes: 32 random bytes. Shorter keys are refused.
KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096


class AuthError(CqkdError):
    """A sealed line that does not open: wrong key, stale, replayed or malformed."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def read_key(path: str) -> bytes:
    """The key file's bytes; a CqkdError naming the file when it is missing or too short."""
    try:
        with open(path, "rb") as handle:
            key = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise CqkdError(f"cannot read the control key file {path}: {exc.strerror or exc}") from None
    if not KEY_BYTES <= len(key) <= MAX_KEY_FILE_BYTES:
        raise CqkdError(
            f"the control key file {path} holds {len(key)} bytes; expected "
            f"{KEY_BYTES} to {MAX_KEY_FILE_BYTES}"
        )
    return key


def _mac(key: bytes, *parts: bytes) -> str:
    return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()


def _split(line: bytes) -> tuple[bytes, bytes]:
    line = line.rstrip(b"\n")
    if len(line) < MAC_HEX + 2 or line[MAC_HEX : MAC_HEX + 1] != b" ":
        raise AuthError("not a sealed line")
    return line[:MAC_HEX], line[MAC_HEX + 1 :]


def seal_request(
    key: bytes, request: dict[str, Any], now: float | None = None, nonce: str | None = None
) -> tuple[bytes, str]:
    """(line to send, its nonce): ``request`` with ``ts`` and ``nonce`` added, sealed."""
    nonce = nonce or os.urandom(16).hex()
    body = json.dumps(
        {**request, "ts": time.time() if now is None else now, "nonce": nonce}
    ).encode()
    return _mac(key, REQUEST_PREFIX, body).encode() + b" " + body + b"\n", nonce


def seal_reply(key: bytes, nonce: str, reply: bytes) -> bytes:
    """The node's reply line (JSON bytes, no newline) sealed over the request's nonce."""
    return _mac(key, REPLY_PREFIX, nonce.encode(), b"\x00", reply).encode() + b" " + reply + b"\n"


def open_reply(key: bytes, nonce: str, line: bytes) -> dict[str, Any]:
    """The reply's JSON object, or AuthError when it is not the node's answer to ``nonce``."""
    mac, body = _split(line)
    expected = _mac(key, REPLY_PREFIX, nonce.encode(), b"\x00", body).encode()
    if not hmac.compare_digest(mac, expected):
        raise AuthError("the reply is not sealed with this stack's key for this request")
    return _json_object(body, "reply")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """An authenticated body as the JSON object it must be."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError(f"the sealed {what} is not JSON") from None
    if not isinstance(data, dict):
        raise AuthError(f"the sealed {what} is not a JSON object")
    return data


class RequestGate:
    """The node's side: opens sealed requests, refusing stale and replayed ones.

    Nonces are remembered until their request could no longer pass the
    timestamp check (``2 * MAX_SKEW``), at most :data:`MAX_NONCES`; they are
    recorded only after the MAC checks out, so only a holder of the key can
    fill the cache, and a full cache refuses rather than forgets.
    """

    __slots__ = ("key", "max_nonces", "seen", "skew")

    def __init__(self, key: bytes, skew: float = MAX_SKEW, max_nonces: int = MAX_NONCES) -> None:
        self.key = key
        self.skew = skew
        self.max_nonces = max_nonces
        # nonce -> monotonic time it may be forgotten; insertion order is expiry order.
        self.seen: dict[str, float] = {}

    def open(self, line: bytes, now: float | None = None) -> tuple[bytes, str]:
        """(the request's JSON bytes, its nonce), or AuthError."""
        mac, body = _split(line)
        if not hmac.compare_digest(mac, _mac(self.key, REQUEST_PREFIX, body).encode()):
            raise AuthError("bad MAC")
        data = _json_object(body, "request")
        stamp, nonce = data.get("ts"), data.get("nonce")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
            raise AuthError("no timestamp")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
            raise AuthError("no nonce")
        wall = time.time() if now is None else now
        # Written so that NaN (which JSON parsing accepts) fails it too.
        if not abs(wall - stamp) <= self.skew:
            raise AuthError(f"timestamp {wall - stamp:+.0f} s off")
        clock = time.monotonic()
        while self.seen and next(iter(self.seen.values())) <= clock:
            del self.seen[next(iter(self.seen))]
        if nonce in self.seen:
            raise AuthError("replayed nonce")
        if len(self.seen) >= self.max_nonces:
            raise AuthError("too many requests in the replay window")
        self.seen[nonce] = clock + 2 * self.skew
        return body, nonce
