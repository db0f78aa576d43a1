"""benchmarks/scale.py's own logic: which figures stand for a stage, and what the table says.

The benchmark deploys real stacks (its runs are its test); what is pure here
is the choice of figures when a baseline never fully joins, the lonely
workers that make a small run take that path, the table that says which
figures were taken when, and that a teardown cannot be cut short by Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale", REPO / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale"] = module
    spec.loader.exec_module(module)
    return module


scale = _load()


def _taken(at: float, running: int, mib: float, joined: int, total: int = 21) -> dict:
    return {
        "at_seconds": at,
        "tasks": total,
        "running": running,
        "memory": {"mib_per_task": mib, "tasks_divided_by": running},
        "probe_wall_seconds": 1.5,
        "probe_seconds": 0.9,
        "probe_answered_min": running,
        "probe_joined_min": joined,
        "probe_total": total,
        "ports_seconds": 0.4,
        "seconds_taken": 30.0,
    }


def test_a_stage_that_joined_is_represented_by_its_all_joined_figures() -> None:
    figures = {
        "all_running": _taken(10, 21, 14.0, 5),
        "all_joined": _taken(50, 21, 15.0, 21),
    }
    assert scale.headline(figures) == ("all_joined", figures["all_joined"])


def test_a_baseline_that_never_joined_is_represented_at_its_timeout() -> None:
    stage = {
        "figures": {
            "all_running": _taken(10, 21, 14.0, 17),
            "timeout": _taken(61, 21, 14.5, 18),
        }
    }
    scale.settle(stage)
    assert stage["figures_at"] == "timeout"
    assert stage["memory"]["mib_per_task"] == 14.5
    assert stage["probe_joined_min"] == 18
    assert stage["ports_seconds"] == 0.4


def test_a_stage_that_measured_nothing_claims_no_figures() -> None:
    stage: dict = {"error": "RuntimeError: docker stack deploy failed"}
    scale.settle(stage)
    assert stage["figures_at"] is None
    assert "memory" not in stage


def test_a_slot_counts_once_and_only_while_its_task_runs() -> None:
    tasks = [
        {"ServiceID": "w", "Slot": 1, "Status": {"State": "running"}},
        # A replacement running beside the task it replaces holds the same slot.
        {"ServiceID": "w", "Slot": 1, "Status": {"State": "running"}},
        {"ServiceID": "w", "Slot": 2, "Status": {"State": "starting"}},
        {"ServiceID": "b", "Slot": 1, "Status": {"State": "running"}},
    ]
    assert scale.running_slots(tasks) == 2


def test_lonely_workers_replace_workers_and_resolve_their_bootstrap_to_nowhere() -> None:
    doc = yaml.safe_load(scale.bare_stack_text(20, 3, "10.232.0.0/20", True))
    services = doc["services"]
    assert services["worker"]["deploy"]["replicas"] == 17
    lonely = services["lonely"]
    assert lonely["deploy"]["replicas"] == 3
    assert lonely["extra_hosts"] == [f"bootstrap:{scale.NOWHERE}"]
    assert lonely["environment"]["CQKD_ROLE"] == "worker"
    # Their own port range: the port map finds no duplicate ports.
    assert lonely["environment"]["BASE_PORT"] != services["worker"]["environment"]["BASE_PORT"]
    assert "extra_hosts" not in services["worker"]


def test_without_lonely_workers_the_stack_is_the_naive_file_as_written() -> None:
    text = scale.bare_stack_text(20, 0, "10.232.0.0/20", False)
    assert "lonely" not in yaml.safe_load(text)["services"]
    assert "replicas: 20" in text


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker client")
def test_docker_s_own_loader_accepts_the_stack_with_lonely_workers(tmp_path: Path) -> None:
    path = tmp_path / "bare.yml"
    path.write_text(scale.bare_stack_text(20, 3, "10.232.0.0/20", True))
    done = subprocess.run(
        ["docker", "stack", "config", "-c", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "192.0.2.1" in done.stdout


def _results() -> dict:
    bare = {
        "tasks": 21,
        "running_seconds": 9.0,
        "not_joined": "stack 'x': 21/21 tasks running, 18 in the DHT after 60 s; not ready:",
        "figures": {
            "all_running": _taken(9.0, 21, 14.0, 17),
            "timeout": _taken(61.0, 21, 14.5, 18),
        },
        "teardown_seconds": 12.0,
    }
    scale.settle(bare)
    return {"stages": {"bare": bare}, "targets": scale.judge({"stages": {"bare": bare}})}


def test_the_table_says_when_each_figure_was_taken() -> None:
    text = scale.table(_results())
    lines = text.splitlines()
    taken_at = next(line for line in lines if line.startswith("figures taken at"))
    assert "timeout" in taken_at
    memory = next(line for line in lines if line.startswith("host memory per task"))
    assert "14.5" in memory and "14.0" not in memory  # the timeout's, not all-running's
    moments = [line.split() for line in lines if line.strip().startswith("bare ")]
    assert [row[1:3] for row in moments] == [["all", "running"], ["timeout", "61.0"]]
    assert "17/21" in moments[0] and "18/21" in moments[1]  # joined, worst of 5
    assert "bare: not all joined at the timeout" in text


def test_a_failed_teardown_and_a_failed_figure_are_named() -> None:
    results = _results()
    bare = results["stages"]["bare"]
    bare["figures"]["timeout"]["errors"] = {"ports": "RuntimeError: exited 2"}
    bare["teardown_error"] = "TimeoutError: 1 networks still there"
    text = scale.table(results)
    assert "bare: ports at timeout failed: RuntimeError: exited 2" in text
    assert "bare: teardown failed: TimeoutError: 1 networks still there" in text


def test_a_teardown_finishes_before_an_interrupt_stops_the_run() -> None:
    # Whatever this process had before (a run started in the background
    # inherits SIGINT ignored), the block puts it back.
    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt), scale.interrupts_held("removing a stack"):
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("teardown")
    assert finished == ["teardown"]
    assert signal.getsignal(signal.SIGINT) is before


def test_the_final_cleanup_swallows_the_interrupt() -> None:
    with scale.interrupts_held("cleaning up", reraise=False):
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_all_joined_is_when_it_was_first_seen_not_when_the_wait_got_to_look() -> None:
    # The all-running figures' probe found every task joined at 7.5 s; the
    # wait for the join, which only starts after those figures, saw it at 15.
    assert scale.joined_seconds(15.0, {"all_joined_by_seconds": 7.5}) == (7.5, True)
    assert scale.joined_seconds(40.0, {}) == (40.0, False)
    assert scale.joined_seconds(40.0, {"all_joined_by_seconds": None}) == (40.0, False)


def test_a_failed_deploy_is_told_in_the_cli_s_own_words_and_in_one_line() -> None:
    error = (
        "RuntimeError: cqkd-stack deploy --replicas 20 --stack s --timeout 3 exited 1:\n"
        "[13:39:21] deploying stack 's'\n"
        "starting: 13/23 running, 13/23 joined  13/23 0:00:04\n"
        "cqkd-stack: error: stack 's': 13/23 tasks running, 13 in the DHT after 3 s; not ready:\n"
        "  s_bob.1: starting (starting)\n"
    )
    shown = scale.brief(error)
    assert shown.startswith("RuntimeError: cqkd-stack deploy")
    assert "cqkd-stack: error: stack 's': 13/23 tasks running" in shown
    assert "\n" not in shown and "s_bob.1" not in shown
    assert len(scale.brief("x" * 1000)) == 300


def test_a_short_deploy_timeout_does_not_shorten_the_teardown() -> None:
    assert scale.teardown_budget(3) == scale.TEARDOWN_MIN_SECONDS
    assert scale.teardown_budget(1800) == 1800


def test_memory_that_fell_during_a_stage_is_not_passed_off_as_the_stack_s() -> None:
    results = _results()
    results["stages"]["bare"]["figures"]["timeout"]["memory"]["used_growth_bytes"] = -(2**30)
    text = scale.table(results)
    assert "bare: host memory at timeout was 1024 MiB below its reading before" in text
    assert "host memory at all running" not in text


def test_cpu_at_rest_is_grouped_by_what_runs_each_process(tmp_path: Path) -> None:
    """A descendant of a containerd shim is a container's process; kernel threads apart."""
    shim = tmp_path / "containerd-shim-runc-v2"  # the kernel keeps 15 bytes of the name
    shutil.copy(sys.executable, shim)
    # Under the shim: a sleep, then a Python that says when both are up.
    code = (
        "import subprocess; subprocess.Popen(['sleep', '60']); "
        "subprocess.run(['python3', '-c', 'import time; time.sleep(0.2); print(\"up\", "
        "flush=True); time.sleep(60)'])"
    )
    proc = subprocess.Popen(
        [str(shim), "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        _, procs = scale.cpu_snapshot()
        assert procs[proc.pid][0] == "containerd+shims"
        groups = [g for g, _ in procs.values()]
        assert "containers: other" in groups and "containers: python" in groups
        assert procs[os.getpid()][0] == "other"
        assert procs[2][0] == "kernel threads" or 2 not in procs
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_cpu_of_a_process_that_came_and_went_counts_with_whoever_reaped_it(
    tmp_path: Path,
) -> None:
    """runc and each exec live for a moment: between two readings they would be lost."""
    shim = tmp_path / "containerd-shim-runc-v2"
    shutil.copy(sys.executable, shim)
    burn = "import time; end = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    code = (
        "import subprocess, sys; print('up', flush=True); sys.stdin.readline(); "
        f"subprocess.run([sys.executable, '-c', {burn!r}]); print('done', flush=True); "
        "sys.stdin.readline()"
    )
    proc = subprocess.Popen(
        [str(shim), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "up\n"
        before = scale.cpu_snapshot()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"  # the child ran, ended and was reaped
        busy, groups = scale.cpu_used(before, scale.cpu_snapshot())
        assert groups["containerd+shims"] >= 0.25, groups
        assert busy >= groups["containerd+shims"] - 0.05
    finally:
        proc.kill()
        proc.wait()


# --- timeline, growth table, options -----------------------------------------------------


def test_the_timeline_keeps_one_sample_per_interval_and_every_milestone() -> None:
    timeline = scale.Timeline(start=100.0, every=2.0)
    timeline.add(100.0, 0, 0)
    for tenth in range(1, 31):  # a wait polling every 0.1 s for 3 s
        timeline.add(100.0 + tenth / 10, tenth, None)
    kept = [s["seconds"] for s in timeline.samples]
    assert kept == [0.0, 2.0]
    # all running at 3.1 s: kept although 2 s have not passed since the last sample.
    timeline.add(103.1, 31, keep=True)
    assert timeline.samples[-1] == {"seconds": 3.1, "running": 31, "joined": None}
    timeline.add(103.5, 31, 7)
    doc = timeline.as_dict()  # the pending last report is not lost
    assert doc["every_seconds"] == 2.0
    assert doc["samples"][-1] == {"seconds": 3.5, "running": 31, "joined": 7}
    assert len(doc["samples"]) == 4


def test_a_flush_keeps_the_pending_sample_once() -> None:
    timeline = scale.Timeline(start=0.0, every=5.0)
    timeline.add(0.0, 0, 0)
    timeline.add(1.0, 3, 1)
    timeline.flush()
    timeline.flush()
    assert [s["seconds"] for s in timeline.samples] == [0.0, 1.0]


def test_the_counts_are_read_from_the_waits_own_progress_words() -> None:
    # wait_until_ready's note, as the CLI's bar draws it in a terminal.
    drawn = "\x1b[2K\x1b[1mstarting: 120/303 running, 17/303 joined\x1b[0m \x1b[32m 17/303\x1b[0m"
    assert scale.progress_counts(drawn) == (120, 17)
    assert scale.progress_counts("12/303 tasks running") == (12, None)  # wait_until_running
    assert scale.progress_counts("[16:02:11] deploying stack 's'") is None
    # Two reports in one read: the last one is the news.
    assert scale.progress_counts("1/5 running, 0/5 joined 5/5 running, 5/5 joined") == (5, 5)


def test_a_wait_s_progress_feeds_the_timeline_and_still_reports() -> None:
    timeline = scale.Timeline(start=0.0, every=0.0)
    told = []
    report = scale.timeline_progress(timeline, lambda d, t, n: told.append(n))
    report(4, 21, "21/21 running, 4/21 joined")
    report(0, 0, "no counts here")
    assert told == ["21/21 running, 4/21 joined", "no counts here"]
    assert [(s["running"], s["joined"]) for s in timeline.samples] == [(21, 4)]


def _run(workers: int, floor_s: float, bare_s: float, project_s: float) -> dict:
    """A saved run of one size: every stage all running (and the DHTs joined) at these times."""
    tasks = {"floor": workers, "bare": workers + 1, "project": workers + 3}
    stages = {
        "floor": {"tasks": tasks["floor"], "running_seconds": floor_s, "teardown_seconds": 10.0},
        "bare": {"tasks": tasks["bare"], "running_seconds": bare_s, "joined_seconds": bare_s + 5},
        "project": {
            "tasks": tasks["project"],
            "running_seconds": project_s - 5,
            "deploy_wall_seconds": project_s,
            "ports_seconds": 0.4,
            "teardown_seconds": 20.0,
            "memory": {"mib_per_task": 9.0},
        },
    }
    for name, stage in stages.items():
        stage["timeline"] = {
            "every_seconds": 2.0,
            "samples": [
                {"seconds": 0.0, "running": 0, "joined": None if name == "floor" else 0},
                {"seconds": 4.0, "running": workers, "joined": None if name == "floor" else 2},
            ],
        }
    return {"date": "2026-12-02T16:00:00+00:00", "workers": workers, "stages": stages}


def test_the_growth_table_has_each_figure_at_each_size_with_its_ratios() -> None:
    rows = scale.growth_rows([_run(300, 60.0, 50.0, 90.0), _run(100, 20.0, 25.0, 30.0)])
    joined = [r for r in rows if r[0].startswith("start to all joined")]
    # Smallest size first; the floor's column is its all running.
    assert [r[1] for r in joined] == ["100", "300"]
    assert joined[0][2:] == ("20.0", "30.0", "30.0", "1.50x", "1.00x")
    assert joined[1][5:] == ("1.50x", "1.64x")  # the bare one joined at 55 s
    # Per task: milliseconds a task, each stage divided by its own tasks.
    per_task = rows[rows.index(joined[1]) + 1]
    assert per_task[0] == "  per task, ms" and per_task[1] == "100"
    assert per_task[2:5] == ("200.0", "297.0", "291.3")
    # A figure only the project has: no ratio against stages that lack it.
    ports = next(r for r in rows if r[0] == "ports, wall s")
    assert ports[2:] == ("-", "-", "0.400", "-", "-")
    # Memory is already per task: no per-task row under it.
    memory = [i for i, r in enumerate(rows) if r[0].startswith("host memory")]
    assert rows[memory[-1] + 1][0] != "  per task, ms"
    # A figure no stage has at any size is left out.
    assert not any(r[0].startswith("dht-check") for r in rows)


def test_saved_runs_of_one_size_and_of_several_make_one_growth_table(tmp_path: Path) -> None:
    one = tmp_path / "scale-1000.json"
    one.write_text(scale.json.dumps(_run(1000, 290.0, 480.0, 400.0)))
    several = tmp_path / "scale-100-300.json"
    several.write_text(
        scale.json.dumps({"date": "x", "sizes": [_run(100, 20, 25, 30), _run(300, 60, 50, 90)]})
    )
    runs = scale.load_runs([one, several])
    assert sorted(r["workers"] for r in runs) == [100, 300, 1000]
    joined = [r for r in scale.growth_rows(runs) if r[0].startswith("start to all joined")]
    assert [r[1] for r in joined] == ["100", "300", "1000"]
    assert joined[-1][5] == "1.38x"  # 400 / 290 at 1000 workers
    assert "1.38x" in scale.growth_table(runs)
    # --from-json prints the same without an engine.
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--from-json", str(one),
         str(several)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "=== growth: each figure at each size ===" in done.stdout
    assert "=== 300 workers ===" in done.stdout


def test_the_picture_s_series_are_the_samples_that_have_the_count() -> None:
    floor = _run(100, 20, 25, 30)["stages"]["floor"]
    assert scale.timeline_series(floor, "running") == ([0.0, 4.0], [0, 100])
    assert scale.timeline_series(floor, "joined") == ([], [])  # sleep tasks join nothing
    assert scale.timeline_series({}, "running") == ([], [])


def test_the_picture_draws_no_line_where_a_count_was_not_read() -> None:
    # The bare stack's joined count: 0 at the deploy, then only from its all-running figures.
    bare = {"timeline": {"samples": [
        {"seconds": 0.0, "running": 0, "joined": 0},
        {"seconds": 2.0, "running": 40, "joined": None},
        {"seconds": 99.0, "running": 301, "joined": 290},
        {"seconds": 101.0, "running": 301, "joined": 301},
    ]}}  # fmt: skip
    seconds, joined = scale.timeline_series(bare, "joined")
    assert seconds == [0.0, 49.5, 99.0, 101.0]
    assert joined[0] == 0 and joined[1] != joined[1] and joined[2:] == [290, 301]  # NaN
    assert scale.timeline_series(bare, "running")[0] == [0.0, 2.0, 50.5, 99.0, 101.0]


def test_workers_take_several_sizes_once_each_smallest_first() -> None:
    assert scale.parse_args(["--workers", "1000,100,300,100"]).workers == [100, 300, 1000]
    assert scale.parse_args([]).workers == [1000]
    for wrong in ("0,100", "a,b", ","):
        with pytest.raises(SystemExit):
            scale.parse_args(["--workers", wrong])
    # Lonely workers must fit in the smallest size.
    with pytest.raises(SystemExit):
        scale.parse_args(["--workers", "5,100", "--bare-lonely", "6"])
    assert scale.parse_args(["--workers", "5,100", "--bare-lonely", "5"]).bare_lonely == 5
