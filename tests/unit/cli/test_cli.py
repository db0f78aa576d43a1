from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CASES = REPO / "tests" / "cases"


def test_several_files_after_validate_are_all_checked(cli) -> None:
    case = CASES / "negative" / "two-files-collide"
    plain = CASES / "positive" / "plain-stack" / "stack.yml"
    files = [str(case / "a.yml"), str(case / "b.yml"), str(plain)]
    result = cli("validate", *files, "--format", "json")
    assert result.code == 0, result.out + result.err
    assert [f["file"] for f in json.loads(result.out)["files"]] == files


def test_option_values_are_not_files(cli) -> None:
    """``--policy p.yml`` is the policy, the next word a file; options may follow files."""
    stack = str(CASES / "positive" / "plain-stack" / "stack.yml")
    policy = str(REPO / "stacks" / "port-policy.yml")
    result = cli("validate", "--policy", policy, stack, "-f", "json")
    assert result.code == 0, result.out + result.err
    assert [f["file"] for f in json.loads(result.out)["files"]] == [stack]


def test_files_are_separate_stacks_unless_together(cli) -> None:
    case = CASES / "negative" / "two-files-collide"
    files = (str(case / "a.yml"), str(case / "b.yml"))
    alone = cli("validate", *files, "--format", "json")
    assert alone.code == 0, alone.out + alone.err
    assert [f["valid"] for f in json.loads(alone.out)["files"]] == [True, True]
    result = cli("validate", *files, "--together", "--format", "json")
    assert result.code == 1
    report = json.loads(result.out)
    assert [f["valid"] for f in report["files"]] == [True, False]
    assert len(report["files"][1]["problems"]) == 2


def test_standard_input_is_read_for_dash(cli) -> None:
    stack = (CASES / "positive" / "plain-stack" / "stack.yml").read_text()
    result = cli("validate", "-", stdin=stack)
    assert result.code == 0, result.out + result.err
    assert "ok: 1 file valid" in result.out
    bad = cli(
        "validate", "-", "--format", "github", stdin=stack.replace("replicas: 10", "replicas: 5000")
    )
    assert bad.code == 1
    assert "file=<stdin>" in bad.out


def test_short_flags_mean_the_same_in_every_task() -> None:
    from cqkd_stack.cli.tasks import SHORT_FLAGS, ns

    for name in ns.task_names:
        for argument in ns[name].get_arguments():
            shorts = [n for n in argument.names if len(n) == 1]
            for short in shorts:
                assert SHORT_FLAGS.get(argument.name) == short, (name, argument.names)


def test_every_reporting_task_takes_format() -> None:
    from cqkd_stack.cli.tasks import ns

    for name in (
        "setup", "validate", "deploy", "ports", "probe", "crawl", "dht-check", "scale", "teardown"
    ):
        assert "format" in [a.name for a in ns[name].get_arguments()], name


