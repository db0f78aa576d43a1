"""Tests for the in-container port resolver.

The bind check uses real sockets and the CLI runs as a real subprocess: the
resolver is an entrypoint in images we do not control, so what matters is the
behaviour of the process, not of mocks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cqkd_stack.node.resolver import Resolution, ResolverError, check_bindable, main, resolve

REPO_ROOT = Path(__file__).resolve().parents[3]
PREFIX = "cqkd-resolver: error: "

WORKER = {"CQKD_ROLE": "worker", "BASE_PORT": "7000", "PORT_RANGE_END": "7999"}


def worker(**extra: str) -> dict[str, str]:
    return {**WORKER, **extra}


def error_of(env: dict[str, str]) -> str:
    with pytest.raises(ResolverError) as info:
        resolve(env)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def held_udp_port() -> Iterator[int]:
    """A UDP port some other 'task' holds for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def free_udp_port() -> int:
    """A high UDP port that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


RESOLVER = (sys.executable, "-m", "cqkd_stack.resolver")


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """Only what the test sets, so the outer environment cannot leak in."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return {"PATH": path, "PYTHONPATH": str(REPO_ROOT), **env}


def run_resolver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the resolver as a container would: a fresh process, only the given env."""
    return subprocess.run(
        [*RESOLVER, *args],
        env=clean_env(env or {}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- the formula -----------------------------------------------------------


@pytest.mark.parametrize(("slot", "port"), [("1", 7000), ("2", 7001), ("5", 7004), ("1000", 7999)])
def test_slot_formula(slot: str, port: int) -> None:
    result = resolve(worker(TASK_SLOT=slot))
    assert result == Resolution(port, int(slot), "TASK_SLOT", "worker")


def test_offset_is_added() -> None:
    result = resolve(worker(TASK_SLOT="1", PORT_OFFSET="1"))
    assert (result.port, result.slot) == (7001, 1)


def test_offset_defaults_to_zero_when_empty() -> None:
    assert resolve(worker(TASK_SLOT="3", PORT_OFFSET="")).port == 7002


def test_worker_id_when_task_slot_absent() -> None:
    result = resolve(worker(WORKER_ID="7"))
    assert (result.port, result.slot, result.source) == (7006, 7, "WORKER_ID")


def test_task_slot_wins_over_worker_id() -> None:
    result = resolve(worker(TASK_SLOT="2", WORKER_ID="9"))
    assert (result.port, result.source) == (7001, "TASK_SLOT")


def test_no_range_end_allows_up_to_65535() -> None:
    assert resolve({"BASE_PORT": "65000", "TASK_SLOT": "536"}).port == 65535
    assert "65536" in error_of({"BASE_PORT": "65000", "TASK_SLOT": "537"})


def test_slot_past_range_end_names_slot_offset_port_and_range() -> None:
    message = error_of(worker(TASK_SLOT="1000", PORT_OFFSET="1"))
    for part in ("slot 1000", "PORT_OFFSET=1", "port 8000", "worker range 7000-7999"):
        assert part in message


def test_slot_zero_is_rejected() -> None:
    assert "TASK_SLOT=0 must be >= 1" in error_of(worker(TASK_SLOT="0"))


def test_negative_offset_is_rejected() -> None:
    assert "PORT_OFFSET=-1 must be >= 0" in error_of(worker(TASK_SLOT="1", PORT_OFFSET="-1"))


@pytest.mark.parametrize(
    ("extra", "port", "source"),
    [
        ({"POD_INDEX": "0"}, 7000, "POD_INDEX"),  # StatefulSet ordinal 0: the first port
        ({"POD_INDEX": "5"}, 7005, "POD_INDEX"),
        ({"POD_INDEX": "1", "ORDINALS_START": "1"}, 7000, "POD_INDEX"),  # .spec.ordinals.start
        ({"STATEFULSET_NAME": "cqkd-worker", "HOSTNAME": "cqkd-worker-3"}, 7003, "HOSTNAME"),
        # The label wins over the host name; a Swarm slot wins over both.
        ({"POD_INDEX": "2", "STATEFULSET_NAME": "x", "HOSTNAME": "x-9"}, 7002, "POD_INDEX"),
        ({"TASK_SLOT": "4", "POD_INDEX": "9"}, 7003, "TASK_SLOT"),
    ],
)
def test_a_statefulset_pod_s_ordinal_gives_its_port(
    extra: dict[str, str], port: int, source: str
) -> None:
    found = resolve(worker(**extra))
    assert (found.port, found.source) == (port, source)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"POD_INDEX": "0", "ORDINALS_START": "1"}, "ordinal 0, below ORDINALS_START=1"),
        ({"STATEFULSET_NAME": "cqkd-worker", "HOSTNAME": "web-3"}, "is not <STATEFULSET_NAME>-"),
        ({"STATEFULSET_NAME": "cqkd-worker", "HOSTNAME": "cqkd-worker-x"}, "HOSTNAME"),
        ({"POD_INDEX": "1000"}, "gives port 8000"),
    ],
)
def test_a_bad_ordinal_is_refused_by_name(extra: dict[str, str], fragment: str) -> None:
    assert fragment in error_of(worker(**extra))


def test_no_slot_source_is_an_error() -> None:
    message = error_of(worker())
    assert "TASK_SLOT" in message and "WORKER_ID" in message


# --- priority: DHT_PORT > legacy > formula ---------------------------------


def test_explicit_dht_port_wins_over_slot() -> None:
    result = resolve(worker(DHT_PORT="7500", TASK_SLOT="3", PORT_OFFSET="4"))
    assert (result.port, result.source, result.slot) == (7500, "DHT_PORT", None)


def test_explicit_dht_port_wins_over_legacy_mode() -> None:
    result = resolve(worker(DHT_PORT="7500", LEGACY_PORT_MODE="true", TASK_SLOT="3"))
    assert (result.port, result.source) == (7500, "DHT_PORT")


def test_explicit_dht_port_needs_no_base() -> None:
    assert resolve({"DHT_PORT": "9000"}).port == 9000


def test_empty_dht_port_counts_as_unset() -> None:
    assert resolve(worker(DHT_PORT="", TASK_SLOT="4")).source == "TASK_SLOT"


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "Yes"])
def test_legacy_mode_gives_base_port_and_ignores_slot_and_offset(value: str) -> None:
    result = resolve(worker(LEGACY_PORT_MODE=value, TASK_SLOT="9", PORT_OFFSET="5"))
    assert (result.port, result.source, result.slot) == (7000, "legacy", None)


@pytest.mark.parametrize("value", ["false", "0", "no", ""])
def test_legacy_mode_off_values_use_the_formula(value: str) -> None:
    assert resolve(worker(LEGACY_PORT_MODE=value, TASK_SLOT="9")).port == 7008


def test_misspelt_legacy_flag_is_an_error() -> None:
    assert "LEGACY_PORT_MODE='ture'" in error_of(worker(LEGACY_PORT_MODE="ture", TASK_SLOT="1"))


def test_seed_contract_worker_id_alone() -> None:
    """The seed design's words, verbatim: nothing but WORKER_ID=5 answers 7004."""
    result = resolve({"WORKER_ID": "5"})
    assert (result.port, result.slot, result.source) == (7004, 5, "WORKER_ID")


