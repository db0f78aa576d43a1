"""dht-check from any manager: the stack gives Alice and Bob a shareable control
socket, and the check knows where it is and what job to run beside it.

Pure logic only; tests/e2e/test_stack.py runs the jobs on a real swarm.
"""

from __future__ import annotations

import pytest
import yaml

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.validate import validate_texts
from cqkd_stack.live.controlkey import wanted_control_key
from cqkd_stack.live.dhtcheck import (
    CONTROL_DIR,
    JOB_LABEL,
    MAX_SERVICE_NAME,
    NODECTL,
    Control,
    control_of,
    job_name,
    job_spec,
    last_json,
    node_address,
    nodectl_payload,
    request_path,
    socket_mount,
    unreachable,
)
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render

POLICY = load_policy()
CONTROL_MOUNT = {"type": "volume", "source": "control", "target": CONTROL_DIR}


def rendered(**options: object) -> dict:
    return yaml.safe_load(render(POLICY, RenderOptions(**options)))


@pytest.mark.parametrize("network", ["overlay", "host"])
def test_alice_and_bob_keep_their_socket_in_the_control_volume(network: str) -> None:
    doc = rendered(replicas=5, network=network)
    for name in ("alice", "bob"):
        service = doc["services"][name]
        assert service["volumes"] == [{"type": "tmpfs", "target": "/tmp"}, CONTROL_MOUNT], name
        socket = service["environment"]["CQKD_CONTROL_SOCKET"]
        assert socket == f"{CONTROL_DIR}/{name}-{{{{.Task.Slot}}}}.sock"
        # Least privilege stays: the volume is the only writable place beside /tmp.
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert doc["volumes"] == {"control": {}}


def test_workers_and_the_bootstrap_get_no_control_volume() -> None:
    doc = rendered(replicas=5)
    for name in ("bootstrap", "worker"):
        service = doc["services"][name]
        assert service["volumes"] == [{"type": "tmpfs", "target": "/tmp"}], name
        assert "CQKD_CONTROL_SOCKET" not in service["environment"], name


def test_a_worker_batch_declares_no_volume() -> None:
    doc = rendered(replicas=10, port_offset=100)
    assert "volumes" not in doc
    assert doc["services"]["worker"]["volumes"] == [{"type": "tmpfs", "target": "/tmp"}]


@pytest.mark.parametrize(
    "options",
    [{"replicas": 3}, {"replicas": 3, "network": "host"}, {"replicas": 3, "port_offset": 100}],
    ids=["overlay", "host", "batch"],
)
def test_the_validator_accepts_the_control_volume(options: dict) -> None:
    results = validate_texts([("r.yml", render(POLICY, RenderOptions(**options)))], POLICY)
    assert results.ok, results.problems


def _spec(env: list[str], mounts: list[dict] | None) -> dict:
    """A service spec as the Engine API returns it (what `docker stack deploy` made)."""
    container = {"Image": "cqkd-dht-node:0.1.0", "Env": env}
    if mounts is not None:
        container["Mounts"] = mounts
    return {"Name": "prod_alice", "TaskTemplate": {"ContainerSpec": container}}


TASK = {"Slot": 1, "NodeID": "node1", "Status": {"ContainerStatus": {"ContainerID": "c1"}}}
TMPFS = {"Type": "tmpfs", "Target": "/tmp"}
VOLUME = {
    "Type": "volume",
    "Source": "prod_control",
    "Target": CONTROL_DIR,
    "VolumeOptions": {"Labels": {"com.docker.stack.namespace": "prod"}},
}


def test_a_deployed_special_node_is_reached_through_its_volume() -> None:
    spec = _spec(["CQKD_CONTROL_SOCKET=/run/cqkd/alice-{{.Task.Slot}}.sock"], [TMPFS, VOLUME])
    control = control_of(spec, {**TASK, "Slot": 3})
    assert control.socket == "/run/cqkd/alice-3.sock"
    assert control.mount == VOLUME
    assert (control.service, control.node_id, control.container_id) == ("prod_alice", "node1", "c1")
    assert control.image == "cqkd-dht-node:0.1.0"