def test_crawl_refuses_a_bad_format_or_count_before_asking_the_engine(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    for args, said in (
        (("--format", "xml"), "--format must be one of text, json, prometheus"),
        (("--lookups", "-1"), "--lookups and --keys must be 0 or more"),
    ):
        result = cli("crawl", *args)
        assert result.code == 2, result.out + result.err
        assert said in result.err


def test_invoke_yaml_in_the_current_directory_is_honoured(cli, tmp_path: Path) -> None:
    policy = tmp_path / "tight.yml"
    policy.write_text(
        "version: 1\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7009}\n"
    )
    (tmp_path / "invoke.yaml").write_text(f"cqkd:\n  policy: {policy}\n")
    stack = CASES / "positive" / "plain-stack" / "stack.yml"
    result = cli("validate", str(stack), cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert "worker range end 7009" in result.out


def test_usage_errors_exit_2(cli, tmp_path: Path) -> None:
    assert cli("validate").code == 2
    missing = cli("validate", str(tmp_path / "absent.yml"))
    assert missing.code == 2
    assert "absent.yml: no such file" in missing.err
    stack = CASES / "positive" / "plain-stack" / "stack.yml"
    assert cli("validate", str(stack), "--format", "yaml").code == 2
    assert cli("validate", str(stack), "--policy", str(tmp_path / "none.yml")).code == 2


def test_version_is_reported(cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert "cqkd-stack" in result.out


def test_slot_lists_are_compacted_into_ranges() -> None:
    from cqkd_stack.core.results import compact

    assert compact([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert compact([5]) == "5"
    assert compact([]) == ""


def test_help_after_validate_is_help_not_a_file(cli) -> None:
    """Seen: `cqkd-stack validate --help` exited 2 with "--help: no such file"."""
    for flag in ("--help", "-h"):
        result = cli("validate", flag)
        assert result.code == 0, result.err
        assert "validate [OPTIONS] FILE..." in result.out and "--format" in result.out
        assert "no such file" not in result.err


def test_a_flag_value_of_the_wrong_type_is_a_usage_error(cli) -> None:
    """Seen: `render --replicas abc` printed a Python traceback."""
    result = cli("render", "--replicas", "abc")
    assert result.code == 2
    assert "--replicas needs a whole number, got 'abc'" in result.err


def test_render_output_is_written_whole_or_not_at_all(cli, tmp_path: Path) -> None:
    target = tmp_path / "stack.yml"
    assert cli("render", "--replicas", "5", "--output", str(target)).code == 0
    assert "replicas: 5" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["stack.yml"], "no temporary file left"
    missing = tmp_path / "no-such-dir" / "stack.yml"
    result = cli("render", "--output", str(missing))
    assert result.code == 2
    assert f"{missing}: cannot write: No such file or directory" in result.err
    assert "bug" not in result.err


def test_an_output_that_cannot_be_written_keeps_the_old_file(cli, tmp_path: Path) -> None:
    """A directory where the file should go: the rename fails, nothing half-written stays."""
    target = tmp_path / "stack.yml"
    target.mkdir()
    (target / "keep").write_text("x")
    result = cli("render", "--output", str(target))
    assert result.code == 2 and "cannot write" in result.err
    assert (target / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.yml"]


def test_an_empty_image_is_refused(cli) -> None:
    result = cli("render", "--image", "")
    assert result.code == 2
    assert "--image must name an image" in result.err


def test_the_repositorys_own_stacks_folder_lints_clean(cli) -> None:
    """The template is skipped, the policy checked as one: one file was checked."""
    stacks = REPO / "stacks"
    result = cli("validate", str(stacks / "cqkd.stack.tmpl.yml"), str(stacks / "port-policy.yml"))
    assert result.code == 0, result.out + result.err
    assert "skipped: " in result.out and "cqkd.stack.tmpl.yml" in result.out
    assert result.out.strip().endswith("ok: 1 file valid (1 skipped)")


def test_a_broken_policy_among_the_files_is_reported_as_a_policy(cli, tmp_path: Path) -> None:
    bad = tmp_path / "policy.yml"
    bad.write_text("version: 1\nroles:\n  worker: {start: 7000, end: 6000}\n")
    result = cli("validate", str(bad), "--format", "json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["files"][0]["kind"] == "policy"
    assert report["files"][0]["problems"]


def test_an_unset_variable_is_a_warning_not_a_failure(cli, monkeypatch) -> None:
    monkeypatch.delenv("CQKD_TEST_UNSET", raising=False)
    stack = (CASES / "positive" / "plain-stack" / "stack.yml").read_text()
    text = stack.replace(
        "image: cqkd-dht-node:latest", "image: cqkd-dht-node:${CQKD_TEST_UNSET}latest"
    )
    result = cli("validate", "-", stdin=text)
    assert result.code == 0, result.out + result.err
    assert "warning: <stdin>:" in result.out and "CQKD_TEST_UNSET" in result.out
    github = cli("validate", "-", "--format", "github", stdin=text)
    assert "::warning file=<stdin>,line=" in github.out


def test_a_file_name_with_spaces_and_commas_is_one_file(cli, tmp_path: Path) -> None:
    odd = tmp_path / "my stack, v2.yml"
    odd.write_text((CASES / "positive" / "plain-stack" / "stack.yml").read_text())
    result = cli("validate", str(odd))
    assert result.code == 0, result.out + result.err
    assert result.out.strip() == "ok: 1 file valid"


def test_collision_reports_grow_linearly_with_the_services(cli) -> None:
    """300 services on one host port: one problem each, not one per pair (44,850)."""
    services = "".join(f"  web{i}:\n    image: nginx\n    ports: ['8080:80']\n" for i in range(300))
    result = cli("validate", "-", "--format", "json", stdin=f"services:\n{services}")
    assert result.code == 1
    problems = json.loads(result.out)["files"][0]["problems"]
    collisions = [p for p in problems if "overlaps service" in p["message"]]
    assert len(collisions) == 299
    assert len(problems) - len(collisions) == 1  # and 300 tasks do not fit Docker's /24


def test_render_writes_each_target_and_validate_reads_each_back(cli, tmp_path: Path) -> None:
    written = {}
    for target, name in (("swarm", "s.yml"), ("compose", "c.yml"), ("kubernetes", "k.yaml")):
        out = tmp_path / name
        done = cli("render", "--target", target, "-r", "30", "-o", str(out))
        assert done.code == 0, done.err
        written[target] = out
    result = cli("validate", *(str(p) for p in written.values()), "-f", "json")
    assert result.code == 0, result.out
    kinds = [f["kind"] for f in json.loads(result.out)["files"]]
    assert kinds == ["stack", "compose", "kubernetes"]
    # The compose file names its 30 workers; the manifests, a StatefulSet of 30.
    assert "worker-30:" in written["compose"].read_text()
    assert "replicas: 30" in written["kubernetes"].read_text()


def test_a_file_read_as_another_target_is_checked_as_that_target(cli, tmp_path: Path) -> None:
    compose = tmp_path / "c.yml"
    assert cli("render", "--target", "compose", "-r", "2", "-o", str(compose)).code == 0
    as_stack = cli("validate", str(compose), "--target", "swarm")
    assert as_stack.code == 1
    assert "mem_limit" in as_stack.out + as_stack.err


def test_target_options_are_refused_where_they_mean_nothing(cli) -> None:
    for args, message in (
        (("render", "--target", "helm"), "--target must be one of swarm, compose, kubernetes"),
        (("render", "--target", "compose", "--network", "host"), "--network host is a Swarm"),
        (("render", "--target", "kubernetes", "--port-offset", "5"), "--port-offset"),
        (("render", "--ordinals-start", "1"), "apply to --target kubernetes"),
        (("deploy", "--target", "kubernetes"), "--target must be one of swarm, compose"),
        (("dht-check", "--target", "compose", "--all"), "--all probes a Swarm stack"),
    ):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        assert message in done.err, (args, done.err)


def test_a_run_that_checked_nothing_fails_in_every_format(cli, tmp_path: Path) -> None:
    """Only templates: nothing was judged, so no format may call the run valid."""
    template = tmp_path / "some.tmpl.yml"
    template.write_text((REPO / "stacks" / "cqkd.stack.tmpl.yml").read_text())
    text = cli("validate", str(template))
    assert text.code == 1
    assert "no stack, port policy or manifest was checked" in text.out
    assert "ok:" not in text.out
    github = cli("validate", str(template), "--format", "github")
    assert github.code == 1
    assert "::error::no stack, port policy or manifest was checked" in github.out
    data = cli("validate", str(template), "--format", "json")
    assert data.code == 1
    report = json.loads(data.out)
    assert report["valid"] is False and report["checked"] == 0
    assert "no stack, port policy or manifest" in report["error"]


def test_the_readme_s_ci_example_lints_the_files_users_deploy(cli, tmp_path: Path) -> None:
    """`validate cqkd.yml docker-compose.yml cqkd.k8s.yaml`: each is judged as what it is."""
    for args, name in (
        ([], "cqkd.yml"),
        (["--target", "compose"], "docker-compose.yml"),
        (["--target", "kubernetes"], "cqkd.k8s.yaml"),
    ):
        out = tmp_path / name
        assert cli("render", "--replicas", "5", *args, "--output", str(out)).code == 0
    names = [str(tmp_path / n) for n in ("cqkd.yml", "docker-compose.yml", "cqkd.k8s.yaml")]
    result = cli("validate", *names, "--format", "json")
    assert result.code == 0, result.out + result.err
    kinds = {Path(f["file"]).name: f["kind"] for f in json.loads(result.out)["files"]}
    assert kinds == {
        "cqkd.yml": "stack",
        "docker-compose.yml": "compose",
        "cqkd.k8s.yaml": "kubernetes",
    }
    readme = " ".join((REPO / "README.md").read_text().split())
    example = "validate cqkd.yml docker-compose.yml cqkd.k8s.yaml --format github"
    assert f"`cqkd-stack {example}`" in readme
