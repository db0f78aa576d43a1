"""One reader of a service's role, with the two readings its callers had."""

from __future__ import annotations

from cqkd_stack.core.contract import ROLE_LABEL, role_of, service_role


def test_a_stack_file_service_reads_like_a_live_one_environment_first() -> None:
    service = {"environment": ["CQKD_ROLE=special"], "deploy": {"labels": [f"{ROLE_LABEL}=worker"]}}
    assert service_role(service) == "special" == role_of({"CQKD_ROLE": "special"}, {})
    assert service_role({"deploy": {"labels": {ROLE_LABEL: "worker"}}}) == "worker"
    assert service_role({"deploy": None, "environment": {"CQKD_ROLE": ""}}) is None


def test_a_template_declares_its_role_with_the_label_alone_as_written() -> None:
    labelled = {
        "environment": {"CQKD_ROLE": "special"},
        "deploy": {"labels": {ROLE_LABEL: "worker"}},
    }
    assert service_role(labelled, template=True) == "worker"
    assert service_role({"environment": {"CQKD_ROLE": "worker"}}, template=True) is None
    # An empty label names a role the policy lacks (render refuses it); it is not "no role".
    assert service_role({"deploy": {"labels": {ROLE_LABEL: ""}}}, template=True) == ""
    assert service_role({"deploy": {"labels": {ROLE_LABEL: ""}}}) is None
