"""Kubernetes manifests: Kubernetes' real schemas, and the ports the resolver will give each pod.

kubernetes-validate is used as installed (no mock): it carries the OpenAPI
schemas of released Kubernetes versions, which is what a cluster's API
server would hold the manifests to.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from cqkd_stack.core.errors import InvalidInput, UsageError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.node.resolver import resolve
from cqkd_stack.targets.kubernetes import (
    DEFAULT_KUBERNETES_VERSION,
    HEALTH_COMMAND,
    MAX_DOCUMENTS,
    MAX_MANIFEST_NODES,
    POD_INDEX_FIELD,
    manifest_problems,
    render_kubernetes,
    render_manifests,
)

POLICY = load_policy()


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_env(statefulset: dict[str, Any], ordinal: int, with_index: bool = True) -> dict[str, str]:
    """What the kubelet gives the pod of ``ordinal``: plain values, the downward API, HOSTNAME."""
    env = {"HOSTNAME": f"{statefulset['metadata']['name']}-{ordinal}"}
    for item in container(statefulset)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}
            if with_index:
                env[item["name"]] = str(ordinal)
    return env


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def test_rendered_manifests_pass_the_kubernetes_schemas_and_the_port_policy() -> None:
    for options in ({"replicas": 1}, {"replicas": 1000, "namespace": "dht", "ordinals_start": 5}):
        text = render_kubernetes(POLICY, **options)
        assert manifest_problems(text, "k8s.yaml") == [], options
    assert DEFAULT_KUBERNETES_VERSION in render_kubernetes(POLICY, 3).splitlines()[0]
    # The oldest version whose schemas know .spec.ordinals (GA in 1.31) passes as well.
    text = render_kubernetes(POLICY, 3, ordinals_start=1)
    assert manifest_problems(text, "k8s.yaml", kubernetes_version="1.31") == []


def test_every_role_is_a_statefulset_behind_a_headless_service() -> None:
    docs = render_manifests(POLICY, 7, namespace="dht")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    for name in ("cqkd-bootstrap", "cqkd-alice", "cqkd-bob", "cqkd-worker"):
        assert ("Service", name) in kinds and ("StatefulSet", name) in kinds
        service = by_name(docs, "Service", name)
        statefulset = by_name(docs, "StatefulSet", name)
        assert service["spec"]["clusterIP"] == "None"
        assert statefulset["spec"]["serviceName"] == name
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        assert service["metadata"]["namespace"] == statefulset["metadata"]["namespace"] == "dht"
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    worker = by_name(docs, "StatefulSet", "cqkd-worker")
    assert worker["spec"]["replicas"] == 7
    assert "ordinals" not in worker["spec"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == labels["cqkd.role"] == "worker"
    assert by_name(docs, "Service", "cqkd-bootstrap")["spec"]["ports"] == [
        {"name": "dht", "port": 5678, "targetPort": 5678, "protocol": "UDP"}
    ]


def test_the_worker_environment_is_the_resolver_contract() -> None:
    docs = render_manifests(POLICY, 10)
    env = container(by_name(docs, "StatefulSet", "cqkd-worker"))["env"]
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    assert plain == {
        "CQKD_ROLE": "worker",
        "BASE_PORT": "7000",
        "PORT_RANGE_END": "7999",
        "PORT_OFFSET": "0",
        "PORT_PROTOCOL": "udp",
        "BOOTSTRAP_NODES": "cqkd-bootstrap:5678",
        "STATEFULSET_NAME": "cqkd-worker",
    }
    index = [e for e in env if e["name"] == "POD_INDEX"]
    assert index == [
        {
            "name": "POD_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
            },
        }
    ]


@pytest.mark.parametrize(("replicas", "start"), [(1, 0), (10, 0), (1000, 0), (10, 5)])
def test_each_ordinal_resolves_to_its_port_with_and_without_pod_index(
    replicas: int, start: int
) -> None:
    worker = by_name(
        render_manifests(POLICY, replicas, ordinals_start=start), "StatefulSet", "cqkd-worker"
    )
    assert worker["spec"].get("ordinals", {}).get("start", 0) == start
    for k in (0, replicas - 1):
        for with_index in (True, False):
            found = resolve(pod_env(worker, start + k, with_index))
            assert found.port == 7000 + k, (k, with_index)
            assert found.source == ("POD_INDEX" if with_index else "HOSTNAME")


def test_bootstrap_alice_and_bob_get_their_policy_ports() -> None:
    docs = render_manifests(POLICY, 2)
    expected = {"cqkd-bootstrap": 5678, "cqkd-alice": 6000, "cqkd-bob": 6001}
    for name, port in expected.items():
        statefulset = by_name(docs, "StatefulSet", name)
        assert statefulset["spec"]["replicas"] == 1
        assert resolve(pod_env(statefulset, 0)).port == port
        assert container(statefulset)["ports"] == [
            {"name": "dht", "containerPort": port, "protocol": "UDP"}
        ]
    alice = pod_env(by_name(docs, "StatefulSet", "cqkd-alice"), 0)
    assert alice["CQKD_NODE_NAME"] == "alice"
    assert alice["CQKD_CONTROL_SOCKET"].startswith("/tmp/")
    assert "BOOTSTRAP_NODES" not in pod_env(by_name(docs, "StatefulSet", "cqkd-bootstrap"), 0)


def test_every_pod_runs_with_least_privilege_and_bounded_memory() -> None:
    for doc in render_manifests(POLICY, 3):
        if doc["kind"] != "StatefulSet":
            continue
        pod = doc["spec"]["template"]["spec"]
        node = container(doc)
        assert node["securityContext"] == {
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["enableServiceLinks"] is False  # a Service named `dht` would set DHT_PORT
        assert pod["automountServiceAccountToken"] is False
        tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0]
        assert {"name": "tmp", "mountPath": "/tmp"} in node["volumeMounts"]
        assert node["readinessProbe"]["exec"]["command"] == HEALTH_COMMAND
        role = doc["spec"]["template"]["metadata"]["labels"]["cqkd.role"]
        limit = "64Mi" if role == "worker" else "128Mi"
        assert node["resources"]["limits"] == {"memory": limit}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, "at least 1"),
        ({"replicas": -3}, "at least 1"),
        ({"replicas": 3, "ordinals_start": -1}, "0 or more"),
        ({"replicas": 3, "namespace": "Prod_NS"}, "DNS-1123"),
        ({"replicas": 3, "namespace": "a" * 64}, "DNS-1123"),
        ({"replicas": 3, "name_prefix": "2cqkd"}, "DNS-1035"),
        ({"replicas": 3, "name_prefix": "cqkd."}, "DNS-1035"),
        ({"replicas": 3, "name_prefix": "c" * 43}, "52 characters"),
        ({"replicas": 3, "image": "has space:1"}, "--image"),
    ],
)
def test_bad_input_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        render_manifests(POLICY, **options)
    assert message in info.value.message
    assert info.value.exit_code == 2


def test_a_blocked_port_in_the_worker_range_is_refused(tmp_path: Any) -> None:
    policy_file = tmp_path / "policy.yml"
    text = (
        "version: 1\nprotocol: udp\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7999}\n"
        "blocked_ports: [7004]\n"
    )
    policy_file.write_text(text)
    policy = load_policy(policy_file)
    assert render_manifests(policy, 4)  # 7000-7003 stay clear of it
    with pytest.raises(InvalidInput, match="7004, blocked"):
        render_manifests(policy, 5)


def test_more_workers_than_the_range_holds_is_invalid_input_as_for_every_target() -> None:
    with pytest.raises(InvalidInput, match="at most 1000 fit") as info:
        render_manifests(POLICY, 1001)
    assert info.value.exit_code == 1


def test_an_unknown_field_and_a_wrong_type_are_reported_with_document_and_path() -> None:
    docs = render_manifests(POLICY, 3)
    index = docs.index(by_name(docs, "StatefulSet", "cqkd-worker"))
    broken = copy.deepcopy(docs)
    broken[index]["spec"]["podManagmentPolicy"] = "Parallel"  # misspelt
    broken[0]["spec"]["ports"][0]["port"] = "5678"  # a string where an integer belongs
    problems = manifest_problems(dump(broken), "k8s.yaml")
    assert [p.path for p in problems] == ["$[0].spec.ports[0].port", f"$[{index}].spec"]
    assert "'5678' is not of type 'integer'" in problems[0].message
    assert "podManagmentPolicy" in problems[1].message
    assert problems[1].message.startswith("StatefulSet cqkd-worker: ")
    # Lines point into the multi-document file.
    lines = dump(broken).splitlines()
    assert lines[problems[1].line - 1].strip() == "spec:"
    assert problems[0].file == "k8s.yaml"


def test_a_misplaced_field_in_a_container_is_an_error_in_strict_mode() -> None:
    docs = render_manifests(POLICY, 3)
    container(docs[-1])["hostPort"] = 7000  # belongs under ports[]
    [problem] = manifest_problems(dump(docs), "k8s.yaml")
    assert problem.path == f"$[{len(docs) - 1}].spec.template.spec.containers[0]"
    assert "hostPort" in problem.message


def test_ports_the_pods_would_get_are_checked_with_the_resolver() -> None:
    docs = render_manifests(POLICY, 3)
    worker = by_name(docs, "StatefulSet", "cqkd-worker")
    worker["spec"]["replicas"] = 1001  # schema-valid, but ordinal 1000 gets port 8000
    path = f"$[{docs.index(worker)}].spec.template.spec.containers[0].env"
    [problem] = manifest_problems(dump(docs), "k8s.yaml")
    assert problem.path == path
    assert "ordinal 1000" in problem.message and "gives port 8000" in problem.message

    docs = render_manifests(POLICY, 3, ordinals_start=2)
    worker = by_name(docs, "StatefulSet", "cqkd-worker")
    worker["spec"]["ordinals"]["start"] = 0  # the env still says ORDINALS_START=2
    [problem] = manifest_problems(dump(docs), "k8s.yaml")
    assert "ORDINALS_START must equal .spec.ordinals.start (0)" in problem.message

    docs = render_manifests(POLICY, 3)
    bob = by_name(docs, "StatefulSet", "cqkd-bob")
    for item in container(bob)["env"]:
        if item["name"] == "PORT_OFFSET":
            item["value"] = "0"  # Bob on Alice's port
    [problem] = manifest_problems(dump(docs), "k8s.yaml")
    assert "cqkd-bob: its ports 6000 overlap cqkd-alice's" in problem.message


def test_what_the_api_server_and_dns_need_beyond_the_schema() -> None:
    docs = render_manifests(POLICY, 3)
    worker = by_name(docs, "StatefulSet", "cqkd-worker")
    worker["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "other"
    worker["spec"]["serviceName"] = "cqkd-missing"
    messages = [p.message for p in manifest_problems(dump(docs), "k8s.yaml")]
    assert any("selector does not match" in m for m in messages), messages
    assert any("'cqkd-missing' is not a headless Service" in m for m in messages), messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n- a list\n", "a mapping"),
        ("kind: Service\n", "apiVersion and kind"),
        ("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n", "schema for kind"),
        ("a: [1,\n", "does not parse"),
        ("a: &a [*a]\n", "refers to itself"),
        ("a: b\n" * 300_000, "larger than 1,048,576 bytes"),
    ],
)
def test_documents_that_are_no_kubernetes_object_are_problems(text: str, message: str) -> None:
    problems = manifest_problems(text, "k8s.yaml")
    assert problems and message in problems[-1].message, problems


def test_empty_documents_and_comments_are_skipped() -> None:
    text = "# a header\n---\n" + render_kubernetes(POLICY, 2) + "---\n"
    assert manifest_problems(text, "k8s.yaml") == []
    [problem] = manifest_problems("# nothing\n---\n", "k8s.yaml")
    assert (problem.path, problem.message) == ("$", "no Kubernetes object in the file")


def test_an_unknown_kubernetes_version_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"no schemas for Kubernetes 9\.99"):
        manifest_problems(render_kubernetes(POLICY, 1), "k8s.yaml", kubernetes_version="9.99")


def test_more_documents_or_nodes_than_a_check_can_afford_are_refused_before_any_check() -> None:
    # Their cost is measured in benchmarks/hostile.py; here, that they are refused.
    config_map = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m{i}}}\n{data}"
    many = "".join(config_map.format(i=i, data="") for i in range(MAX_DOCUMENTS + 1))
    [problem] = manifest_problems(many, "many.yaml")
    assert f"{MAX_DOCUMENTS + 1} YAML documents" in problem.message
    data = "data: {" + ", ".join(f"k{j}: v" for j in range(MAX_MANIFEST_NODES // 4)) + "}\n"
    big = config_map.format(i=0, data=data) + config_map.format(i=1, data="")
    problems = manifest_problems(big, "big.yaml")
    assert problems and "YAML nodes" in problems[0].message