@pytest.mark.parametrize(
    ("env", "mounts"),
    [
        ([], [TMPFS]),  # an older stack: the default socket in /tmp
        (["CQKD_CONTROL_SOCKET=/tmp/c.sock"], [TMPFS, VOLUME]),  # a volume, but not the socket's
        (["CQKD_CONTROL_SOCKET=/run/cqkd/a.sock"], None),  # no mount at all
        (["CQKD_CONTROL_SOCKET=/run/cqkd/a.sock"], [{**VOLUME, "Type": "tmpfs"}]),
    ],
    ids=["default-socket", "other-volume", "no-mounts", "tmpfs-there"],
)
def test_a_socket_outside_any_shareable_mount_has_none(env: list[str], mounts: list) -> None:
    assert control_of(_spec(env, mounts), TASK).mount is None


def test_the_deepest_mount_holding_the_socket_wins() -> None:
    outer = {"Type": "bind", "Source": "/srv", "Target": "/run"}
    assert socket_mount([outer, VOLUME], "/run/cqkd/a.sock") == VOLUME
    assert socket_mount([VOLUME, outer], "/run/cqkd/a.sock") == VOLUME
    assert socket_mount([outer], "/run/cqkd/a.sock") == outer
    # A name that only starts like the mount's target is not inside it.
    assert socket_mount([VOLUME], "/run/cqkd2/a.sock") is None


def test_a_socket_template_other_than_the_slot_is_refused() -> None:
    spec = _spec(["CQKD_CONTROL_SOCKET=/run/cqkd/{{.Node.Hostname}}.sock"], [VOLUME])
    with pytest.raises(CqkdError, match="template other than"):
        control_of(spec, TASK)


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ('noise\n{"ok": true, "seconds": 0.1}\n', {"ok": True, "seconds": 0.1}),
        ('{"ok": true}\nTraceback (most recent call last):', {}),
        ("[1, 2]", {}),
        ("", {}),
    ],
)
def test_the_reply_is_the_last_json_line(text: str, reply: dict) -> None:
    assert last_json(text) == reply


def test_job_names_fit_swarm_and_name_their_purpose() -> None:
    name = job_name("prod", "alice")
    assert name.startswith("prod_dht-check-alice-")
    assert job_name("prod", "alice") != name
    assert len(job_name("s" * 80, "alice")) == MAX_SERVICE_NAME


def test_the_job_runs_nodectl_beside_the_task_as_locked_down_as_the_node() -> None:
    control = Control("prod_alice", "node1", "c1", "img:1", "/run/cqkd/alice-1.sock", VOLUME)
    spec = job_spec(control, ["set", "k", "v"])
    container = spec["ContainerSpec"]
    assert container["Command"] == [*NODECTL, "--socket", "/run/cqkd/alice-1.sock", "set", "k", "v"]
    assert container["Image"] == "img:1"
    assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
    assert container["Mounts"] == [{**VOLUME, "ReadOnly": True}]
    assert container["Healthcheck"]["Test"] == ["NONE"]
    assert spec["Placement"]["Constraints"] == ["node.id==node1"]
    assert spec["RestartPolicy"]["Condition"] == "none"
    assert spec["LogDriver"]["Name"] == "json-file"
    assert JOB_LABEL.startswith("org.cqkd.")


def test_an_unreachable_node_gets_what_to_add_to_the_stack() -> None:
    control = Control("prod_alice", "node2", "c1", "img:1", "/tmp/cqkd-control.sock", None)
    message = unreachable(control, "worker-2")
    assert "node worker-2" in message and "/tmp/cqkd-control.sock" in message
    assert "{type: volume, source: control, target: /run/cqkd}" in message
    assert "CQKD_CONTROL_SOCKET: /run/cqkd/<service>-{{.Task.Slot}}.sock" in message


def test_a_removed_job_stops_at_once() -> None:
    """Python as PID 1 ignores SIGTERM; an init in front and a short grace let it go."""
    control = Control("prod_alice", "node1", "c1", "img:1", "/run/cqkd/alice-1.sock", VOLUME)
    container = job_spec(control, ["get", "k"])["ContainerSpec"]
    assert container["Init"] is True
    assert container["StopGracePeriod"] <= 1_000_000_000


# ------------------------------------------------------------------ the sealed control port

