"""Get a Docker engine with an active swarm on this machine, idempotently.

CI machines start with no engine at all, and processes end when a session
stops, while developer machines keep the engine's state (and its swarm) in
/var/lib/docker across restarts. Every function here therefore looks at the
real state first and only acts on what is missing, so a second run changes
nothing and returns quickly; what it did is reported in ``EngineStatus.done``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests

from ..core.errors import CqkdError
from ..core.files import write_atomically
from ..core.process import Say, run, say, tail

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


# What only the end-to-end tests use: a private registry for ``--registry``,
# the tool that makes its certificate, and docker-compose for the compose target.
TEST_COMMANDS = {
    "docker-registry": "docker-registry",
    "openssl": "openssl",
    # The compose target's tests run the file with Debian's docker-compose
    # (1.29.2, system Python): pip would put it in the project's environment
    # and downgrade the libraries the project needs there.
    "docker-compose": "docker-compose",
}


def missing_packages(commands: dict[str, str] | None = None) -> list[str]:
    """Debian packages whose commands this machine lacks."""
    wanted = REQUIRED_COMMANDS if commands is None else commands
    return sorted({pkg for cmd, pkg in wanted.items() if _which(cmd) is None})


def ensure_installed(
    progress: Say | None = None, commands: dict[str, str] | None = None
) -> EngineStatus:
    """Install the engine and the tools the image builder needs, if any are missing.

    Debian's own ``docker.io`` is used because it needs no extra repository or
    key, which a fresh CI machine would have to fetch from a registry-like
    host; its API (1.41) is all the toolkit uses. Recommended packages are
    kept: on hosts with AppArmor enabled, dockerd cannot start containers
    without ``apparmor`` (a recommendation of docker.io). Where systemd runs
    the machine, the docker.service drop-in is written first (see
    :func:`ensure_docker_unit`).
    """
    status = EngineStatus()
    packages = missing_packages(commands)
    if not packages:
        return status
    _require_root(f"installing {', '.join(packages)}")
    if shutil.which("apt-get") is None:
        raise CqkdError(
            f"missing {', '.join(packages)} and no apt-get to install them: "
            "install Docker (dockerd), iptables, debootstrap and iproute2 yourself"
        )
    if "docker.io" in packages and systemd_is_init() and write_dropin():
        # Before the package: its postinst starts docker.service, which then
        # has the variable from its first start and needs no restart.
        say(progress, f"wrote {DROPIN_PATH} ({PREFER_OFFLINE_ENV}=1 for {DOCKER_UNIT})")
        status.done.append(f"wrote {DROPIN_PATH}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(progress, "updating the apt package lists…")
    run(["apt-get", "update"], "apt-get update", env=env)
    say(progress, f"installing {' '.join(packages)} (apt-get)…")
    run(["apt-get", "install", "-y", *packages], "apt-get install", env=env)
    still = missing_packages(commands)
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
    progress: Say | None = None,
    timeout: float = 60,
    log_path: Path = DOCKERD_LOG,
    *,
    restart_engine: bool = False,
) -> EngineStatus:
    """Get dockerd running with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``; wait until it answers.

    Where systemd runs the machine and knows docker.service (what apt's
    docker.io installs), systemd runs the daemon, with the variable from a
    drop-in, at every boot: see :func:`ensure_docker_unit`; ``restart_engine``
    lets it restart a daemon whose restart would stop containers for good.
    Elsewhere (containers, CI machines whose PID 1 is not systemd) setup
    starts dockerd itself, and nothing starts it again after a reboot: that
    is said as a warning when it happens.
    """
    if docker_unit_managed():
        status = ensure_docker_unit(progress, allow_restart=restart_engine)
        hint = f"; see `systemctl status {DOCKER_UNIT}` and `journalctl -u {DOCKER_UNIT}`"
        _wait_for_daemon(timeout, proc=None, log_path=None, log_offset=0, hint=hint)
        managed = True
    else:
        status = _ensure_detached(progress, timeout, log_path)
        managed = False

    with _client() as client:
        version = client.version()
    status.server_version = str(version.get("Version", ""))
    status.api_version = str(version.get("ApiVersion", ""))

    pids = dockerd_pids()
    if pids:
        status.dockerd_pid = pids[0]
        status.prefer_offline = _prefer_offline_of(pids[0])
    if any(PREFER_OFFLINE_ENV in w for w in status.warnings):
        return status  # the unit step already said what is wrong and what to do
    if status.prefer_offline is False:
        fix = (
            f"run `cqkd-stack setup --restart-engine` (or `systemctl restart {DOCKER_UNIT}`)"
            if managed
            else "stop it, then run setup again"
        )
        status.warnings.append(
            f"dockerd (pid {pids[0]}) runs without {PREFER_OFFLINE_ENV}=1: without a "
            f"registry, swarm tasks will stall retrying image pulls. To restart it with "
            f"that variable set, {fix}; or deploy with `--resolve-image never`"
        )
    elif status.prefer_offline is None:
        status.warnings.append(
            f"cannot read dockerd's environment to check {PREFER_OFFLINE_ENV}=1 "
            "(is the engine on another host or in another PID namespace?)"
        )
    return status


def _ensure_detached(progress: Say | None, timeout: float, log_path: Path) -> EngineStatus:
    """Start dockerd ourselves if the API does not answer (no systemd to ask).

    The daemon is started in its own session with stdin from /dev/null and its
    output in a log file: a daemon that inherits a CI step's stdout keeps the
    pipe open and the step never finishes. A daemon that is already running is
    left alone, even one started without ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE``
    (restarting it would stop every running task); that case is a warning.
    """
    status = EngineStatus()
    if daemon_answers():
        return status
    pids = dockerd_pids()
    answered = False
    if pids:
        # A daemon that is still starting up (or restarting after a
        # crash) must not get a twin fighting over /var/lib/docker.
        say(progress, f"waiting for the running dockerd (pid {pids[0]}) to answer…")
        answered = wait_for_existing(pids, timeout)
    if not answered:
        _start_dockerd(progress, timeout, log_path)
        status.log_path = log_path
        status.done.append(f"started dockerd (log: {log_path})")
        status.warnings.append(
            f"dockerd was started by setup itself ({_why_not_systemd()}): nothing starts "
            "it again after a reboot; run `cqkd-stack setup` again after one (the "
            "swarm's state in /var/lib/docker is kept)"
        )
    return status


def _why_not_systemd() -> str:
    if systemd_is_init():
        return f"systemd runs this machine but has no {DOCKER_UNIT}"
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "systemd does not run this machine"
    return f"PID 1 is {init!r}, not systemd"


def _start_dockerd(progress: Say | None, timeout: float, log_path: Path) -> None:
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
    hint: str = "",
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
            where = f"; see {log_path}:\n{_log_since(log_path, log_offset)}" if log_path else hint
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


# --- systemd -----------------------------------------------------------------
# Where systemd runs the machine, the engine is docker.service's: setup only
# adds the variable swarm needs (a drop-in, so the package's unit file stays
# untouched and upgrades keep it) and makes sure the unit is enabled.

DOCKER_UNIT = "docker.service"
DROPIN_PATH = Path("/etc/systemd/system/docker.service.d/cqkd-stack.conf")
# Exists only while systemd is PID 1: the test sd_booted(3) makes.
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
SWARM_TASK_LABEL = "com.docker.swarm.task.id"
# Restart policies under which a daemon restart brings a container back.
_RESTARTED_BY_ENGINE = ("always", "unless-stopped")
_STOP_TIMEOUT = 120.0


def dropin_text() -> str:
    """The drop-in's content: dockerd gets the variable, nothing else changes."""
    return (
        "# Written by cqkd-stack setup. Without a registry, swarm tasks stall retrying\n"
        "# image pulls unless dockerd prefers the local image. To undo: remove this\n"
        "# file, then `systemctl daemon-reload` and `systemctl restart docker`.\n"
        "[Service]\n"
        f"Environment={PREFER_OFFLINE_ENV}=1\n"
    )


