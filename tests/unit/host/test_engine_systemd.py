"""docker.service under systemd: the drop-in, and when setup may restart the engine.

The decision is a pure function of what systemd and /proc report, so every
case is a plain UnitState here; tests/e2e/test_systemd_dropin.py shows a real
systemd honouring the drop-in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cqkd_stack.host import engine
from cqkd_stack.host.engine import RunningContainer, UnitPlan, UnitState

VARIABLE = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1"

# docker.io just installed by apt on a systemd host, drop-in written first:
# the daemon came up with the variable. Nothing to do.
HEALTHY = UnitState(
    active_state="active",
    unit_file_state="enabled",
    main_pid=4242,
    need_reload=False,
    dropin_current=True,
    daemon_has_env=True,
)
# docker.io was installed before setup ran: apt started the daemon without it.
STARTED_BY_APT = dataclasses.replace(HEALTHY, dropin_current=False, daemon_has_env=False)


def test_the_drop_in_sets_only_the_variable_in_the_service_section() -> None:
    assert str(engine.DROPIN_PATH) == "/etc/systemd/system/docker.service.d/cqkd-stack.conf"
    lines = [line for line in engine.dropin_text().splitlines() if not line.startswith("#")]
    assert lines == ["[Service]", f"Environment={VARIABLE}"]


def test_writing_the_drop_in_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    path = tmp_path / "docker.service.d" / "cqkd-stack.conf"
    assert engine.write_dropin(path) is True
    mtime = path.stat().st_mtime_ns
    assert engine.write_dropin(path) is False
    assert path.stat().st_mtime_ns == mtime
    assert path.read_text() == engine.dropin_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["cqkd-stack.conf"]  # no temp file left
    path.write_text("[Service]\nEnvironment=OTHER=1\n")
    assert engine.write_dropin(path) is True
    assert path.read_text() == engine.dropin_text()


def test_a_healthy_unit_needs_nothing() -> None:
    plan = engine.plan_docker_unit(HEALTHY, [], allow_restart=False)
    assert plan == UnitPlan() and not plan.acts
    assert engine.restart_reason(HEALTHY) == ""


def test_a_daemon_without_the_variable_is_restarted_when_nothing_would_be_lost() -> None:
    plan = engine.plan_docker_unit(STARTED_BY_APT, [], allow_restart=False)
    assert plan.write_dropin and plan.daemon_reload
    assert plan.restart == f"its dockerd (pid 4242) runs without {VARIABLE}"
    assert not plan.start and not plan.enable and plan.warnings == []


def test_a_restart_that_would_lose_containers_waits_for_the_operator() -> None:
    lost = ["db", "cache", "a", "b", "c", "d"]
    plan = engine.plan_docker_unit(STARTED_BY_APT, lost, allow_restart=False)
    # The drop-in is written anyway: the next restart or boot applies it.
    assert plan.write_dropin and plan.daemon_reload
    assert plan.restart == "" and not plan.start and plan.acts
    [warning] = plan.warnings
    assert "would stop 6 running container(s) for good: db, cache, a, b, c and 1 more" in warning
    assert "--restart-engine" in warning and VARIABLE in warning


def test_restart_engine_restarts_even_then() -> None:
    plan = engine.plan_docker_unit(STARTED_BY_APT, ["db"], allow_restart=True)
    assert plan.restart and plan.warnings == []


def test_a_stopped_disabled_unit_is_enabled_and_started() -> None:
    state = dataclasses.replace(
        STARTED_BY_APT,
        active_state="inactive",
        unit_file_state="disabled",
        main_pid=0,
        daemon_has_env=None,
    )
    plan = engine.plan_docker_unit(state, [], allow_restart=False)
    assert plan == UnitPlan(write_dropin=True, daemon_reload=True, enable=True, start=True)


def test_a_failed_unit_is_started_again() -> None:
    state = dataclasses.replace(HEALTHY, active_state="failed", main_pid=0, daemon_has_env=None)
    assert engine.plan_docker_unit(state, [], allow_restart=False) == UnitPlan(start=True)


def test_a_daemon_started_outside_the_unit_is_handed_to_systemd() -> None:
    """An earlier setup (or a person) ran dockerd by hand: it would not survive a reboot."""
    state = dataclasses.replace(
        HEALTHY, active_state="inactive", main_pid=0, daemon_has_env=None, stray_pid=777
    )
    plan = engine.plan_docker_unit(state, [], allow_restart=False)
    assert plan.stop_stray == 777 and plan.start
    assert "outside docker.service" in plan.restart and "reboot" in plan.restart
    blocked = engine.plan_docker_unit(state, ["db"], allow_restart=False)
    assert blocked.stop_stray is None and not blocked.start and blocked.warnings


def test_an_unreadable_environment_restarts_only_after_a_change() -> None:
    unknown = dataclasses.replace(HEALTHY, daemon_has_env=None)
    assert engine.plan_docker_unit(unknown, [], allow_restart=False) == UnitPlan()
    changed = dataclasses.replace(unknown, dropin_current=False)
    plan = engine.plan_docker_unit(changed, [], allow_restart=False)
    assert plan.write_dropin and "cannot be read" in plan.restart


def test_a_changed_drop_in_comment_alone_restarts_nothing() -> None:
    """The running daemon already has the variable: rewriting the file is enough."""
    state = dataclasses.replace(HEALTHY, dropin_current=False)
    assert engine.plan_docker_unit(state, [], allow_restart=False) == UnitPlan(
        write_dropin=True, daemon_reload=True
    )


def test_unit_files_changed_on_disk_get_a_daemon_reload() -> None:
    state = dataclasses.replace(HEALTHY, need_reload=True)
    assert engine.plan_docker_unit(state, [], allow_restart=False) == UnitPlan(daemon_reload=True)


def test_runtime_enablement_is_made_persistent_and_static_left_alone() -> None:
    runtime = dataclasses.replace(HEALTHY, unit_file_state="enabled-runtime")
    assert engine.plan_docker_unit(runtime, [], allow_restart=False).enable
    static = dataclasses.replace(HEALTHY, unit_file_state="static")
    assert not engine.plan_docker_unit(static, [], allow_restart=False).enable


def test_swarm_tasks_and_restarting_containers_are_not_lost() -> None:
    running = [
        RunningContainer("cqkd_worker.3.abc", swarm_task=True, restart_policy=""),
        RunningContainer("registry", swarm_task=False, restart_policy="always"),
        RunningContainer("proxy", swarm_task=False, restart_policy="unless-stopped"),
        RunningContainer("db", swarm_task=False, restart_policy="no"),
        RunningContainer("batch", swarm_task=False, restart_policy="on-failure"),
        RunningContainer("adhoc", swarm_task=False, restart_policy=""),
    ]
    assert engine.lost_on_restart(running) == ["adhoc", "batch", "db"]


def test_systemctl_show_output_is_parsed() -> None:
    text = "ActiveState=active\nMainPID=123\nEnvironment=A=1 B=2\nUnitFileState=\n"
    assert engine.parse_properties(text) == {
        "ActiveState": "active",
        "MainPID": "123",
        "Environment": "A=1 B=2",
        "UnitFileState": "",
    }


def test_systemd_is_init_only_with_its_run_directory(tmp_path: Path) -> None:
    assert engine.systemd_is_init(tmp_path / "absent") is False
    if engine._which("systemctl"):
        assert engine.systemd_is_init(tmp_path) is True
