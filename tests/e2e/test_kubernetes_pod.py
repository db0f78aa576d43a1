"""The rendered worker StatefulSet, run as its pods would run it, in real containers.

No cluster runs here, so the container gets what the kubelet would give a
pod of the StatefulSet: the manifest's environment with the downward API's
value filled in, the pod's name as host name (Docker, like the kubelet's
runtime, sets HOSTNAME from it), and the manifest's security context:
read-only root, no capability, user 10001, a tmpfs on /tmp. The node image's
resolver then answers with its bind check, as the node would at start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cqkd_stack.core.policy import load_policy
from cqkd_stack.targets.kubernetes import POD_INDEX_FIELD, render_manifests


def worker_statefulset(replicas: int, ordinals_start: int) -> dict[str, Any]:
    docs = render_manifests(load_policy(), replicas, ordinals_start=ordinals_start)
    [worker] = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-worker")
    ]
    return worker


def pod_environment(container: dict[str, Any], ordinal: int, label: bool) -> dict[str, str]:
    """The manifest's env as the kubelet resolves it; without the label, no POD_INDEX."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"] == {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}:
            if label:
                env[item["name"]] = str(ordinal)
        else:
            raise AssertionError(f"a variable the test cannot fill in: {item}")
    return env


@pytest.mark.parametrize(
    ("replicas", "ordinals_start", "ordinal", "label", "port"),
    [
        (50, 0, 0, True, 7000),  # the first pod: the first port of the worker range
        (50, 0, 49, True, 7049),  # the last pod
        (50, 5, 5, True, 7000),  # .spec.ordinals.start = 5: ordinal 5 is the first
        (50, 0, 7, False, 7007),  # no pod-index label (clusters before 1.28): the host name
    ],
)
def test_a_worker_pod_resolves_its_port_from_its_ordinal(
    resolver_in_container: Callable[..., dict[str, Any]],
    replicas: int,
    ordinals_start: int,
    ordinal: int,
    label: bool,
    port: int,
) -> None:
    statefulset = worker_statefulset(replicas, ordinals_start)
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    [mount] = container["volumeMounts"]
    found = resolver_in_container(
        f"{statefulset['metadata']['name']}-{ordinal}",
        pod_environment(container, ordinal, label),
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        read_only=security["readOnlyRootFilesystem"],
        cap_drop=security["capabilities"]["drop"],
        security_opt=["no-new-privileges"],  # allowPrivilegeEscalation: false
        tmpfs={mount["mountPath"]: ""},
    )
    assert found["port"] == port
    assert found["source"] == ("POD_INDEX" if label else "HOSTNAME")
    assert found["role"] == "worker"