def write_dropin(path: Path = DROPIN_PATH) -> bool:
    """Write the drop-in unless it already says the same; True when it changed.

    Written whole or not at all, so systemd never reads half of it; a link
    (a drop-in managed elsewhere) stays a link, an existing file keeps its mode.
    """
    text = dropin_text()
    with suppress(OSError):
        if path.read_text() == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text, new_mode=0o644)
    return True


def systemd_is_init(run_dir: Path = SYSTEMD_RUN_DIR) -> bool:
    """True when systemd runs this machine (and systemctl is there to ask it)."""
    return run_dir.is_dir() and _which("systemctl") is not None


def docker_unit_managed() -> bool:
    """True when systemd runs this machine and knows docker.service."""
    if not systemd_is_init():
        return False
    load = _unit_properties("LoadState").get("LoadState", "")
    if load == "masked":
        raise CqkdError(
            f"{DOCKER_UNIT} is masked, so systemd will not run the engine: "
            f"`systemctl unmask {DOCKER_UNIT}`, then run setup again"
        )
    return load == "loaded"


@dataclass(frozen=True)
class UnitState:
    """What systemd and /proc say about docker.service, read once per run."""

    active_state: str  # "active", "inactive", "failed", "activating", ...
    unit_file_state: str  # "enabled", "disabled", "static", ...
    main_pid: int  # 0 when no daemon runs under the unit
    need_reload: bool  # unit files changed on disk since systemd read them
    dropin_current: bool  # the drop-in exists with today's content
    # Whether the unit's running daemon has the variable; None: cannot tell.
    daemon_has_env: bool | None
    # A dockerd running outside the unit (setup started it before systemd did).
    stray_pid: int | None = None

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "activating", "reloading")


