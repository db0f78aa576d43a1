"""The probe's RPCs when a round gives up on them (seen on the 3-node cluster, issue 21)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from cqkd_stack.node.probe import ProbeProtocol
from cqkd_stack.node.wire import PROBE_NODE_ID


def test_a_ping_given_up_on_times_out_later_without_an_error() -> None:
    """A round's deadline cancels the pings still out; rpcudp's timer fires afterwards.

    rpcudp then set a result on the cancelled future: asyncio logged
    "Exception in callback RPCProtocol._timeout ... InvalidStateError", all
    the stderr of a probe run that failed a 1503-task deploy's wait.
    """
    errors: list[dict[str, Any]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # receives, never answers
            protocol = ProbeProtocol(PROBE_NODE_ID, 0.2)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: protocol, local_addr=("127.0.0.1", 0)
            )
            try:
                ping = asyncio.ensure_future(protocol.ping(silent.getsockname(), PROBE_NODE_ID))
                await asyncio.sleep(0.05)
                ping.cancel()  # the round's deadline
                with contextlib.suppress(asyncio.CancelledError):
                    await ping
                await asyncio.sleep(0.4)  # the measure: rpcudp's timer fires meanwhile
            finally:
                transport.close()

    asyncio.run(run())
    assert errors == []
