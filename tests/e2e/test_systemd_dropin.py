"""A real systemd honours setup's docker.service drop-in, across a reboot.

The CI machine's PID 1 is not systemd, so the test boots one: a container of
a small debootstrapped image (systemd as PID 1, python3 and the Docker SDK
from the distribution), built like the base image and kept by a tag that
names its inputs, so only the first run pays for debootstrap. Inside it a
stand-in docker.service (a process called dockerd that only sleeps) plays
the engine apt would have started without the variable. The project's own
``engine.ensure_docker_unit`` runs inside, from this checkout (mounted
read-only), and the test reads what systemd and /proc say. A reboot is the
container stopped and started again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from cqkd_stack.host import engine, images

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VARIABLE = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1"
# Each package costs debootstrap time on every fresh CI machine: no
# systemd-sysv (the image starts systemd itself), python3 comes with the SDK.
PACKAGES = ("systemd", "python3-docker")
CMD = ("/lib/systemd/systemd",)
IMAGE_REPOSITORY = "cqkd-test-systemd"
# What the stand-in is: the command name dockerd (so engine.dockerd_pids and
# /proc/MAINPID/environ read it like the real one), and a unit like Debian's.
STANDIN_UNIT = """\
[Unit]
Description=stand-in for docker.service (cqkd-stack end-to-end test)

[Service]
ExecStart=/usr/local/bin/dockerd infinity

[Install]
WantedBy=multi-user.target
"""
BOOT_TIMEOUT = 60.0
DROPIN = str(engine.DROPIN_PATH)


def _need(condition: bool, why: str) -> None:
    """Skip on a laptop, fail on CI: there the setup provides all of it."""
    if not condition:
        # As conftest.on_ci (test modules here cannot import the conftest).
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def systemd_image(docker_client: docker.DockerClient) -> str:
    """The systemd image's tag; built only when no image carries it yet."""
    host = images.host_release()
    release = images.base_release(host)
    inputs = json.dumps([release.family, release.suite, PACKAGES, CMD])
    tag = f"{IMAGE_REPOSITORY}:{release.suite}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"
    with suppress(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
        return tag
    # A recipe change makes a new tag: the old images are of no more use.
    for old in docker_client.images.list(IMAGE_REPOSITORY):
        with suppress(docker.errors.APIError):
            docker_client.images.remove(old.id, force=True)
    _need(os.geteuid() == 0, "building the systemd test image with debootstrap needs root")
    mirror = images.host_mirror(release, host)
    images.build_rootfs_image(
        docker_client,
        tag,
        release,
        mirror,
        packages=PACKAGES,
        labels={"org.cqkd.test": "systemd"},
        cmd=CMD,
    )
    return tag


@pytest.fixture
def machine(docker_client: docker.DockerClient, systemd_image: str) -> Iterator[Container]:
    """A booted container with systemd as PID 1; removed afterwards."""
    container = docker_client.containers.run(
        systemd_image,
        name=f"cqkdtest_{uuid.uuid4().hex[:8]}",
        detach=True,
        environment={"container": "docker"},
        # systemd halts on SIGRTMIN+3; SIGTERM only makes it re-execute itself.
        stop_signal="SIGRTMIN+3",
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(REPO): {"bind": "/src", "mode": "ro"},
        },
        # What Docker-in-Docker nodes need here (--privileged fails on this
        # host); systemd needs the writable cgroup tree the same way.
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        device_cgroup_rules=["a *:* rwm"],
    )
    try:
        _wait_booted(container)
        yield container
    finally:
        with suppress(docker.errors.NotFound):
            container.remove(force=True)


def _sh(container: Container, command: str) -> str:
    code, out = container.exec_run(["sh", "-c", command])
    text = out.decode(errors="replace")
    assert code == 0, f"{command!r} exited {code}: {text}"
    return text.strip()


def _wait_booted(container: Container) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        container.reload()
        assert container.status == "running", container.logs(tail=30).decode(errors="replace")
        _, out = container.exec_run(["systemctl", "is-system-running"])
        state = out.decode(errors="replace").strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.3)
    raise AssertionError(f"systemd did not finish booting in {BOOT_TIMEOUT:g} s ({state!r})")


def _put(container: Container, path: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive("/", archive.getvalue())


def _ensure_unit(container: Container, lost: list[str]) -> dict:
    """Run the project's code path inside the machine; its EngineStatus as a dict."""
    script = (
        "import dataclasses, json\n"
        "from cqkd_stack.host import engine\n"
        "assert engine.systemd_is_init() and engine.docker_unit_managed()\n"
        f"status = engine.ensure_docker_unit(lost=lambda: {lost!r})\n"
        "print(json.dumps(dataclasses.asdict(status), default=str))\n"
    )
    code, out = container.exec_run(
        ["python3", "-c", script],
        environment={"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    text = out.decode(errors="replace")
    assert code == 0, text
    return json.loads(text.splitlines()[-1])


def _main_pid(container: Container) -> int:
    return int(_sh(container, "systemctl show docker.service -p MainPID --value"))


def _environ(container: Container, pid: int) -> list[str]:
    return _sh(container, f"tr '\\0' '\\n' < /proc/{pid}/environ").splitlines()


def test_systemd_runs_dockerd_with_the_variable_now_and_after_a_reboot(
    machine: Container,
) -> None:
    # The engine as apt leaves it when docker.io came before setup: running
    # without the variable. Here also not enabled, to see setup enable it.
    _sh(machine, "cp /bin/sleep /usr/local/bin/dockerd")
    _put(machine, "/etc/systemd/system/docker.service", STANDIN_UNIT)
    _sh(machine, "systemctl daemon-reload && systemctl start docker.service")
    first = _main_pid(machine)
    assert first > 0 and VARIABLE not in _environ(machine, first)
    assert _sh(machine, "systemctl is-enabled docker.service || true") == "disabled"

    # A container that would not come back: setup must not restart by itself.
    held = _ensure_unit(machine, lost=["db"])
    assert held["done"] == [
        f"wrote {DROPIN}",
        "enabled docker.service",
    ], held
    [warning] = held["warnings"]
    assert "db" in warning and "--restart-engine" in warning
    assert _main_pid(machine) == first, "restarted although a container would be lost"
    assert VARIABLE in _sh(machine, "systemctl show docker.service -p Environment --value")

    # Nothing would be lost: the daemon is restarted with the variable.
    applied = _ensure_unit(machine, lost=[])
    assert len(applied["done"]) == 1 and applied["done"][0].startswith(
        "restarted docker.service (its dockerd"
    ), applied
    second = _main_pid(machine)
    assert second != first
    assert VARIABLE in _environ(machine, second)
    assert _sh(machine, f"cat /proc/{second}/comm") == "dockerd"

    # Idempotent: the second run does nothing at all.
    again = _ensure_unit(machine, lost=[])
    assert again == {**again, "done": [], "warnings": []}, again
    assert _main_pid(machine) == second

    # Reboot: the unit comes back by itself, enabled, with the variable.
    machine.stop(timeout=20)
    machine.start()
    _wait_booted(machine)
    assert _sh(machine, "systemctl is-enabled docker.service") == "enabled"
    assert _sh(machine, "systemctl is-active docker.service") == "active"
    assert VARIABLE in _sh(machine, "systemctl show docker.service -p Environment --value")
    assert VARIABLE in _environ(machine, _main_pid(machine))
    assert _sh(machine, f"cat {DROPIN}").endswith(f"Environment={VARIABLE}")