def test_seed_contract_legacy_mode_alone() -> None:
    assert resolve({"LEGACY_PORT_MODE": "true"}).port == 7000


def test_seed_contract_defaults_stay_inside_the_worker_range() -> None:
    assert resolve({"WORKER_ID": "1000"}).port == 7999
    assert "outside the range 7000-7999" in error_of({"WORKER_ID": "1001"})


def test_seed_contract_defaults_match_the_shipped_policy() -> None:
    from cqkd_stack.core.policy import load_policy
    from cqkd_stack.node.resolver import DEFAULT_BASE_PORT, DEFAULT_RANGE_END

    worker = load_policy().role_range("worker")
    assert (worker.start, worker.end) == (DEFAULT_BASE_PORT, DEFAULT_RANGE_END)


def test_seed_contract_port_offset_defaults_to_zero_and_still_applies() -> None:
    assert resolve({"WORKER_ID": "5", "PORT_OFFSET": "10"}).port == 7014


# --- DHT_PORT mistakes -------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "2", "3", "999"])
def test_dht_port_that_is_a_raw_slot(value: str) -> None:
    message = error_of(worker(DHT_PORT=value))
    assert "looks like a raw {{.Task.Slot}}" in message
    assert "set TASK_SLOT" in message


def test_raw_slot_detected_without_any_range() -> None:
    assert "looks like a raw" in error_of({"DHT_PORT": "2"})


def test_dht_port_equal_to_a_large_slot_is_detected() -> None:
    message = error_of(worker(DHT_PORT="1500", TASK_SLOT="1500"))
    assert "looks like a raw" in message


def test_unrendered_slot_template_in_dht_port() -> None:
    message = error_of(worker(DHT_PORT="{{.Task.Slot}}"))
    assert "unrendered template" in message and "TASK_SLOT" in message


@pytest.mark.parametrize("value", ["{{.Task.Slot}}", "<<.Task.Slot>>"])
def test_unrendered_slot_template_in_task_slot(value: str) -> None:
    message = error_of(worker(TASK_SLOT=value))
    assert message.startswith("TASK_SLOT=") and "unrendered template" in message


