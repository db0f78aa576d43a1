"""dht-check --kill-holders' one line of text: holders, kills and when the value came back."""

from __future__ import annotations

from cqkd_stack.cli.console import survival_text
from cqkd_stack.live.holders import SurvivalCheck


def _check(**changes: object) -> SurvivalCheck:
    check = SurvivalCheck(
        key="k1",
        value="v",
        stored_by="alice",
        read_by="bob",
        stored_on="vm",
        tasks=27,
        holders=["bob.1", "worker.1"],
        killed=["bob.1", "worker.1"],
        publisher_holds=False,
        republish_interval=5,
        timeout=60,
    )
    for name, value in changes.items():
        setattr(check, name, value)
    return check


def test_the_report_says_what_was_killed_and_when_the_value_came_back() -> None:
    text = survival_text(_check(ok=True, seconds_to_read=19.84, reads=5))
    assert text.startswith("ok: alice stored k1 (node vm); 2 of 27 DHT tasks held it;")
    assert "killed bob.1, worker.1;" in text
    assert "other tasks holding it after the kill: none" in text
    assert "bob read it again 19.8 s after the kill (5 reads; republish interval 5 s)" in text


def test_a_failed_check_says_why_and_a_surviving_copy_is_named() -> None:
    text = survival_text(
        _check(reads=37, last_error="not found", publisher_holds=True, survivors_holding=["w.2"])
    )
    assert text.startswith("FAIL: ")
    assert "(alice too: her copy outlives the kill)" in text
    assert "after the kill: w.2" in text
    assert "did not read it again within 60 s (37 reads, last: not found;" in text
