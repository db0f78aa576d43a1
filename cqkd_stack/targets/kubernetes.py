"""Policy + options → Kubernetes manifests, and their check against Kubernetes' own schemas.

The Swarm stack passes ``{{.Task.Slot}}`` to the resolver; on Kubernetes a
StatefulSet pod's ordinal plays that part (``POD_INDEX`` from the
``apps.kubernetes.io/pod-index`` label through the downward API, else the
pod's host name ``<STATEFULSET_NAME>-<ordinal>``), so ordinal
``.spec.ordinals.start`` gets the first port of its role's range. Every role
is a StatefulSet with a headless Service: a stable name per pod, and DNS that
answers with the pods' own addresses, which is what a Kademlia contact is.

No cluster is needed to check the result: every document is validated in
strict mode against the OpenAPI schemas of a released Kubernetes version
(``kubernetes-validate``, an optional dependency), and the ports the pods
will compute are asked of the resolver, the code each pod runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from itertools import pairwise
from typing import Any

from .. import DEFAULT_NODE_IMAGE, __version__
from ..core.contract import NODE_USER, ROLE_LABEL, TakenSubnet
from ..core.documents import MAX_BYTES, LoadedStack, line_of, parse_yaml_nodes
from ..core.errors import InvalidInput, UsageError
from ..core.policy import Policy, PortRange, load_policy
from ..core.results import Problem, json_path
from ..node.resolver import ResolverError, resolve
from .base import RenderOptions, Target, dump_documents, health_interval, port_environment

# The newest Kubernetes whose schemas kubernetes-validate 1.37 ships (its
# versions follow Kubernetes'); the lower bound in pyproject.toml guarantees it.
DEFAULT_KUBERNETES_VERSION = "1.37"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
POD_INDEX_FIELD = f"metadata.labels['{POD_INDEX_LABEL}']"
# The image's HEALTHCHECK (cqkd_stack/image/Dockerfile): the node writes its
# port, as /proc/net/udp shows it, to this file once it listens and has joined.
HEALTH_COMMAND = ["grep", "-qf", "/tmp/cqkd-health", "/proc/net/udp"]
# The node process was measured at ~3.7 MiB of anonymous memory once joined
# (~4.8 before 2026-12-02, when 1003 tasks took ~9.1 MiB of host memory each
# with everything counted; docs/operations.md).
# A worker's limit is 7x that; bootstrap and special nodes hold more contacts
# and serve every joining worker (Alice and Bob also store values), so twice it.
WORKER_MEMORY = {"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}}
SERVER_MEMORY = {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}
# The special nodes of the Swarm template, each at its offset in the special range.
SPECIAL_NODES = {"alice": 0, "bob": 1}
# A pod's hostname is a DNS-1123 label (63 characters) and the StatefulSet
# controller labels each pod `controller-revision-hash: <name>-<10-char hash>`,
# itself at most 63: longer StatefulSet names make pods that cannot be created.
MAX_STATEFULSET_NAME = 52
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Service names are DNS-1035 labels: they must start with a letter.
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DOCUMENT_START = re.compile(r"^---(?=\s|$)", re.MULTILINE)
# kubernetes-validate reads the object's schema from disk on every call
# (~11 ms for a ConfigMap, more for a StatefulSet), then costs per node: a
# 1 MiB file of 18,000 tiny ConfigMaps took 5 minutes, 32 documents of 7,000
# nodes 2.4 s. The rendered network is 8 documents and ~700 nodes; more
# documents than this, or more nodes in all, are refused before any check.
MAX_DOCUMENTS = 12
MAX_MANIFEST_NODES = 10_000


def _check_inputs(
    replicas: int, image: str, namespace: str | None, ordinals_start: int, name_prefix: str
) -> None:
    """Refuse what the API server (or the pods) would refuse, before anything is built."""
    if replicas < 1:
        raise UsageError(f"--replicas must be at least 1, got {replicas}")
    if ordinals_start < 0:
        raise UsageError(f"the first ordinal must be 0 or more, got {ordinals_start}")
    if not image.strip() or any(c.isspace() for c in image):
        raise UsageError(f"--image must name an image (NAME[:TAG]), got {image!r}")
    if namespace is not None and not (
        len(namespace) <= 63 and _DNS_1123_LABEL.fullmatch(namespace)
    ):
        raise UsageError(
            f"namespace {namespace!r} is not a DNS-1123 label: at most 63 characters, "
            "lower-case letters, digits and '-', starting and ending with a letter or digit"
        )
    longest = f"{name_prefix}-bootstrap"
    if not _DNS_1035_LABEL.fullmatch(name_prefix) or len(longest) > MAX_STATEFULSET_NAME:
        raise UsageError(
            f"name prefix {name_prefix!r} must be a DNS-1035 label (lower-case letters, digits "
            f"and '-', starting with a letter) short enough for '{longest}' to stay within "
            f"{MAX_STATEFULSET_NAME} characters, the longest StatefulSet name whose pods "
            "Kubernetes can label"
        )


def _labels(prefix: str, name: str, role: str) -> dict[str, str]:
    """Selector labels first: ``instance`` tells Alice's pods from Bob's, both ``special``."""
    return {
        "app.kubernetes.io/name": "cqkd",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": prefix,
        ROLE_LABEL: role,
    }


def _selector(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}


def _metadata(name: str, labels: Mapping[str, str], namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = {**labels, "app.kubernetes.io/managed-by": "cqkd-stack"}
    return metadata


def _env(name: str, values: Mapping[str, str], ordinals_start: int) -> list[dict[str, Any]]:
    """The resolver's variables, with the ordinal from the pod itself.

    ``POD_INDEX`` comes from the pod-index label (Kubernetes 1.28+); where the
    label is missing the value is empty, which the resolver reads as unset and
    takes the ordinal from ``HOSTNAME`` (the pod's name) with ``STATEFULSET_NAME``.
    """
    env = [{"name": k, "value": v} for k, v in values.items()]
    env.append({"name": "STATEFULSET_NAME", "value": name})
    env.append({"name": "POD_INDEX", "valueFrom": {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}})
    if ordinals_start:
        env.append({"name": "ORDINALS_START", "value": str(ordinals_start)})
    return env


def _pod_env(env: list[dict[str, Any]], statefulset: str, ordinal: int) -> dict[str, str]:
    """The environment the pod of ``ordinal`` will see: the downward API filled in."""
    out = {"HOSTNAME": f"{statefulset}-{ordinal}"}
    for item in env:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        source = item.get("valueFrom")
        if source == {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}:
            out[item["name"]] = str(ordinal)
        elif source is None:
            out[item["name"]] = str(item.get("value", ""))
    return out


def _statefulset(
    *,
    prefix: str,
    name: str,
    role: str,
    replicas: int,
    env: dict[str, str],
    port: int | None,
    policy: Policy,
    image: str,
    namespace: str | None,
    ordinals_start: int = 0,
    probe_period: int,
) -> list[dict[str, Any]]:
    """One role's StatefulSet and the headless Service that gives its pods DNS names.

    ``port`` is the one port every pod of the set listens on (bootstrap, Alice,
    Bob); None for workers, whose pods each listen on their own port, which one
    pod template cannot name: their container lists no port (``containerPort``
    is informational, it opens nothing and closes nothing).
    """
    labels = _labels(prefix, name, role)
    protocol = policy.protocol.upper()
    container: dict[str, Any] = {
        "name": "node",
        "image": image,
        "env": _env(name, env, ordinals_start),
    }
    if port is not None:
        container["ports"] = [{"name": "dht", "containerPort": port, "protocol": protocol}]
    container |= {
        "resources": WORKER_MEMORY if role == "worker" else SERVER_MEMORY,
        # The node process is the probe's subject: one exec per period, so the
        # period comes from the same budget as the Swarm stack's health checks.
        "readinessProbe": {
            "exec": {"command": HEALTH_COMMAND},
            "periodSeconds": probe_period,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # The Swarm template's least privilege: no capability (the port is
        # above 1024), nothing written outside /tmp.
        "securityContext": {
            "runAsUser": NODE_USER,
            "runAsGroup": NODE_USER,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {
        "serviceName": name,
        "replicas": replicas,
        # Every pod at once: the node retries its join, nothing needs an order.
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": _selector(labels)},
    }
    if ordinals_start:
        spec["ordinals"] = {"start": ordinals_start}
    spec["template"] = {
        "metadata": {"labels": labels},
        "spec": {
            # The node stops at once on SIGTERM (as the Swarm stack's 5 s grace).
            "terminationGracePeriodSeconds": 5,
            # Service links would put <SERVICE>_PORT=udp://... into every pod for
            # each Service of the namespace: a Service named `dht` would set
            # DHT_PORT, and the resolver would refuse it.
            "enableServiceLinks": False,
            # The node never talks to the API server.
            "automountServiceAccountToken": False,
            # What Pod Security's "restricted" level asks of the pod as a whole.
            "securityContext": {
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            # A tmpfs, as in the Swarm stack: the health file and control socket.
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name, labels, namespace),
        "spec": spec,
    }
    service_spec: dict[str, Any] = {
        "clusterIP": "None",
        # Peers must find a node by DNS before it has joined (which is what
        # "ready" means here); the node itself retries until they answer.
        "publishNotReadyAddresses": True,
        "selector": _selector(labels),
    }
    if port is not None:
        service_spec["ports"] = [
            {"name": "dht", "port": port, "targetPort": port, "protocol": protocol}
        ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, labels, namespace),
        "spec": service_spec,
    }
    return [service, statefulset]


def render_manifests(
    policy: Policy,
    replicas: int,
    image: str = DEFAULT_NODE_IMAGE,
    namespace: str | None = None,
    ordinals_start: int = 0,
    name_prefix: str = "cqkd",
) -> list[dict[str, Any]]:
    """The manifests as data: bootstrap, Alice, Bob and the workers, each a Service + StatefulSet.

    Workers join through the bootstrap Service's short name, which resolves in
    the namespace the manifests are applied to, whatever the cluster domain.
    Raises UsageError for options Kubernetes would refuse, InvalidInput for
    what the port policy refuses (as the Swarm and compose targets do).
    """
    _check_inputs(replicas, image, namespace, ordinals_start, name_prefix)
    workers = policy.role_range("worker")
    if replicas > len(workers):
        raise InvalidInput(
            f"{replicas} workers do not fit the worker range {workers} of {policy.source}: "
            f"at most {len(workers)} fit (one port each); widen the range in the port policy"
        )
    make = partial(
        _statefulset,
        prefix=name_prefix,
        policy=policy,
        image=image,
        namespace=namespace,
        probe_period=health_interval(replicas + 1 + len(SPECIAL_NODES)),
    )
    bootstrap = f"{name_prefix}-bootstrap"
    env = port_environment(policy, "bootstrap", 0)
    port = _first_port(bootstrap, env)
    docs = make(name=bootstrap, role="bootstrap", replicas=1, env=env, port=port)
    joins = {"BOOTSTRAP_NODES": f"{bootstrap}:{port}"}
    for node, offset in SPECIAL_NODES.items():
        name = f"{name_prefix}-{node}"
        env = port_environment(policy, "special", offset) | {
            "CQKD_NODE_NAME": node,
            # Reached with `kubectl exec`, so no volume shared with other pods.
            "CQKD_CONTROL_SOCKET": f"/tmp/cqkd/{node}.sock",
            **joins,
        }
        port = _first_port(name, env)
        docs += make(name=name, role="special", replicas=1, env=env, port=port)
    docs += make(
        name=f"{name_prefix}-worker",
        role="worker",
        replicas=replicas,
        env=port_environment(policy, "worker", 0) | joins,
        port=None,
        ordinals_start=ordinals_start,
    )
    problems = _port_problems(docs, policy, "<rendered>")
    if problems:
        raise InvalidInput(problems[0].message)
    return docs


def _first_port(name: str, values: Mapping[str, str]) -> int:
    """What the pod of ordinal 0 computes: the resolver's answer, not a formula of ours."""
    try:
        return resolve(_pod_env(_env(name, values, 0), name, 0)).port
    except ResolverError as exc:
        raise InvalidInput(f"{name}: {exc}") from None


def refuse_swarm_options(options: RenderOptions) -> None:
    """Options that mean nothing to Kubernetes are refused, not silently dropped."""
    used = [
        flag
        for flag, given in (
            ("--network", options.network != "overlay"),
            ("--subnet", bool(options.subnet)),
            ("--healthcheck", options.healthcheck),
            ("--port-offset", options.is_batch),
        )
        if given
    ]
    if used:
        raise UsageError(f"{', '.join(used)}: Swarm options; --target kubernetes has none")


def render_kubernetes(
    policy: Policy,
    replicas: int,
    image: str = DEFAULT_NODE_IMAGE,
    namespace: str | None = None,
    ordinals_start: int = 0,
    name_prefix: str = "cqkd",
) -> str:
    """The manifests as one multi-document YAML file, headed by how it was made and is used."""
    docs = render_manifests(policy, replicas, image, namespace, ordinals_start, name_prefix)
    apply = f"kubectl apply -n {namespace} -f FILE" if namespace else "kubectl apply -f FILE"
    header = (
        f"# Rendered by cqkd-stack {__version__}: {replicas} workers, Kubernetes "
        f"(schemas {DEFAULT_KUBERNETES_VERSION}), policy {policy.source}.\n"
        f"# Check: cqkd-stack validate --target kubernetes FILE; deploy: {apply}\n"
    )
    body = dump_documents(list(docs))
    return header + body


def manifest_problems(
    text: str,
    file: str,
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    policy: Policy | None = None,
) -> list[Problem]:
    """Every document against Kubernetes' schemas (strict), then the port policy.

    Paths are ``$[DOCUMENT].path.in.it`` (documents counted from 0). Strict
    mode makes an unknown field an error, as ``kubectl apply --validate=strict``
    does. kubernetes-validate stops at a document's first schema error, so a
    document reports at most one; the port rules run once every document
    passes the schemas, since they read fields the schemas vouch for.
    """
    loaded = load_manifests(text, file, kubernetes_version)
    if loaded.doc is None:
        return loaded.problems
    return manifest_port_problems(loaded.doc, file, policy or load_policy())


def load_manifests(
    text: str, file: str, kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
) -> LoadedStack:
    """The manifests as one ``List`` (as kubectl reads several documents), or why not.

    Each document is read by the bounded YAML reader and checked against
    Kubernetes' schemas in strict mode; every problem carries its line.
    """
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import VersionNotSupportedError
    except ImportError:
        raise UsageError(
            "checking Kubernetes manifests needs kubernetes-validate: "
            "pip install 'cqkd-stack[kubernetes]'"
        ) from None
    if len(text.encode()) > MAX_BYTES:
        return _refused([Problem(file, "$", f"larger than {MAX_BYTES:,} bytes; refused")])
    markers = sum(1 for _ in _DOCUMENT_START.finditer(text))
    if markers > MAX_DOCUMENTS:
        return _refused(
            [
                Problem(
                    file,
                    "$",
                    f"{markers:,} YAML documents; manifests are checked up to {MAX_DOCUMENTS} "
                    "documents in one file (the rendered network has 8): refused as too large",
                )
            ]
        )
    problems: list[Problem] = []
    docs: list[dict[str, Any]] = []
    for index, first_line, parsed in _documents(text, file):
        if parsed.problems:
            problems += [
                Problem(file, f"$[{index}]", p.message, p.line and p.line + first_line)
                for p in parsed.problems
            ]
            continue
        data = parsed.data
        if not all(isinstance(data.get(k), str) for k in ("apiVersion", "kind")):
            message = "a Kubernetes object needs apiVersion and kind (strings)"
            problems.append(Problem(file, f"$[{index}]", message, first_line + 1))
            continue
        try:
            kubernetes_validate.validate(data, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            parts = [index, *exc.absolute_path]
            line = line_of(parsed.root, list(exc.absolute_path))
            message = f"{_kind_name(data)}: {exc.message} (Kubernetes {exc.version} schema)"
            problems.append(Problem(file, json_path(parts), message, line and line + first_line))
            continue
        except VersionNotSupportedError:
            raise UsageError(
                f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
                f"Kubernetes {kubernetes_version}: pip install -U 'cqkd-stack[kubernetes]'"
            ) from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(Problem(file, f"$[{index}]", exc.message, first_line + 1))
            continue
        docs.append(data)
    if problems:
        return _refused(problems)
    if not docs:
        return _refused([Problem(file, "$", "no Kubernetes object in the file")])
    return LoadedStack({"apiVersion": "v1", "kind": "List", "items": docs}, [])


def _refused(problems: list[Problem]) -> LoadedStack:
    return LoadedStack(None, problems)


def manifest_port_problems(
    doc: dict[str, Any],
    file: str,
    policy: Policy,
    taken: Sequence[TakenSubnet] = (),
) -> list[Problem]:
    """The port policy on the manifests ``load_manifests`` read (the target's own rules).

    A pod's port comes from its ordinal, not from a Docker service's slot, so
    these are Kubernetes' own, asked of the resolver as each pod will; the
    engine's subnets mean nothing to a cluster.
    """
    return _port_problems(doc["items"], policy, file)


def render_from_options(policy: Policy, options: RenderOptions) -> str:
    """``render_kubernetes`` from the options every target takes; Swarm's are refused."""
    refuse_swarm_options(options)
    return render_kubernetes(
        policy, options.replicas, options.image, options.namespace, options.ordinals_start
    )


_SERVICES_KEY = re.compile(r"^services\s*:", re.MULTILINE)
_MANIFEST_KEYS = (
    re.compile(r"^apiVersion\s*:", re.MULTILINE),
    re.compile(r"^kind\s*:", re.MULTILINE),
)


def declares_manifests(text: str) -> bool:
    """Top-level ``apiVersion`` and ``kind``, and no ``services``: Kubernetes manifests."""
    return all(key.search(text) for key in _MANIFEST_KEYS) and not _SERVICES_KEY.search(text)


def _documents(text: str, file: str) -> Iterator[tuple[int, int, Any]]:
    """Each non-empty document, its index and the line before its first.

    A line starting ``---`` is always a document marker (YAML forbids it
    inside a scalar), so splitting there is exact; each document then goes
    through the project's bounded YAML reader (size, depth, bombs, duplicates).
    MAX_MANIFEST_NODES is shared out between the documents.
    """
    starts = [0] + [m.start() for m in _DOCUMENT_START.finditer(text) if m.start() > 0]
    chunks = [
        (begin, text[begin:end])
        for begin, end in pairwise([*starts, len(text)])
        if not _only_blank(text[begin:end])
    ]
    budget = MAX_MANIFEST_NODES // max(1, len(chunks))
    for index, (begin, chunk) in enumerate(chunks):
        parsed = parse_yaml_nodes(chunk, file, "a Kubernetes object", max_nodes=budget)
        yield index, text.count("\n", 0, begin), parsed


def _only_blank(chunk: str) -> bool:
    lines = (line.strip() for line in chunk.splitlines())
    return all(not line or line.startswith("#") or line in ("---", "...") for line in lines)


def _kind_name(doc: Mapping[str, Any]) -> str:
    name = (doc.get("metadata") or {}).get("name", "?")
    return f"{doc.get('kind', '?')} {name}"


def _port_problems(docs: list[dict[str, Any]], policy: Policy, file: str) -> list[Problem]:
    """The port policy on every DHT StatefulSet, as the resolver in each pod will see it.

    The first and last ordinals are resolved (ports are linear between them),
    then all of a set's ports are checked against blocked ports and against
    the other sets' ports. What the API server or DNS needs but no schema can
    say is here too: a selector its template's labels match, and a
    ``serviceName`` naming a headless Service of the file.
    """
    problems: list[Problem] = []
    headless = {
        (d.get("metadata") or {}).get("name")
        for d in docs
        if d.get("kind") == "Service" and (d.get("spec") or {}).get("clusterIP") == "None"
    }
    taken: dict[str, range] = {}
    for index, doc in enumerate(docs):
        spec = doc.get("spec")
        if doc.get("kind") != "StatefulSet" or not isinstance(spec, dict):
            continue
        name = str((doc.get("metadata") or {}).get("name", ""))
        labels = spec["template"].get("metadata", {}).get("labels") or {}

        def problem(parts: list[str | int], message: str, index: int = index) -> None:
            problems.append(Problem(file, json_path([index, "spec", *parts]), message))

        wanted = spec["selector"].get("matchLabels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            problem(["selector"], f"{name}: the selector does not match the template's labels")
        if spec.get("serviceName") not in headless:
            problem(
                ["serviceName"],
                f"{name}: {spec.get('serviceName')!r} is not a headless Service "
                "(clusterIP: None) of this file, so its pods get no DNS names",
            )
        for number, container in enumerate(spec["template"]["spec"]["containers"]):
            where: list[str | int] = ["template", "spec", "containers", number, "env"]
            ports = _container_ports(name, spec, container, labels, policy)
            if isinstance(ports, str):
                problem(where, f"{name}: {ports}")
                continue
            blocked = policy.blocked_in(PortRange(ports.start, ports.stop - 1)) if ports else []
            if blocked:
                shown = ", ".join(map(str, blocked))
                problem(where, f"{name}: its pods would get port(s) {shown}, blocked by the policy")
            for other, used in taken.items():
                if ports and used and ports.start < used.stop and used.start < ports.stop:
                    problem(where, f"{name}: its ports {_span(ports)} overlap {other}'s")
            taken[name] = ports
    return problems


def _span(ports: range) -> str:
    return str(PortRange(ports.start, ports.stop - 1))


def _container_ports(
    name: str,
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    labels: Mapping[str, str],
    policy: Policy,
) -> range | str:
    """The ports the container's pods will get, or why they will not get one."""
    env = container.get("env") or []
    values = {e.get("name"): e.get("value") for e in env}
    role = values.get("CQKD_ROLE") or labels.get(ROLE_LABEL)
    replicas = spec.get("replicas", 1)
    if role is None or replicas < 1:
        return range(0)  # not a DHT node, or no pods
    if role not in policy.roles:
        return f"role {role!r} is not in the port policy ({policy.describe_roles()})"
    start = (spec.get("ordinals") or {}).get("start", 0)
    if str(values.get("ORDINALS_START") or 0) != str(start):
        return f"ORDINALS_START must equal .spec.ordinals.start ({start}), or ports shift"
    if values.get("STATEFULSET_NAME") != name:
        return f"STATEFULSET_NAME must be the StatefulSet's name {name!r} (the host name fallback)"
    allowed = policy.role_range(role)
    found: list[int] = []
    for ordinal in (start, start + replicas - 1):
        try:
            port = resolve(_pod_env(env, name, ordinal)).port
        except ResolverError as exc:
            fit = f" ({len(allowed)} pods fit the {role} range)" if replicas > len(allowed) else ""
            return f"ordinal {ordinal}: {exc}{fit}"
        if port not in allowed:
            return (
                f"ordinal {ordinal} gets port {port}, outside the {role} range {allowed} "
                "of the port policy"
            )
        found.append(port)
    if found[0] == found[1] and replicas > 1:
        return f"all {replicas} pods get port {found[0]}: each needs its own"
    return range(found[0], found[1] + 1)


TARGET = Target(
    name="kubernetes",
    render=render_from_options,
    declared_by=declares_manifests,
    load=load_manifests,
    problems=manifest_port_problems,
    services=False,
    note=f"Kubernetes manifests, checked against Kubernetes {DEFAULT_KUBERNETES_VERSION}",
)