def test_dht_port_outside_role_range() -> None:
    message = error_of(worker(DHT_PORT="8000"))
    assert "DHT_PORT=8000" in message and "worker range 7000-7999" in message


def test_dht_port_below_role_range() -> None:
    assert "worker range 7000-7999" in error_of(worker(DHT_PORT="6999"))


@pytest.mark.parametrize("value", ["0", "-5", "65536", "70000"])
def test_dht_port_outside_valid_ports(value: str) -> None:
    assert error_of({"DHT_PORT": value}) == f"DHT_PORT={value} is outside 1024..65535"


def test_dht_port_at_range_edges_is_accepted() -> None:
    assert resolve(worker(DHT_PORT="7000")).port == 7000
    assert resolve(worker(DHT_PORT="7999")).port == 7999


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BASE_PORT", "7k"),
        ("BASE_PORT", "7_000"),
        ("PORT_RANGE_END", "x"),
        ("TASK_SLOT", "1.5"),
        ("TASK_SLOT", "one"),
        ("PORT_OFFSET", "1e2"),
        ("DHT_PORT", "70o0"),
    ],
)
def test_non_integer_names_variable_and_value(name: str, value: str) -> None:
    env = worker(TASK_SLOT="1")
    env[name] = value
    message = error_of(env)
    assert message == f"{name}={value!r} is not an integer"


def test_whitespace_around_integers_is_tolerated() -> None:
    assert resolve(worker(TASK_SLOT=" 3\n")).port == 7002


def test_range_end_without_base_port_is_an_error() -> None:
    message = error_of({"TASK_SLOT": "1", "CQKD_ROLE": "worker", "PORT_RANGE_END": "7100"})
    assert "BASE_PORT is not" in message and "7000-7999" in message


def test_inverted_range_is_an_error() -> None:
    message = error_of({"BASE_PORT": "8000", "PORT_RANGE_END": "7999", "TASK_SLOT": "1"})
    assert "PORT_RANGE_END=7999 is below BASE_PORT=8000" in message


def test_privileged_base_port_is_an_error() -> None:
    assert "BASE_PORT=80 is outside" in error_of({"BASE_PORT": "80", "TASK_SLOT": "1"})


def test_bad_protocol_is_an_error() -> None:
    assert "PORT_PROTOCOL='sctp'" in error_of(worker(TASK_SLOT="1", PORT_PROTOCOL="sctp"))


def test_protocol_and_bind_host_are_carried() -> None:
    result = resolve(worker(TASK_SLOT="1", PORT_PROTOCOL="TCP", BIND_HOST="127.0.0.1"))
    assert (result.protocol, result.bind_host) == ("tcp", "127.0.0.1")


def test_role_is_optional_and_only_changes_wording() -> None:
    env = {"BASE_PORT": "7000", "PORT_RANGE_END": "7999", "TASK_SLOT": "1001"}
    assert resolve({**env, "TASK_SLOT": "1"}).role is None
    assert "outside the range 7000-7999" in error_of(env)


# --- bind check (real sockets) ---------------------------------------------


def test_bind_check_passes_on_a_free_udp_port(free_udp_port: int) -> None:
    check_bindable(free_udp_port, "udp", "0.0.0.0")


def test_bind_check_fails_when_udp_port_is_taken(held_udp_port: int) -> None:
    env = {"BASE_PORT": str(held_udp_port), "TASK_SLOT": "1"}
    result = resolve(env)
    assert result.port == held_udp_port
    with pytest.raises(ResolverError) as info:
        check_bindable(result.port, result.protocol, result.bind_host)
    message = str(info.value)
    assert f"udp port {held_udp_port}" in message
    assert "in use" in message.lower()