@dataclass
class UnitPlan:
    """What to do to docker.service; decided by :func:`plan_docker_unit` alone."""

    write_dropin: bool = False
    daemon_reload: bool = False
    enable: bool = False
    start: bool = False
    restart: str = ""  # why the daemon is restarted under the unit; "" when it is not
    stop_stray: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def acts(self) -> bool:
        """False when the unit is left exactly as it is."""
        return bool(
            self.write_dropin
            or self.daemon_reload
            or self.enable
            or self.start
            or self.restart
            or self.stop_stray is not None
        )


def restart_reason(state: UnitState) -> str:
    """Why the daemon must be (re)started under the unit to get the variable; "" if not.

    Only a running daemon without the variable is a reason (or, when its
    environment cannot be read, a drop-in that just changed): a restart
    stops every container, so a changed comment in the drop-in is not one.
    """
    if state.running:
        if state.daemon_has_env is False:
            return f"its dockerd (pid {state.main_pid}) runs without {PREFER_OFFLINE_ENV}=1"
        if state.daemon_has_env is None and not state.dropin_current:
            return "the drop-in changed and the running dockerd's environment cannot be read"
        return ""
    if state.stray_pid is not None:
        return (
            f"dockerd (pid {state.stray_pid}) runs outside {DOCKER_UNIT}, started by an "
            "earlier setup, and would not come back after a reboot"
        )
    return ""


def plan_docker_unit(state: UnitState, lost: list[str], allow_restart: bool) -> UnitPlan:
    """Decide what makes docker.service run dockerd with the variable, now and at boot.

    A daemon restart stops every running container. Swarm tasks come back
    (swarm starts them again) and so do containers whose restart policy is
    always or unless-stopped; ``lost`` names the others. If there are any, the
    restart is left to the operator (``allow_restart``, i.e. setup
    --restart-engine): the drop-in is written anyway, so the next restart,
    or boot, applies it.
    """
    plan = UnitPlan(write_dropin=not state.dropin_current)
    plan.daemon_reload = plan.write_dropin or state.need_reload
    plan.enable = state.unit_file_state in ("disabled", "enabled-runtime")
    reason = restart_reason(state)
    if reason and lost and not allow_restart:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        plan.warnings.append(
            f"{DOCKER_UNIT} needs a restart to give dockerd {PREFER_OFFLINE_ENV}=1 "
            f"({reason}), but that would stop {len(lost)} running container(s) for good: "
            f"{shown}. Left running; the drop-in is in place, so the next restart or "
            "boot applies it. To restart now: `cqkd-stack setup --restart-engine` (swarm "
            "tasks and containers with a restart policy come back by themselves)"
        )
        return plan
    if state.running:
        plan.restart = reason
    else:
        plan.start = True
        plan.stop_stray = state.stray_pid
        plan.restart = reason
    return plan


def read_unit_state(dropin: Path = DROPIN_PATH) -> UnitState:
    """docker.service as systemd sees it, plus our drop-in and the daemon's environment."""
    props = _unit_properties("ActiveState", "UnitFileState", "MainPID", "NeedDaemonReload")
    main_pid = int(props.get("MainPID") or 0)
    try:
        dropin_current = dropin.read_text() == dropin_text()
    except OSError:
        dropin_current = False
    active = props.get("ActiveState", "")
    state = UnitState(
        active_state=active,
        unit_file_state=props.get("UnitFileState", ""),
        main_pid=main_pid,
        need_reload=props.get("NeedDaemonReload", "") == "yes",
        dropin_current=dropin_current,
        daemon_has_env=_prefer_offline_of(main_pid) if main_pid else None,
    )
    if not state.running:
        strays = [pid for pid in dockerd_pids() if pid != main_pid]
        state = dataclasses.replace(state, stray_pid=strays[0] if strays else None)
    return state


