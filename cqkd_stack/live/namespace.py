"""A UDP socket inside a running container's network namespace, made by this process.

An overlay's addresses are not reachable from the host, so the probe used
to run in a container of its own, started beside a task of the stack: at
1003 tasks, creating and starting it, then ``docker exec`` of a fresh
Python that imports asyncio and rpcudp, cost more than the round itself.
A socket is bound to the network namespace it was created in, for its
whole life, whatever namespace its process is in afterwards; so a thread
that enters the task's namespace (``setns``), creates the socket and ends
gives this process a socket on the overlay, as the task sees it. It needs
CAP_SYS_ADMIN (root, as the Docker socket does in practice); without it
the caller falls back to the probe container.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

# <sched.h>: the namespace type setns(2) is asked to enter.
CLONE_NEWNET = 0x40000000


def is_container_process(pid: int, container_id: str, proc: str = "/proc") -> bool:
    """Is ``pid``, on this machine, a process of the container ``container_id``?

    An engine reports a task's PID as its own kernel sees it. A remote
    engine's PID names some other process here, and so does a nested
    engine's (a Docker-in-Docker node's PIDs are its own PID namespace's):
    seen on the 3-node cluster, where the probe entered such a process's
    namespace and every task of 1103 looked silent. The container's id in
    the process's cgroup path is what ties the two together.
    """
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as file:
            text = file.read(65536)
    except OSError:
        return False
    return len(container_id) == 64 and container_id in text


class Namespace:
    """The network namespace of one process, held open so its identity cannot change.

    Opening ``/proc/PID/ns/net`` once pins the namespace itself: if the
    process ends and its PID is reused, this still names the first one
    (whose interfaces go with its container: sends then fail, and the
    caller's check that the container runs moves on).
    """

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def udp_socket(self) -> socket.socket:
        """A new UDP socket in this namespace; OSError (EPERM without privilege) if not."""
        made: list[socket.socket] = []
        failed: list[OSError] = []

        def inside() -> None:
            # Only this short-lived thread changes namespace: setns(2) acts
            # on the calling thread, and the thread ends right after.
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self.fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                failed.append(OSError(code, f"setns: {os.strerror(code)}"))
                return
            try:
                made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            except OSError as exc:
                failed.append(exc)

        thread = threading.Thread(target=inside, name="cqkd-netns", daemon=True)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return made[0]