def test_bind_check_sees_a_udp_holder_that_set_so_reuseaddr() -> None:
    """On Linux two UDP sockets that both set SO_REUSEADDR share a port; ours must not."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 0))
        port = holder.getsockname()[1]
        with pytest.raises(ResolverError, match=f"udp port {port}"):
            check_bindable(port, "udp", "0.0.0.0")


def test_bind_check_fails_when_tcp_port_is_listening() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ResolverError, match=f"tcp port {port}"):
            check_bindable(port, "tcp", "0.0.0.0")


def test_main_returns_1_and_prints_nothing_when_port_taken(
    held_udp_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("DHT_PORT", "WORKER_ID", "PORT_OFFSET", "LEGACY_PORT_MODE", "PORT_RANGE_END"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASE_PORT", str(held_udp_port))
    monkeypatch.setenv("TASK_SLOT", "1")
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(PREFIX) and str(held_udp_port) in err


# --- the real process --------------------------------------------------------


def slot_env(port: int) -> dict[str, str]:
    """An env whose slot 3 lands on `port`, inside a worker range around it."""
    base = port - 2
    return {
        "CQKD_ROLE": "worker",
        "BASE_PORT": str(base),
        "PORT_RANGE_END": str(min(base + 999, 65535)),
        "TASK_SLOT": "3",
    }


def test_cli_prints_port(free_udp_port: int) -> None:
    proc = run_resolver(env=slot_env(free_udp_port))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{free_udp_port}\n", "")


def test_cli_json(free_udp_port: int) -> None:
    proc = run_resolver("--json", env=slot_env(free_udp_port))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "port": free_udp_port,
        "slot": 3,
        "source": "TASK_SLOT",
        "role": "worker",
    }


def test_cli_json_for_legacy_without_bind_check() -> None:
    proc = run_resolver("--json", "--no-bind-check", env=worker(LEGACY_PORT_MODE="yes"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "port": 7000,
        "slot": None,
        "source": "legacy",
        "role": "worker",
    }


def test_cli_bad_env_exits_1_with_one_line(free_udp_port: int) -> None:
    proc = run_resolver(env=worker(DHT_PORT="2"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(PREFIX + "DHT_PORT=2 looks like a raw")
    assert proc.stderr.count("\n") == 1


def test_cli_taken_port_exits_1_and_prints_no_port(held_udp_port: int) -> None:
    proc = run_resolver(env=slot_env(held_udp_port))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(PREFIX + f"cannot bind udp port {held_udp_port}")


def test_cli_no_bind_check_skips_the_bind(held_udp_port: int) -> None:
    proc = run_resolver("--no-bind-check", env=slot_env(held_udp_port))
    assert (proc.returncode, proc.stdout) == (0, f"{held_udp_port}\n")


@pytest.mark.parametrize(
    "args", [("exec",), ("exec", "--"), ("--bogus",), ("--json", "exec", "--", "true")]
)
def test_cli_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run_resolver(*args, env=worker(TASK_SLOT="1"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(PREFIX) and proc.stderr.count("\n") == 1


def test_cli_help_exits_0() -> None:
    proc = run_resolver("--help")
    assert proc.returncode == 0 and "exec -- CMD" in proc.stdout


PRINT_PORT_AND_PID = "import os;print(os.environ['DHT_PORT'], os.getpid())"


def test_cli_exec_exports_port_and_replaces_the_process(free_udp_port: int) -> None:
    with subprocess.Popen(
        [*RESOLVER, "exec", "--", sys.executable, "-c", PRINT_PORT_AND_PID],
        env=clean_env(slot_env(free_udp_port)),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    port, pid = out.split()
    assert port == str(free_udp_port)
    # Same PID: the command replaced the resolver (exec), it is not a child of it.
    assert int(pid) == proc.pid


def test_cli_exec_overrides_explicit_dht_port_with_normalised_value() -> None:
    proc = run_resolver(
        "--no-bind-check",
        "exec",
        "--",
        sys.executable,
        "-c",
        "import os;print(repr(os.environ['DHT_PORT']))",
        env=worker(DHT_PORT=" 7123 "),
    )
    assert (proc.returncode, proc.stdout) == (0, "'7123'\n")


def test_cli_exec_does_not_run_command_on_error() -> None:
    proc = run_resolver("exec", "--", sys.executable, "-c", "print('ran')", env=worker())
    assert proc.returncode == 1
    assert "ran" not in proc.stdout
    assert proc.stderr.startswith(PREFIX)


def test_cli_exec_missing_command_exits_1() -> None:
    proc = run_resolver(
        "--no-bind-check", "exec", "--", "cqkd-no-such-command", env=worker(TASK_SLOT="1")
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(PREFIX + "cannot run 'cqkd-no-such-command'")


def test_import_stays_standard_library_and_light() -> None:
    """The module runs in images that are not ours and must start fast."""
    code = (
        "import sys; before = set(sys.modules); import cqkd_stack.node.resolver; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    # -S: no site-packages, as in a bare image; cwd puts the repo on sys.path.
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    ours = {name for name in loaded if name.split(".")[0] == "cqkd_stack"}
    assert ours == {"cqkd_stack", "cqkd_stack.node", "cqkd_stack.node.resolver"}
    foreign = {
        name
        for name in loaded - ours
        if name.split(".")[0].lstrip("_") not in sys.stdlib_module_names
        and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert foreign == set()
    assert not loaded & {"argparse", "dataclasses", "typing", "json"}