def parse_properties(text: str) -> dict[str, str]:
    """``systemctl show``'s ``Key=value`` lines as a dict."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _unit_properties(*names: str) -> dict[str, str]:
    out = run(
        ["systemctl", "show", DOCKER_UNIT, "-p", ",".join(names)],
        f"systemctl show {DOCKER_UNIT}",
    ).stdout
    return parse_properties(out)


def _systemctl(*args: str) -> None:
    run(["systemctl", *args], f"systemctl {' '.join(args)}")


@dataclass(frozen=True)
class RunningContainer:
    """What decides whether a running container survives a daemon restart."""

    name: str
    swarm_task: bool
    restart_policy: str  # "", "no", "on-failure", "always", "unless-stopped"


def lost_on_restart(containers: Iterable[RunningContainer]) -> list[str]:
    """Names of the containers a daemon restart would stop for good."""
    return sorted(
        c.name
        for c in containers
        if not c.swarm_task and c.restart_policy not in _RESTARTED_BY_ENGINE
    )


def containers_lost_on_restart() -> list[str]:
    """:func:`lost_on_restart` for what the engine runs now.

    One list call; only containers that are not swarm tasks are inspected
    (the list does not carry restart policies). An engine that cannot be asked
    counts as one that runs something worth keeping.
    """
    try:
        with _client() as client:
            running = []
            for row in client.api.containers(filters={"status": "running"}):
                name = (row.get("Names") or [row["Id"][:12]])[0].lstrip("/")
                task = SWARM_TASK_LABEL in (row.get("Labels") or {})
                policy = ""
                if not task:
                    info = client.api.inspect_container(row["Id"])
                    policy = str(info["HostConfig"]["RestartPolicy"].get("Name", ""))
                running.append(RunningContainer(name, task, policy))
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        return [f"(cannot list the running containers: {exc})"]
    return lost_on_restart(running)


def ensure_docker_unit(
    progress: Say | None = None,
    *,
    allow_restart: bool = False,
    lost: Callable[[], list[str]] = containers_lost_on_restart,
    dropin: Path = DROPIN_PATH,
) -> EngineStatus:
    """Make docker.service run dockerd with the variable, now and after every boot.

    Writes the drop-in and reloads systemd if needed, enables the unit, starts
    it, and restarts a running daemon only when it lacks the variable (saying
    so first). ``lost`` is asked only when a restart is due. A second run does
    nothing. Does not wait for the engine to answer: the caller does.
    """
    state = read_unit_state(dropin)
    names = lost() if restart_reason(state) and not allow_restart else []
    plan = plan_docker_unit(state, names, allow_restart)
    status = EngineStatus(warnings=list(plan.warnings))
    if plan.acts:
        _require_root(f"configuring {DOCKER_UNIT}")
        status.done = _apply(plan, state.running, progress, dropin)
    return status


def _apply(plan: UnitPlan, running: bool, progress: Say | None, dropin: Path) -> list[str]:
    """Carry out a plan, saying each step before it; what was done."""
    done = []
    if plan.write_dropin:
        say(progress, f"writing {dropin} ({PREFER_OFFLINE_ENV}=1 for {DOCKER_UNIT})…")
        write_dropin(dropin)
        done.append(f"wrote {dropin}")
    if plan.daemon_reload:
        _systemctl("daemon-reload")
    if plan.enable:
        say(progress, f"enabling {DOCKER_UNIT}, so the engine starts at boot…")
        _systemctl("enable", DOCKER_UNIT)
        done.append(f"enabled {DOCKER_UNIT}")
    if plan.stop_stray is not None:
        say(progress, f"stopping dockerd (pid {plan.stop_stray}): {plan.restart}…")
        _stop(plan.stop_stray)
        done.append(f"stopped dockerd (pid {plan.stop_stray}) started outside systemd")
        # It removed the socket file docker.socket listens on; this makes a new one.
        run(["systemctl", "restart", "docker.socket"], "systemctl restart", check=False)
    if plan.restart and running:
        say(
            progress,
            f"restarting {DOCKER_UNIT}: {plan.restart}. Running containers stop; swarm "
            "tasks and containers with a restart policy come back…",
        )
        _systemctl("restart", DOCKER_UNIT)
        done.append(f"restarted {DOCKER_UNIT} ({plan.restart})")
    elif plan.start:
        say(progress, f"starting {DOCKER_UNIT}…")
        _systemctl("start", DOCKER_UNIT)
        done.append(f"started {DOCKER_UNIT}")
    return done


def _stop(pid: int, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM ``pid`` and wait until it is gone (dockerd stops its containers first)."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise CqkdError(f"dockerd (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(_POLL_INTERVAL)


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


def ensure_swarm(progress: Say | None = None) -> EngineStatus:
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


def ensure_host_settings(progress: Say | None = None) -> EngineStatus:
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
    progress: Say | None = None,
    timeout: float = 60,
    log_path: Path = DOCKERD_LOG,
) -> EngineStatus:
    """Installed, running, swarm active, host tuned: everything ``setup`` needs of the engine."""
    status = ensure_installed(progress)
    status.update(ensure_running(progress, timeout=timeout, log_path=log_path))
    status.update(ensure_swarm(progress))
    status.update(ensure_host_settings(progress))
    return status
