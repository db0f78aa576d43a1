from cqkd_stack.live.teardown import _network_still_in_use


def test_network_in_use_is_the_one_expected_stack_rm_failure() -> None:
    stderr = (
        "Failed to remove network sg90: Error response from daemon: rpc error: code = "
        "FailedPrecondition desc = network sg90 is in use by task 0gzj\n"
        "failed to remove some resources from stack: prof\n"
    )
    assert _network_still_in_use(stderr)


def test_other_stack_rm_failures_are_not_excused() -> None:
    assert not _network_still_in_use(
        "Error response from daemon: This node is not a swarm manager."
    )
    assert not _network_still_in_use("network x is in use by task y\nError: permission denied")
    assert not _network_still_in_use("")