NETWORK_ENV = [
    "CQKD_CONTROL_SOCKET=/run/cqkd/alice-{{.Task.Slot}}.sock",
    "CQKD_CONTROL_PORT=6100",
    "CQKD_CONTROL_KEY_FILE=/run/cqkd-control.key",
]
KEY_CONFIG = {
    "ConfigID": "cfg1",
    "ConfigName": "prod_control-key",
    "File": {"Name": "/run/cqkd-control.key", "UID": "10001", "GID": "10001", "Mode": 256},
}
# As a task lists a host-mode port: once per address family.
PORTS = {
    "Ports": [
        {"Protocol": "tcp", "TargetPort": 6100, "PublishedPort": 32768, "PublishMode": "host"},
        {"Protocol": "tcp", "TargetPort": 6100, "PublishedPort": 32768, "PublishMode": "host"},
    ]
}


def _network_task(ports: dict | None = PORTS) -> dict:
    status = {**TASK["Status"], **({"PortStatus": ports} if ports is not None else {})}
    return {**TASK, "Status": status}


def test_a_task_with_a_published_control_port_and_key_is_reached_over_the_network() -> None:
    spec = _spec(NETWORK_ENV, [TMPFS, VOLUME])
    spec["TaskTemplate"]["ContainerSpec"]["Configs"] = [KEY_CONFIG]
    control = control_of(spec, _network_task())
    assert (control.published_port, control.key_config) == (32768, "prod_control-key")
    assert request_path(control) == "network"
    # The job path stays there for a fallback.
    assert control.mount == VOLUME


@pytest.mark.parametrize(
    ("env", "configs", "ports"),
    [
        (NETWORK_ENV, [KEY_CONFIG], None),  # not published (yet), or an older engine
        (NETWORK_ENV, [], PORTS),  # no key mounted
        (NETWORK_ENV[:1], [KEY_CONFIG], PORTS),  # an older stack: no control port
        (NETWORK_ENV, [KEY_CONFIG], {"Ports": [{**PORTS["Ports"][0], "TargetPort": 6101}]}),
        (NETWORK_ENV, [KEY_CONFIG], {"Ports": [{**PORTS["Ports"][0], "PublishMode": "ingress"}]}),
    ],
    ids=["unpublished", "no-key", "older-stack", "other-port", "ingress"],
)
def test_without_port_and_key_the_job_path_is_used(env: list, configs: list, ports: dict) -> None:
    spec = _spec(env, [TMPFS, VOLUME])
    spec["TaskTemplate"]["ContainerSpec"]["Configs"] = configs
    assert request_path(control_of(spec, _network_task(ports))) == "job"


def test_a_node_is_reached_at_its_status_address_or_its_manager_address() -> None:
    assert node_address({"Status": {"Addr": "10.0.0.5"}}) == "10.0.0.5"
    manager = {"Status": {"Addr": "0.0.0.0"}, "ManagerStatus": {"Addr": "10.0.0.2:2377"}}
    assert node_address(manager) == "10.0.0.2"
    assert node_address({}) == ""


@pytest.mark.parametrize(
    ("args", "payload"),
    [
        (("set", "k", "v"), {"op": "set", "key": "k", "value": "v"}),
        (("get", "k"), {"op": "get", "key": "k"}),
        (("holds", "k"), {"op": "holds", "key": "k"}),
        (("status",), {"op": "status"}),
    ],
)
def test_nodectl_arguments_become_the_request_it_would_send(args: tuple, payload: dict) -> None:
    assert nodectl_payload(args) == payload


def test_the_rendered_stack_names_its_own_key_config() -> None:
    doc = rendered(replicas=3, join_stack="prod")
    # The file's name, whatever stack deploys it (deploy --file of a file rendered for another).
    assert wanted_control_key(doc) == "prod_control-key"
    assert wanted_control_key(rendered(replicas=3, network="host")) is None
    assert wanted_control_key(rendered(replicas=3, port_offset=100)) is None
    assert doc["configs"]["control-key"] == {"external": True, "name": "prod_control-key"}
    # The key itself is never in the stack file, nor in any environment.
    alice = doc["services"]["alice"]
    assert alice["environment"]["CQKD_CONTROL_KEY_FILE"] == "/run/cqkd-control.key"
    assert alice["configs"][0]["target"] == "/run/cqkd-control.key"
