from cqkd_stack.live.inspection import listed_name
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


def test_a_container_being_removed_is_named_by_its_id() -> None:
    # As the engine lists a task container mid-removal during a plain
    # `docker stack rm`: no name. Taking Names[0] raised IndexError there.
    removing = {"Id": "5f0c2b", "Names": [], "State": "removing"}
    assert listed_name(removing) == "5f0c2b"
    assert listed_name({"Id": "77aa01", "Names": None}) == "77aa01"


def test_a_listed_container_is_named_without_the_leading_slash() -> None:
    assert listed_name({"Id": "5f0c2b", "Names": ["/st_worker.3.k2x"]}) == "st_worker.3.k2x"
