"""Get a Docker engine with an active swarm on this machine, idempotently.

CI machines start with no engine at all, and processes end when a session
stops, while developer machines keep the engine's state (and its swarm) in
/var/lib/docker across restarts. Every function here therefore looks at the
real state first and only acts on what is missing, so a second run changes
nothing and returns quickly; what it did is reported in ``EngineStatus.done``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests

from .errors import CqkdError
from .process import Progress, run, say, tail

# Command -> Debian package that provides it. ``images`` needs debootstrap and
# ``ensure_swarm`` needs ``ip``, so they come with the engine.
REQUIRED_COMMANDS = {
    "dockerd": "docker.io",
    "iptables": "iptables",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
}
DOCKERD_LOG = Path("/var/log/cqkd-dockerd.log")

# Without a registry, swarm agents retry pulling the service image for every
# task even when it is present locally, and 1000 tasks stall in "Preparing".
# dockerd reads this variable from its own environment (the value must be "1").
PREFER_OFFLINE_ENV = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"

_POLL_INTERVAL = 0.2


@dataclass
class EngineStatus:
    """What the engine looks like now, and what this run changed to get there."""

    server_version: str = ""
    api_version: str = ""
    dockerd_pid: int | None = None
    # None: could not tell (the daemon runs in another PID namespace or host).
    prefer_offline: bool | None = None
    swarm_node_id: str = ""
    advertise_addr: str = ""
    log_path: Path | None = None
    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def update(self, other: EngineStatus) -> EngineStatus:
        """Fold a later step's findings into this one (later, non-empty values win)."""
        for name in ("server_version", "api_version", "swarm_node_id", "advertise_addr"):
            if getattr(other, name):
                setattr(self, name, getattr(other, name))
        for name in ("dockerd_pid", "prefer_offline", "log_path"):
            if getattr(other, name) is not None:
                setattr(self, name, getattr(other, name))
        self.done.extend(other.done)
        self.warnings.extend(other.warnings)
        return self


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CqkdError(f"{what} needs root (run it with sudo or as root)")


def _which(command: str) -> str | None:
    # Root's PATH normally has the sbin directories, but sudo and CI runners
    # do not always keep it; dockerd and debootstrap live there.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(command, path=path)


# --- install -----------------------------------------------------------------


def missing_packages() -> list[str]:
    """Debian packages whose commands this machine lacks."""
    return sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if _which(cmd) is None})


def ensure_installed(progress: Progress | None = None) -> EngineStatus:
    """Install the engine and the tools the image builder needs, if any are missing.

    Debian's own ``docker.io`` is used because it needs no extra repository or
    key, which a fresh CI machine would have to fetch from a registry-like
    host; its API (1.41) is all the toolkit uses. Recommended packages are
    kept: on hosts with AppArmor enabled, dockerd cannot start containers
    without ``apparmor`` (a recommendation of docker.io).
    """
    status = EngineStatus()
    packages = missing_packages()
    if not packages:
        return status
    _require_root(f"installing {', '.join(packages)}")
    if shutil.which("apt-get") is None:
        raise CqkdError(
            f"missing {', '.join(packages)} and no apt-get to install them: "
            "install Docker (dockerd), iptables, debootstrap and iproute2 yourself"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(progress, "updating the apt package lists…")
    run(["apt-get", "update"], "apt-get update", env=env)
    say(progress, f"installing {' '.join(packages)} (apt-get)…")
    run(["apt-get", "install", "-y", *packages], "apt-get install", env=env)
    still = missing_packages()
    if still:
        raise CqkdError(f"apt-get succeeded but these are still missing: {', '.join(still)}")
    status.done.append(f"installed {' '.join(packages)}")
    return status


# --- daemon ------------------------------------------------------------------


@contextmanager
def _client(timeout: float = 10) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def daemon_answers(timeout: float = 3) -> bool:
    """True when the engine's API answers a ping (the real "is it running")."""
    try:
        with _client(timeout) as client:
            return bool(client.ping())
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        return False


def dockerd_pids() -> list[int]:
    """Process ids of every visible ``dockerd``, read from /proc (no ps needed)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            if (entry / "comm").read_text().strip() == "dockerd":
                pids.append(int(entry.name))
    return sorted(pids)


def _prefer_offline_of(pid: int) -> bool | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return f"{PREFER_OFFLINE_ENV}=1".encode() in raw.split(b"\0")


def ensure_running(
    progress: Progress | None = None,
    timeout: float = 60,
    log_path: Path = DOCKERD_LOG,
) -> EngineStatus:
    """Start dockerd if the API does not answer, then wait until it does.

    The daemon is started in its own session with stdin from /dev/null and its
    output in a log file: a daemon that inherits a CI step's stdout keeps the
    pipe open and the step never finishes. A daemon that is already running is
    left alone, even one started without ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE``
    (restarting it would stop every running task); that case is a warning.
    """
    status = EngineStatus()
    if not daemon_answers():
        pids = dockerd_pids()
        if pids:
            # A daemon that is still starting up (or restarting after a
            # crash) must not get a twin fighting over /var/lib/docker.
            say(progress, f"waiting for the running dockerd (pid {pids[0]}) to answer…")
            answered = wait_for_existing(pids, timeout)
        if not pids or not answered:
            _start_dockerd(progress, timeout, log_path)
            status.log_path = log_path
            status.done.append(f"started dockerd (log: {log_path})")

    with _client() as client:
        version = client.version()
    status.server_version = str(version.get("Version", ""))
    status.api_version = str(version.get("ApiVersion", ""))

    pids = dockerd_pids()
    if pids:
        status.dockerd_pid = pids[0]
        status.prefer_offline = _prefer_offline_of(pids[0])
    if status.prefer_offline is False:
        status.warnings.append(
            f"dockerd (pid {pids[0]}) runs without {PREFER_OFFLINE_ENV}=1: without a "
            "registry, swarm tasks will stall retrying image pulls. Restart it with "
            f"that variable set (stop it, then run setup again), or deploy with "
            "`--resolve-image never`"
        )
    elif status.prefer_offline is None:
        status.warnings.append(
            f"cannot read dockerd's environment to check {PREFER_OFFLINE_ENV}=1 "
            "(is the engine on another host or in another PID namespace?)"
        )
    return status


def _start_dockerd(progress: Progress | None, timeout: float, log_path: Path) -> None:
    _require_root("starting dockerd")
    dockerd = _which("dockerd")
    if dockerd is None:
        raise CqkdError("dockerd is not installed (run the install step first)")
    say(progress, f"starting dockerd (log: {log_path})…")
    env = {**os.environ, PREFER_OFFLINE_ENV: "1"}
    # A DOCKER_HOST meant for clients would be taken by nobody here, but a
    # leftover one would make our own pings look somewhere else.
    env.pop("DOCKER_HOST", None)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            offset = log.tell()
            proc = subprocess.Popen(
                [dockerd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # setsid: no controlling terminal, own group
                close_fds=True,
            )
    except OSError as exc:
        raise CqkdError(f"cannot start dockerd: {exc}") from exc
    _STARTED.append(proc)
    _wait_for_daemon(timeout, proc=proc, log_path=log_path, log_offset=offset)


# The Popen objects of daemons we started. Kept so they are never garbage
# collected while this process lives (that would warn "still running"); the
# daemon outlives us on purpose.
_STARTED: list[subprocess.Popen[bytes]] = []


def wait_for_existing(pids: list[int], timeout: float) -> bool:
    """True once the engine answers; False as soon as every one of ``pids`` is gone.

    A dockerd seen while it shuts down (seen: a second after `kill`) will
    never answer; waiting out the whole timeout for it, as setup once did
    for 300 s, helps nobody. Gone means exited, or a zombie nobody reaped.
    """
    deadline = time.monotonic() + timeout
    while True:
        if daemon_answers(timeout=2):
            return True
        if not any(_alive(pid) for pid in pids):
            return False
        if time.monotonic() >= deadline:
            raise CqkdError(f"the Docker engine did not answer within {timeout:g} s")
        time.sleep(_POLL_INTERVAL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for_daemon(
    timeout: float,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path | None,
    log_offset: int,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if daemon_answers(timeout=2):
            return
        if proc is not None and proc.poll() is not None:
            raise CqkdError(
                f"dockerd exited with status {proc.returncode} while starting:\n"
                f"{_log_since(log_path, log_offset)}"
            )
        if time.monotonic() >= deadline:
            where = f"; see {log_path}:\n{_log_since(log_path, log_offset)}" if log_path else ""
            if os.environ.get("DOCKER_HOST"):
                where = f" at DOCKER_HOST={os.environ['DOCKER_HOST']}{where}"
            raise CqkdError(f"the Docker engine did not answer within {timeout:g} s{where}")
        time.sleep(_POLL_INTERVAL)


def _log_since(log_path: Path | None, offset: int) -> str:
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            return tail(log.read().decode(errors="replace"))
    except OSError:
        return ""


# --- swarm -------------------------------------------------------------------


def advertise_address() -> str:
    """The address other nodes reach this one at: the source of the default route.

    Read every time rather than configured, because CI machines and laptops get
    a different address on every boot.
    """
    ip = _which("ip")
    if ip is not None:
        out = _output([ip, "-4", "route", "get", "1"])
        words = out.split()
        if "src" in words and words.index("src") + 1 < len(words):
            return words[words.index("src") + 1]
        out = _output([ip, "-4", "-o", "addr", "show", "dev", "eth0"])
        words = out.split()
        if "inet" in words and words.index("inet") + 1 < len(words):
            return words[words.index("inet") + 1].split("/")[0]
    raise CqkdError(
        "cannot find this machine's address to advertise to the swarm "
        "(no default route with a source address and no eth0 address)"
    )


def _output(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def ensure_swarm(progress: Progress | None = None) -> EngineStatus:
    """Make this engine a swarm manager unless it already is one.

    An active swarm is kept as it is, leftovers included: its state survives
    daemon restarts, and re-initialising would throw away every node's
    membership. Only states a script cannot safely resolve are errors.
    """
    status = EngineStatus()
    try:
        with _client() as client:
            swarm = client.info().get("Swarm", {})
            state = swarm.get("LocalNodeState", "")
            if state == "inactive":
                addr = advertise_address()
                say(progress, f"initialising the swarm (advertise address {addr})…")
                node_id = client.swarm.init(advertise_addr=addr, listen_addr="0.0.0.0:2377")
                status.done.append(f"initialised a swarm advertising {addr}")
                swarm = client.info().get("Swarm", {})
                swarm.setdefault("NodeID", node_id)
                state = swarm.get("LocalNodeState", "")
    except docker.errors.APIError as exc:
        raise CqkdError(f"cannot initialise the swarm: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise CqkdError(f"the Docker engine does not answer: {exc}") from exc
    if state != "active":
        hint = {
            "locked": "unlock it with `docker swarm unlock`",
            "pending": "a join is in progress; wait, or `docker swarm leave --force`",
            "error": "see `docker info`; `docker swarm leave --force` resets it",
        }.get(state, "see `docker info`")
        raise CqkdError(f"this engine's swarm is {state or 'in an unknown state'}: {hint}")
    if not swarm.get("ControlAvailable", False):
        raise CqkdError(
            "this engine is a swarm worker, not a manager: stacks can only be "
            "deployed from a manager node"
        )
    status.swarm_node_id = str(swarm.get("NodeID", ""))
    status.advertise_addr = str(swarm.get("NodeAddr", ""))
    return status


def ensure_host_settings(progress: Progress | None = None) -> EngineStatus:
    """Raise the kernel settings large stacks need (see :mod:`.sysctls`); never fatal."""
    from . import sysctls

    status = EngineStatus()
    report = sysctls.ensure_minimums()
    for change in report.changed:
        say(progress, change)
    status.done.extend(report.changed)
    status.warnings.extend(report.warnings)
    return status


def ensure_engine(
    progress: Progress | None = None,
    timeout: float = 60,
    log_path: Path = DOCKERD_LOG,
) -> EngineStatus:
    """Installed, running, swarm active, host tuned: everything ``setup`` needs of the engine."""
    status = ensure_installed(progress)
    status.update(ensure_running(progress, timeout=timeout, log_path=log_path))
    status.update(ensure_swarm(progress))
    status.update(ensure_host_settings(progress))
    return status
